// Package e2e is reach's end-to-end tests and benchmarks in the NAT lab:
// real nodes and servers (lab/reachlab) on hosts behind real Linux NATs
// (lab/natlab), dialling each other through every rung of the ladder:
// direct, port mapping (miniupnpd), hole punching, supernodes, TURN
// (coturn), the relay over UDP, TLS and WebSocket, through squid. Each test
// checks what a user would: the bytes arrive intact, the expected strategy
// wins (TestLabPairs asks the matrix's oracle, matrix.Best), failures are
// named errors. The package has no code of its own; its tests need root
// (see package lab):
//
//	sudo go test -count=1 -timeout 30m ./lab/e2e
//	sudo go test -run '^$' -bench BenchmarkLab -benchtime 3x ./lab/e2e
package e2e
