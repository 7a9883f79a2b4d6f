package relay

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/rendezvous"
)

// dataServer runs rendezvous + relay on loopback; proto wraps the relay
// as the rendezvous server's protocol (to hide ServeDatagrams).
func dataServer(t *testing.T, proto func(*Server) rendezvous.Protocol) (*Server, rendezvous.ServerAddr, netip.AddrPort) {
	t.Helper()
	return dataServerConfig(t, ServerConfig{}, proto)
}

// dataServerConfig is dataServer with the relay's config.
func dataServerConfig(t *testing.T, cfg ServerConfig, proto func(*Server) rendezvous.Protocol) (*Server, rendezvous.ServerAddr, netip.AddrPort) {
	t.Helper()
	cfg.Logger = dataLogger(t).With("side", "relay")
	rl := NewServer(cfg)
	var p rendezvous.Protocol = rl
	if proto != nil {
		p = proto(rl)
	}
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
		Logger: slog.New(slog.DiscardHandler), Protocols: map[string]rendezvous.Protocol{ALPN: p},
	}, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	sa := rs.ServerAddr()
	return rl, sa, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), sa.Port)
}

type dataTestWriter struct{ t testing.TB }

func (w dataTestWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func dataLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(dataTestWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// dataEnd is a node's end of a UDP link on a pathsock socket.
type dataEnd struct {
	id   identity.PeerID
	c    *Client
	l    *link
	got  chan []byte
	sock *net.UDPConn
}

// dataLinked links a new node to sa over UDP from a pathsock socket, as a
// node's relay rung does (without the rung's in-place route: packets come
// to Deliver). via, when valid, is where the node sends (a forwarder).
func dataLinked(t *testing.T, sa rendezvous.ServerAddr, name string) dataEnd {
	t.Helper()
	return linkEnd(t, sa, name, false)
}

// linkEnd is dataLinked, the link asking for recipient consent if consent.
func linkEnd(t *testing.T, sa rendezvous.ServerAddr, name string, consent bool) dataEnd {
	t.Helper()
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pathsock.New(u)}
	t.Cleanup(func() { tr.Close(); u.Close() })
	got := make(chan []byte, 256)
	c, err := NewClient(ClientConfig{Key: k, Socket: tr, Dialers: []LinkDialer{UDPDialer{Socket: tr}}, Consent: consent,
		Logger:  dataLogger(t).With("side", name),
		Deliver: func(_ identity.PeerID, pkt []byte) { got <- append([]byte(nil), pkt...) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := c.Connect(ctx, sa)
	if err != nil {
		t.Fatal(err)
	}
	return dataEnd{id: k.ID(), c: c, l: l.(*link), got: got, sock: u}
}

// dataOn waits until e's link sends data packets (its probe was
// answered).
func (e dataEnd) dataOn(t *testing.T) *dataLink {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if d := e.l.data.Load(); d != nil && d.on.Load() {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatal("the relay never answered the link's data probe")
		}
	}
}

// expect waits for want at e.
func (e dataEnd) expect(t *testing.T, want []byte) {
	t.Helper()
	select {
	case got := <-e.got:
		if !bytes.Equal(got, want) {
			t.Fatalf("got a %d-byte packet, want %d bytes (first %#x)", len(got), len(want), want[0])
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("a %d-byte packet never arrived", len(want))
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i)
	}
	b[0] = 0x40 | seed&0x3f // a QUIC short header
	return b
}

// TestDataPackets: two nodes on UDP links exchange packets as data packets
// (the relay counts them in and out), one by one and as GSO batches, in
// order and intact; packets too large for a data packet still arrive (on
// the QUIC connection). The links stay attached (QUICLinks, as a
// supernode's): TestDetachedLink has the default.
func TestDataPackets(t *testing.T) {
	rl, sa, _ := dataServerConfig(t, ServerConfig{QUICLinks: true}, nil)
	a, b := dataLinked(t, sa, "a"), dataLinked(t, sa, "b")
	a.dataOn(t)
	b.dataOn(t)
	// The relay sends data packets to a node once one of its own came.
	pb := pattern(500, 1)
	b.l.Send(a.id, pb)
	a.expect(t, pb)
	for i := range 20 {
		p := pattern(1200, byte(i))
		a.l.Send(b.id, p)
		b.expect(t, p)
	}
	pa := pattern(700, 9)
	a.l.Send(b.id, pa) // b's relay now sends b data packets too
	b.expect(t, pa)
	for _, ps := range rl.Peers() {
		if !ps.DataPackets || ps.Transport != "udp" {
			t.Errorf("Peers(): %s on %s, data packets %v; want udp, true", ps.Peer.Short(), ps.Transport, ps.DataPackets)
		}
	}
	// The relay counts a packet after it sent it: wait for the counts to
	// settle (every packet came as a data packet and went as one, but pb:
	// a was not sending data packets yet).
	settled := func() Stats {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if st := rl.Stats(); st.DataIn == st.DataOut+1 {
				return st
			} else if time.Now().After(deadline) {
				t.Fatalf("data packets in %d, out %d", st.DataIn, st.DataOut)
			}
		}
	}
	before := settled()
	// A GSO batch: 9 packets of 1100 bytes and a shorter one.
	batch := append(bytes.Repeat(pattern(1100, 3), 9), pattern(300, 4)...)
	if err := a.c.Path(b.id).SendSegments(batch, 1100); err != nil {
		t.Fatal(err)
	}
	for range 9 {
		b.expect(t, pattern(1100, 3))
	}
	b.expect(t, pattern(300, 4))
	st := settled()
	if in, out := st.DataIn-before.DataIn, st.DataOut-before.DataOut; in != 10 || out != 10 {
		t.Errorf("the batch went in as %d data packets and out as %d, want 10 and 10", in, out)
	}
	// Too large for a data packet: the link's QUIC connection carries it.
	big := pattern(MaxPayload, 5)
	a.l.Send(b.id, big)
	b.expect(t, big)
	if st2 := rl.Stats(); st2.DataIn != st.DataIn {
		t.Errorf("a %d-byte packet went as a data packet", MaxPayload)
	}
}

// TestDataPacketsForged: data packets with a wrong token, from another
// address than the link's, or truncated, are dropped and counted; the
// relay answers no probe of theirs and keeps forwarding for the real
// links. A flood of them keeps no state.
func TestDataPacketsForged(t *testing.T) {
	rl, sa, server := dataServer(t, nil)
	a, b := dataLinked(t, sa, "a"), dataLinked(t, sa, "b")
	da := a.dataOn(t)
	b.dataOn(t)
	evil, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer evil.Close()
	pkt := func(tok uint64, dst identity.PeerID, body []byte) []byte {
		p := append([]byte{dataToRelay}, binary.BigEndian.AppendUint64(nil, tok)...)
		return append(append(p, dst[:]...), body...)
	}
	const flood = 5000
	for i := range flood {
		switch i % 3 {
		case 0: // a's token from another address
			evil.WriteToUDPAddrPort(pkt(da.token, b.id, pattern(100, 1)), server)
		case 1: // a guessed token
			evil.WriteToUDPAddrPort(pkt(uint64(i)<<20|7, b.id, pattern(100, 1)), server)
		default: // a probe with a's token from another address
			evil.WriteToUDPAddrPort(pkt(da.token, identity.PeerID{}, nil), server)
		}
	}
	evil.WriteToUDPAddrPort([]byte{dataToRelay, 1, 2}, server) // truncated
	// a's link is detached (the default): its token from another address
	// gets a challenge there, at most one a second (rebind.go).
	onlyChallenges(t, evil, 300*time.Millisecond, 2)
	// The real links still work both ways.
	pa, pb := pattern(900, 2), pattern(800, 3)
	a.l.Send(b.id, pa)
	b.expect(t, pa)
	b.l.Send(a.id, pb)
	a.expect(t, pb)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m := rl.Metrics()
		if m.Drops["unknown_link"] == flood && m.Drops["malformed"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drops %v, want %d unknown_link and 1 malformed", m.Drops, flood)
		}
	}
	select {
	case p := <-b.got:
		t.Fatalf("b got a forged packet (%d bytes)", len(p))
	default:
	}
	rl.mu.RLock()
	n, peers := len(rl.data), len(rl.peers)
	rl.mu.RUnlock()
	if n != 2 || peers != 2 {
		t.Errorf("after the flood the relay keeps %d data links and %d peers, want 2 and 2", n, peers)
	}
}

// errTimeout returns err when it is a timeout, else nil (for errors.Is).
func errTimeout(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return nil
}

// noDatagrams is a relay as a rendezvous.Protocol that does not take
// datagrams (an older relay).
type noDatagrams struct{ *Server }

func (noDatagrams) ServeDatagrams() {} // not rendezvous.DatagramProtocol's

// TestDataPacketsOff: a relay that offers no data packets (an older one)
// and a network that drops them (a firewall that passes only QUIC) both
// leave the link on DATAGRAM frames, and packets arrive.
func TestDataPacketsOff(t *testing.T) {
	t.Run("old-relay", func(t *testing.T) {
		rl, sa, _ := dataServer(t, func(s *Server) rendezvous.Protocol { return noDatagrams{s} })
		a, b := dataLinked(t, sa, "a"), dataLinked(t, sa, "b")
		if a.l.dataToken != 0 || a.l.data.Load() != nil {
			t.Fatal("a relay without ServeDatagrams offered data packets")
		}
		p := pattern(1000, 1)
		a.l.Send(b.id, p)
		b.expect(t, p)
		if st := rl.Stats(); st.DataIn+st.DataOut != 0 {
			t.Errorf("data packets counted: %+v", st)
		}
	})
	t.Run("dropped", func(t *testing.T) {
		rl, sa, server := dataServer(t, nil)
		fw := newQUICOnly(t, server)
		via := sa
		via.Port = fw.Port()
		a, b := dataLinked(t, via, "a"), dataLinked(t, sa, "b")
		b.dataOn(t)
		for range 3 {
			p := pattern(1000, 1)
			a.l.Send(b.id, p)
			b.expect(t, p)
			b.l.Send(a.id, p)
			a.expect(t, p)
			time.Sleep(300 * time.Millisecond) // while a probes
		}
		if d := a.l.data.Load(); d == nil || d.on.Load() {
			t.Fatal("a's data probe was answered through a network that drops data packets")
		}
		if fw.dropped.Load() == 0 {
			t.Error("the forwarder saw no data packet (probe) to drop")
		}
		_ = rl
	})
}

// quicOnly forwards UDP between its clients and a server, dropping every
// datagram that is not QUIC (first byte below 0x40), as a firewall that
// passes only QUIC would.
type quicOnly struct {
	ln      *net.UDPConn
	dropped atomic.Int64
}

func newQUICOnly(t *testing.T, server netip.AddrPort) *quicOnly {
	t.Helper()
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f := &quicOnly{ln: ln}
	up, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); up.Close() })
	var client atomic.Pointer[netip.AddrPort]
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := ln.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			client.Store(&from)
			if buf[0] < 0x40 {
				f.dropped.Add(1)
				continue
			}
			up.Write(buf[:n])
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			if c := client.Load(); c != nil && buf[0] >= 0x40 {
				ln.WriteToUDPAddrPort(buf[:n], *c)
			}
		}
	}()
	return f
}

func (f *quicOnly) Port() uint16 { return uint16(f.ln.LocalAddr().(*net.UDPAddr).Port) }
