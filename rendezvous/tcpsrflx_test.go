package rendezvous

import (
	"net/netip"
	"testing"

	"github.com/reachp2p/reach/internal/candidate"
)

// TestTCPReflexive: the server drops any tcp-srflx candidate a peer sends
// (only the server says what it saw) and adds the address it saw a
// TCP-registered peer's connection come from; for a peer on UDP (no TCP
// address seen) it adds none.
func TestTCPReflexive(t *testing.T) {
	forged := Candidate{Addr: netip.MustParseAddrPort("192.0.2.66:4000"), Kind: TCPReflexive}
	host := Candidate{Addr: netip.MustParseAddrPort("10.0.0.2:4000"), Kind: candidate.TCPHost}
	seen := netip.MustParseAddrPort("[::ffff:198.51.100.7]:51000")
	got := withTCPReflexive([]Candidate{host, forged}, seen)
	want := []Candidate{host, {Addr: netip.MustParseAddrPort("198.51.100.7:51000"), Kind: TCPReflexive}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("over TCP: %v, want %v", got, want)
	}
	if got := withTCPReflexive([]Candidate{host, forged}, netip.AddrPort{}); len(got) != 1 || got[0] != host {
		t.Errorf("over UDP: %v, want only %v", got, host)
	}
}
