// Package loadtest holds reach's end-to-end load tests (its tests only),
// each against a real server on loopback. It lives apart from rendezvous
// and relay because it needs both, and the root package, at once.
//
//   - TestLoadHostileSource (issue 15): one server process-in-test
//     (rendezvous, STUN and relay, as `reach server` wires them, with the
//     default limits), one hostile source flooding it, and honest reach
//     nodes that must all be served. See docs/security.md, "Load test".
//   - TestSoak (issue 14): `reach server` in a child process and
//     1,000 peers in 500 relayed pairs moving data continuously for
//     10 minutes, every byte checked, the server's RSS and goroutines
//     sampled; TestSoakSmoke is a 30-second run of it with 20 pairs. See
//     docs/benchmarks.md, "Relay soak".
package loadtest
