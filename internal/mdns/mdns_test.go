package mdns

import (
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/reachp2p/reach/identity"
)

// These tests build and parse messages only: nothing is multicast here
// (the lab test TestCLILabLAN, in cmd/reach, runs it between namespaces).

func peerID(t *testing.T) identity.PeerID {
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.ID()
}

// TestAnswerRoundTrip: a responder answers a query for its own name (and
// no other) with its port and addresses, which Resolve's parser reads
// back; a query for another peer gets nothing.
func TestAnswerRoundTrip(t *testing.T) {
	me, other := peerID(t), peerID(t)
	addrs := []netip.Addr{netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("fd00::7"), netip.MustParseAddr("fe80::1")}
	r := &Responder{peer: me, port: 4900, addrs: func() []netip.Addr { return addrs }}
	q, err := query(strings.ToUpper(Name(me)))
	if err != nil {
		t.Fatal(err)
	}
	if _, asked, ok := questionFor(q, strings.ToLower(Name(me))); !ok || !asked {
		t.Fatalf("our query is not a question for our name: %v %v", asked, ok)
	}
	if _, asked, _ := questionFor(q, strings.ToLower(Name(other))); asked {
		t.Fatal("a question for us counts as one for another peer")
	}
	ans, err := r.answer(0x5245)
	if err != nil {
		t.Fatal(err)
	}
	got := parseAnswer(ans, Name(me), hostName(me))
	want := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.7:4900"), netip.MustParseAddrPort("[fd00::7]:4900")}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("parsed %v, want %v (no link-local address)", got, want)
	}
	if got := parseAnswer(ans, Name(other), hostName(other)); got != nil {
		t.Errorf("an answer for another peer gives %v", got)
	}
	if got := parseAnswer(q, Name(me), hostName(me)); got != nil {
		t.Errorf("a query parsed as an answer: %v", got)
	}
}

// TestAnswerBounded: an answer naming many more addresses than MaxAddrs
// (a hostile responder) leaves at most MaxAddrs.
func TestAnswerBounded(t *testing.T) {
	me := peerID(t)
	var many []netip.Addr
	for i := range 200 {
		many = append(many, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
	}
	r := &Responder{peer: me, port: 4900, addrs: func() []netip.Addr { return many }}
	ans, err := r.answer(1)
	if err != nil {
		t.Fatal(err)
	}
	if got := parseAnswer(ans, Name(me), hostName(me)); len(got) != MaxAddrs {
		t.Errorf("%d addresses kept, want %d", len(got), MaxAddrs)
	}
	// Garbage is ignored, not a panic.
	for i := range len(ans) {
		parseAnswer(ans[:i], Name(me), hostName(me))
		questionFor(ans[:i], Name(me))
	}
	var p dnsmessage.Parser
	if _, err := p.Start(ans); err != nil {
		t.Fatal(err)
	}
}
