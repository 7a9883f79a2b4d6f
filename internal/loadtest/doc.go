// Package loadtest holds the end-to-end load test of issue 15 (its tests
// only): one server process-in-test (rendezvous, STUN and relay, as
// `reach server` wires them, with the default limits) on loopback, one
// hostile source flooding it, and honest reach nodes that must all be
// served. It lives apart from rendezvous and relay because it needs
// both, and the root package, at once. See docs/security.md, "Load
// test".
package loadtest
