package rendezvous

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// packets collects what a flight receives.
type packets struct {
	mu  sync.Mutex
	got [][]byte
}

func (p *packets) add(b []byte) {
	p.mu.Lock()
	p.got = append(p.got, append([]byte(nil), b...))
	p.mu.Unlock()
}

func (p *packets) list() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.got...)
}

// pkt is a fake QUIC long-header packet (the server relays no other kind)
// tagged tag and i.
func pkt(tag string, i int) []byte { return []byte(fmt.Sprintf("\xc0%s-%02d", tag, i)) }

// TestFlight: packets the dialler sends before and after its CONNECT reach
// the peer in order with the introduction, the peer's answers come back,
// and each direction stops at MaxFlightPackets; the client refuses more
// with ErrFlightFull.
func TestFlight(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	servers := []ServerAddr{rs.ServerAddr()}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	kb := mustKey(t)
	b := startClient(t, "b", kb, servers, newTransport(t))

	var atB, atA packets
	go func() {
		for in := range b.Incoming() {
			in.Flight().Receive(func(p []byte) {
				atB.add(p)
				if bytes.HasPrefix(p, []byte("\xc0a-")) {
					in.Flight().Send(append([]byte("\xc0b-re-"), p[1:]...))
				}
			})
			in.Accept(PeerInfo{})
		}
	}()
	f := NewFlight()
	f.Receive(atA.add)
	defer f.Close()
	f.Send(pkt("a", 0)) // before the introduction: waits for it
	if _, err := a.ConnectFlight(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{}, f); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < MaxFlightPackets; i++ {
		if err := f.Send(pkt("a", i)); err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
	}
	if err := f.Send(pkt("a", 99)); !errors.Is(err, ErrFlightFull) {
		t.Fatalf("packet beyond the limit: %v, want ErrFlightFull", err)
	}
	if err := f.Send(make([]byte, MaxFlightPacket+1)); !errors.Is(err, ErrFlightFull) {
		t.Fatalf("oversized packet: %v, want ErrFlightFull", err)
	}
	waitFor(t, "the flight both ways", func() bool {
		return len(atB.list()) == MaxFlightPackets && len(atA.list()) == MaxFlightPackets
	})
	for i, p := range atB.list() {
		if want := pkt("a", i); !bytes.Equal(p, want) {
			t.Fatalf("peer's packet %d = %q, want %q (in order)", i, p, want)
		}
	}
	for _, p := range atA.list() {
		if !bytes.HasPrefix(p, []byte("\xc0b-re-a-")) {
			t.Fatalf("dialler got %q", p)
		}
	}
	if st := rs.Stats(); st.FlightPackets != 2*MaxFlightPackets {
		t.Errorf("server relayed %d flight packets, want %d", st.FlightPackets, 2*MaxFlightPackets)
	}
}

// TestFlightLimits: the server relays no more than MaxFlightPackets one
// way even when a client writes frames itself, and drops short-header
// packets and flight frames for introductions the sender is not part of.
func TestFlightLimits(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	servers := []ServerAddr{rs.ServerAddr()}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	kb := mustKey(t)
	b := startClient(t, "b", kb, servers, newTransport(t))
	c := startClient(t, "c", mustKey(t), servers, newTransport(t)) // a bystander

	var atB packets
	intro := make(chan uint64, 1)
	go func() {
		for in := range b.Incoming() {
			in.Flight().Receive(atB.add)
			intro <- in.id
			in.Accept(PeerInfo{})
		}
	}()
	f := NewFlight()
	defer f.Close()
	if _, err := a.ConnectFlight(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{}, f); err != nil {
		t.Fatal(err)
	}
	id := <-intro
	f.mu.Lock()
	cc, key := f.cc, f.key
	f.mu.Unlock()
	// Past the client's own limit, straight onto the wire.
	for i := range 3 * MaxFlightPackets {
		if err := cc.write(typeFlight, key.body(pkt("a", i))); err != nil {
			t.Fatal(err)
		}
	}
	// A session's own packet (short header) is never relayed.
	if err := cc.write(typeFlight, key.body([]byte{0x40, 1, 2, 3})); err != nil {
		t.Fatal(err)
	}
	// A bystander names the introduction: not its own, dropped.
	ccC, err := c.waitConn(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		ccC.write(typeFlight, flightBody{Intro: id, Packet: pkt("c", i)})
		ccC.write(typeFlight, flightBody{Req: key.id, Packet: pkt("c", i)})
	}
	waitFor(t, "the server to drop the excess", func() bool {
		return rs.Stats().FlightDropped >= 2*MaxFlightPackets+11
	})
	// The server has decided every packet by now; the ones it forwarded
	// may still be on their way to the peer.
	waitFor(t, "the forwarded packets to arrive", func() bool { return len(atB.list()) >= MaxFlightPackets })
	got := atB.list()
	if len(got) != MaxFlightPackets {
		t.Fatalf("peer received %d packets, want %d", len(got), MaxFlightPackets)
	}
	for _, p := range got {
		if bytes.HasPrefix(p, []byte("\xc0c-")) {
			t.Fatalf("a bystander's packet reached the peer: %q", p)
		}
	}
}

// TestFlightsDisabled: a server with DisableFlights relays none, the
// introduction works as without a flight, and a target's answer that says
// it took the flight reaches the dialler without that claim.
func TestFlightsDisabled(t *testing.T) {
	rs := startTestServer(t, ServerConfig{DisableFlights: true})
	servers := []ServerAddr{rs.ServerAddr()}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	kb := mustKey(t)
	b := startClient(t, "b", kb, servers, newTransport(t))
	var atB packets
	go func() {
		for in := range b.Incoming() {
			in.Flight().Receive(atB.add)
			in.Accept(PeerInfo{Flight: true})
		}
	}()
	f := NewFlight()
	defer f.Close()
	f.Send(pkt("a", 0))
	answer, err := a.ConnectFlight(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{}, f)
	if err != nil {
		t.Fatal(err)
	}
	if answer.Flight {
		t.Fatal("the answer says the target took a flight the server never relayed")
	}
	waitFor(t, "the server to drop the packet", func() bool { return rs.Stats().FlightDropped == 1 })
	if n := len(atB.list()); n != 0 || rs.Stats().FlightPackets != 0 {
		t.Fatalf("%d packets reached the peer, want 0", n)
	}
}

// nopProtocol is a Protocol that serves nothing.
type nopProtocol struct{}

func (nopProtocol) ServeQUIC(context.Context, *quic.Conn) {}
func (nopProtocol) ServeTLS(context.Context, *tls.Conn)   {}

// TestServerOffers: REGISTERED names the other protocols the server
// serves (a node flies first only when the server runs the relay it would
// fall back to), and a server without them names none.
func TestServerOffers(t *testing.T) {
	for _, tc := range []struct {
		protocols map[string]Protocol
		want      []string
	}{
		{map[string]Protocol{"reach-relay-test": nopProtocol{}, "another": nopProtocol{}}, []string{"another", "reach-relay-test"}},
		{nil, nil},
	} {
		rs := startTestServer(t, ServerConfig{Protocols: tc.protocols})
		c := startClient(t, "a", mustKey(t), []ServerAddr{rs.ServerAddr()}, newTransport(t))
		for _, p := range []string{"another", "reach-relay-test", "missing"} {
			if got, want := c.ServerOffers(p), slices.Contains(tc.want, p); got != want {
				t.Errorf("server with %v: ServerOffers(%q) = %v, want %v", tc.want, p, got, want)
			}
		}
	}
}
