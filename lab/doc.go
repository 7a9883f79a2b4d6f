// Package lab is the root of reach's test infrastructure. Nothing under
// lab/ is part of the SDK's API: programs that use reach never import it,
// and it may change with any commit. It sits above the SDK: its packages
// import reach and its internals, and no SDK package imports them (only
// tests and the `reach lab` command do).
//
//   - lab/natlab builds a virtual internet out of Linux network namespaces,
//     veth links, bridges and nftables: public hosts, routers with every NAT
//     behaviour, double NAT, UDP-blocking and proxy-only networks, link
//     impairment, and private miniupnpd, coturn and squid instances.
//   - lab/reachlab puts reach servers and nodes on lab hosts and holds the
//     scenario and echo helpers the end-to-end tests share.
//   - lab/matrix measures the connectivity matrix (every pair of network
//     kinds, both directions) and holds its oracle, Best: the best strategy
//     physically possible for a pair.
//   - lab/e2e is the end-to-end tests and benchmarks of the SDK in the lab.
//
// The lab needs root (namespaces, nftables, AF_PACKET) and the Debian
// packages iproute2, nftables, conntrack, miniupnpd, miniupnpc, coturn and
// squid. Without them every lab test skips with a one-line reason; with
// REACH_LAB_REQUIRED=1 (CI) it fails instead. To run it:
//
//	sudo go test -count=1 -timeout 30m ./lab/...
//	sudo go test -count=1 -run TestLabPairs -v ./lab/e2e
//	sudo go run ./cmd/reach lab up symmetric full-cone   # by hand
//
// docs/lab.md describes the lab, docs/matrix.md the matrix.
package lab
