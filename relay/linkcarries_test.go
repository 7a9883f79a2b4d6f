package relay

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/rendezvous"
)

// TestLinkCarriesForOffer: a listener's answer says what its link to the
// relay the dialler comes through carries. A dialler registered with
// another server of a fleet relays through that server's relay, where the
// listener links with a client of its own (introducedForeign): its own
// relay link (a UDP one: "packets") says nothing of that link, and
// "packets" would make the dialler skip a relayed stream the foreign link
// (over TLS, say) carries. A node that failed over to another server
// links anew there: its link to the old relay says nothing either.
func TestLinkCarriesForOffer(t *testing.T) {
	k, _ := identity.GenerateKey()
	fk, _ := identity.GenerateKey()
	own := rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.1", Port: 7777}
	r := &Rung{h: &rung.Host{Logger: slog.New(slog.DiscardHandler), Server: func() rendezvous.ServerAddr { return own }}}
	c, err := NewClient(ClientConfig{Key: k, Dialers: []LinkDialer{UDPDialer{}, TLSDialer{}},
		AcceptStream: func(identity.PeerID, net.Conn) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r.client = c
	defer r.closeForeign()
	named := func(sa rendezvous.ServerAddr) candidate.PeerInfo {
		return candidate.PeerInfo{Candidates: []candidate.Candidate{{Kind: candidate.Relay, Peer: sa.ID,
			Addr: netip.AddrPortFrom(netip.MustParseAddr(sa.Host), sa.Port)}}}
	}
	foreign := rendezvous.ServerAddr{ID: fk.ID(), Host: "192.0.2.9", Port: 7777}
	for _, tc := range []struct {
		name  string
		offer candidate.PeerInfo
		want  string
	}{
		{"own relay, unnamed", candidate.PeerInfo{Candidates: []candidate.Candidate{{Kind: candidate.Relay, Addr: netip.MustParseAddrPort("127.0.0.1:7777")}}}, candidate.RelayLinkPackets},
		{"own relay, named", named(own), candidate.RelayLinkPackets},
		{"another server's relay", named(foreign), ""},
		// A dialler on a byte-stream link: this node, whose link is UDP,
		// takes its stream on a streams-only link (Introduced opens it).
		{"own relay, dialler on a byte stream", withLink(named(own), candidate.RelayLinkStreams), candidate.RelayLinkStreams},
		{"own relay, unnamed, dialler on a byte stream", withLink(candidate.PeerInfo{Candidates: []candidate.Candidate{{Kind: candidate.Relay, Addr: netip.MustParseAddrPort("127.0.0.1:7777")}}}, candidate.RelayLinkStreams), candidate.RelayLinkStreams},
		{"own relay, dialler on packets", withLink(named(own), candidate.RelayLinkPackets), candidate.RelayLinkPackets},
		{"another server's relay, dialler on a byte stream", withLink(named(foreign), candidate.RelayLinkStreams), ""},
	} {
		if got := r.LinkCarries(tc.offer, true); got != tc.want {
			t.Errorf("%s: the answer says %q, want %q", tc.name, got, tc.want)
		}
	}

	// Not linked, and UDP to the server looks blocked: the next link is a
	// byte stream, no streams-only link is promised.
	if got := r.LinkCarries(withLink(named(own), candidate.RelayLinkStreams), false); got == candidate.RelayLinkStreams {
		t.Errorf("UDP blocked, dialler on a byte stream: the answer promises a streams-only link")
	}

	// Linked over UDP to the relay of a server the node failed over from;
	// its new server's UDP looks blocked: the next link is not UDP.
	old := rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.2", Port: 7777}
	c.mu.Lock()
	c.link, c.server = &link{transport: "udp"}, old
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.link = nil
		c.mu.Unlock()
	}()
	if got := r.LinkCarries(candidate.PeerInfo{}, false); got != "" {
		t.Errorf("linked to the old server's relay over UDP: the answer says %q, want \"\"", got)
	}
	own = old
	if got := r.LinkCarries(candidate.PeerInfo{}, false); got != candidate.RelayLinkPackets {
		t.Errorf("linked to its server's relay over UDP: the answer says %q, want %q", got, candidate.RelayLinkPackets)
	}
}

func withLink(p candidate.PeerInfo, link string) candidate.PeerInfo {
	p.RelayLink = link
	return p
}
