package relay_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// streamPeer is a relay client on a TLS link that takes relayed streams
// into in (when it accepts them).
type streamPeer struct {
	c  *relay.Client
	id identity.PeerID
	in chan net.Conn
}

func newStreamPeer(t testing.TB, sa rendezvous.ServerAddr, accept bool) *streamPeer {
	t.Helper()
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	p := &streamPeer{id: k.ID(), in: make(chan net.Conn, 16)}
	cfg := relay.ClientConfig{Key: k, Dialers: []relay.LinkDialer{relay.TLSDialer{}}, Logger: testLogger(t)}
	if accept {
		cfg.AcceptStream = func(_ identity.PeerID, c net.Conn) {
			select {
			case p.in <- c:
			default:
				c.Close()
			}
		}
	}
	if p.c, err = relay.NewClient(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.c.Connect(ctx, sa); err != nil {
		t.Fatal(err)
	}
	return p
}

// streamPair opens a relayed stream from a to b.
func streamPair(t testing.TB, a, b *streamPeer) (net.Conn, net.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c1, err := a.c.DialStream(ctx, b.id)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case c2 := <-b.in:
		return c1, c2
	case <-ctx.Done():
		t.Fatal("the stream was not accepted")
	}
	return nil, nil
}

// TestRelayedStreamConn: a relayed stream is a net.Conn by x/net's
// conformance test.
func TestRelayedStreamConn(t *testing.T) {
	rs, _ := startServer(t, relay.ServerConfig{})
	a := newStreamPeer(t, rs.ServerAddr(), false)
	b := newStreamPeer(t, rs.ServerAddr(), true)
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		c1, c2 = streamPair(t, a, b)
		return c1, c2, func() { c1.Close(); c2.Close() }, nil
	})
}

// TestRelayedStreamBulk: 32 MiB each way at once, the receivers reading
// slowly at first (so both windows fill), arrive intact; both closes
// leave the relay with no stream.
func TestRelayedStreamBulk(t *testing.T) {
	rs, srv := startServer(t, relay.ServerConfig{})
	a := newStreamPeer(t, rs.ServerAddr(), false)
	b := newStreamPeer(t, rs.ServerAddr(), true)
	c1, c2 := streamPair(t, a, b)
	const size = 32 << 20
	send := func(c net.Conn) ([32]byte, error) {
		h := sha256.New()
		buf := make([]byte, 100_000)
		for n := 0; n < size; {
			k := min(len(buf), size-n)
			rand.Read(buf[:k])
			h.Write(buf[:k])
			if _, err := c.Write(buf[:k]); err != nil {
				return [32]byte{}, err
			}
			n += k
		}
		return [32]byte(h.Sum(nil)), nil
	}
	recv := func(c net.Conn) ([32]byte, int64, error) {
		time.Sleep(200 * time.Millisecond) // the sender fills the window first
		h := sha256.New()
		n, err := io.CopyN(h, c, size)
		return [32]byte(h.Sum(nil)), n, err
	}
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	sent := make(chan result, 2)
	got := make(chan result, 2)
	for _, pair := range [][2]net.Conn{{c1, c2}, {c2, c1}} {
		go func() { s, err := send(pair[0]); sent <- result{s, size, err} }()
		go func() { s, n, err := recv(pair[1]); got <- result{s, n, err} }()
	}
	var sums, gots [][32]byte
	for range 2 {
		s, g := <-sent, <-got
		if s.err != nil || g.err != nil {
			t.Fatalf("send: %v, receive: %v (%d bytes)", s.err, g.err, g.n)
		}
		sums, gots = append(sums, s.sum), append(gots, g.sum)
	}
	if !(sums[0] == gots[0] && sums[1] == gots[1] || sums[0] == gots[1] && sums[1] == gots[0]) {
		t.Fatal("the bytes received differ from those sent")
	}
	c1.Close()
	if _, err := c2.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after the peer closed: %v, want io.EOF", err)
	}
	if _, err := c2.Write([]byte("x")); !errors.Is(err, relay.ErrStreamClosed) {
		t.Fatalf("write after the peer closed: %v, want ErrStreamClosed", err)
	}
	c2.Close()
	waitFor(t, 2*time.Second, "the relay forgets the stream", func() bool { return srv.Streams() == 0 })
}

// TestRelayedStreamRefusals: each way a stream cannot open names why.
func TestRelayedStreamRefusals(t *testing.T) {
	rs, _ := startServer(t, relay.ServerConfig{MaxStreamsPerPeer: 2})
	sa := rs.ServerAddr()
	a := newStreamPeer(t, sa, false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A peer that takes no streams: the caller relays packets instead.
	noAccept := newStreamPeer(t, sa, false)
	if _, err := a.c.DialStream(ctx, noAccept.id); !errors.Is(err, relay.ErrStreamsUnsupported) {
		t.Errorf("to a peer that takes no streams: %v, want ErrStreamsUnsupported", err)
	}
	// A peer that is not linked: tried until the context ends.
	ghost, _ := identity.GenerateKey()
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := a.c.DialStream(short, ghost.ID())
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, relay.ErrPeerNotConnected) {
		t.Errorf("to a peer that is not linked: %v, want the deadline and ErrPeerNotConnected", err)
	}
	// The relay's per-peer limit.
	b := newStreamPeer(t, sa, true)
	for range 2 {
		streamPair(t, a, b)
	}
	if _, err := a.c.DialStream(ctx, b.id); !errors.Is(err, relay.ErrRelayFull) {
		t.Errorf("beyond MaxStreamsPerPeer: %v, want ErrRelayFull", err)
	}

	// A relay that offers no streams.
	rs2, _ := startServer(t, relay.ServerConfig{MaxStreams: -1})
	c := newStreamPeer(t, rs2.ServerAddr(), true)
	d := newStreamPeer(t, rs2.ServerAddr(), true)
	if c.c.StreamsOffered() {
		t.Error("StreamsOffered on a relay that offers none")
	}
	if _, err := c.c.DialStream(ctx, d.id); !errors.Is(err, relay.ErrStreamsUnsupported) {
		t.Errorf("through a relay without streams: %v, want ErrStreamsUnsupported", err)
	}
}

// TestRelayedStreamLinkLost: when the acceptor's link ends, the dialler's
// stream fails with ErrStreamReset, buffered bytes are still read first,
// and the relay keeps no stream.
func TestRelayedStreamLinkLost(t *testing.T) {
	rs, srv := startServer(t, relay.ServerConfig{})
	a := newStreamPeer(t, rs.ServerAddr(), false)
	b := newStreamPeer(t, rs.ServerAddr(), true)
	c1, c2 := streamPair(t, a, b)
	if _, err := c2.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 10)
	if _, err := io.ReadFull(c1, got); err != nil || !bytes.Equal(got, []byte("last words")) {
		t.Fatalf("read %q, %v", got, err)
	}
	b.c.Close()
	c1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c1.Read(got); !errors.Is(err, relay.ErrStreamReset) {
		t.Fatalf("read after the peer's link ended: %v, want ErrStreamReset", err)
	}
	if _, err := c1.Write(got); !errors.Is(err, relay.ErrStreamReset) {
		t.Fatalf("write after the peer's link ended: %v, want ErrStreamReset", err)
	}
	waitFor(t, 2*time.Second, "the relay forgets the stream", func() bool { return srv.Streams() == 0 })
}

func waitFor(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !ok(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRelayStreamSession: two nodes linked to the relay over TLS get a
// TLS+yamux session over a relayed stream (no QUIC inside the TCP links),
// and data crosses it intact both ways. A node on a UDP link that dials a
// node on a TLS link gets one too, through a streams-only link it opens
// beside its UDP link (streamlink.go), which stays its link for packets;
// dialled by a node on a TLS link, it opens one too when the introduction
// reaches it, and the dialler's stream goes to it. A pair whose listener
// turned relayed streams off gets QUIC over relayed packets.
func TestRelayStreamSession(t *testing.T) {
	rs, rl := startServer(t, relay.ServerConfig{})
	tlsOnly := reach.Config{RelayDialers: []relay.LinkDialer{relay.TLSDialer{}}}
	a := newNode(t, rs.ConnectString(), tlsOnly)
	b := newNode(t, rs.ConnectString(), tlsOnly)
	u := newNode(t, rs.ConnectString(), reach.Config{})
	off := newNode(t, rs.ConnectString(), reach.Config{RelayDialers: tlsOnly.RelayDialers, DisableRelayStreams: true})
	echo(b)
	echo(u)
	echo(a)
	echo(off)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, c := range []struct {
		name     string
		from, to *reach.Node
		stream   bool
	}{
		{"tls-tls", a, b, true},
		{"tls-udp", a, u, true},
		{"udp-tls", u, b, true},
		{"tls-tls-streams-off", a, off, false},
		{"udp-tls-streams-off", u, off, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			refused := rl.Metrics().StreamsRefused
			sess, err := c.from.DialSession(ctx, c.to.ID())
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			if sess.Strategy() != reach.StrategyRelay {
				t.Fatalf("strategy %q, want relay", sess.Strategy())
			}
			if got := sess.QUIC() == nil; got != c.stream {
				t.Fatalf("relayed stream %v, want %v", got, c.stream)
			}
			if c.stream && rl.Streams() != 1 {
				t.Errorf("the relay holds %d streams, want 1", rl.Streams())
			}
			if c.from == u || c.to == u {
				// The streams-only link did not replace u's UDP link.
				for _, p := range rl.Peers() {
					if p.Peer == u.ID() && p.Transport != "udp" {
						t.Errorf("the dialler's link is %s now, want udp", p.Transport)
					}
				}
				if c.stream && rl.StreamLinks() != 1 {
					t.Errorf("the relay holds %d streams-only links, want 1", rl.StreamLinks())
				}
			}
			// The listener's answer said what its link carries: a
			// dialler does not try a stream the relay would refuse (but
			// one to a listener whose streams-only link is on its way may
			// be refused until it is up, and tried again).
			if now := rl.Metrics().StreamsRefused; now["not_stream"] != refused["not_stream"] && c.to != u {
				t.Errorf("the relay refused %d streams as not_stream, want 0: the dialler tried a stream to a peer whose answer said packets",
					now["not_stream"]-refused["not_stream"])
			}
			st, err := sess.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := roundTrip(st, 8<<20); err != nil {
				t.Fatal(err)
			}
			st.Close()
		})
	}
	waitFor(t, 5*time.Second, "the relay forgets the stream", func() bool { return rl.Streams() == 0 })
}

// TestRelayStreamSessionNoStreamLink: a relay without relayed streams
// refuses a streams-only link; a node on a UDP link dialling a node on a
// TLS link then gets QUIC over relayed packets, not a failed dial.
func TestRelayStreamSessionNoStreamLink(t *testing.T) {
	rs, rl := startServer(t, relay.ServerConfig{MaxStreams: -1})
	u := newNode(t, rs.ConnectString(), reach.Config{})
	b := newNode(t, rs.ConnectString(), reach.Config{RelayDialers: []relay.LinkDialer{relay.TLSDialer{}}})
	echo(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sess, err := u.DialSession(ctx, b.ID())
	if err != nil {
		t.Fatalf("dial through a relay without streams: %v", err)
	}
	defer sess.Close()
	if sess.Strategy() != reach.StrategyRelay || sess.QUIC() == nil {
		t.Fatalf("strategy %q, QUIC %v: want relay over QUIC", sess.Strategy(), sess.QUIC() != nil)
	}
	if rl.StreamLinks() != 0 {
		t.Errorf("the relay holds %d streams-only links, want 0", rl.StreamLinks())
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(st, 1<<20); err != nil {
		t.Fatal(err)
	}
	st.Close()
}

// TestRelayStreamSessionFallsBack: when the relay is at its stream limit
// (CLOSE limit, ErrRelayFull), two nodes on TLS links get QUIC over
// relayed packets instead (docs/security.md: "the node relays QUIC
// packets instead"), not a failed dial.
func TestRelayStreamSessionFallsBack(t *testing.T) {
	rs, rl := startServer(t, relay.ServerConfig{MaxStreams: 1})
	p := newStreamPeer(t, rs.ServerAddr(), false)
	q := newStreamPeer(t, rs.ServerAddr(), true)
	c1, c2 := streamPair(t, p, q) // the relay's one stream
	defer c1.Close()
	defer c2.Close()
	tlsOnly := reach.Config{RelayDialers: []relay.LinkDialer{relay.TLSDialer{}}}
	a := newNode(t, rs.ConnectString(), tlsOnly)
	b := newNode(t, rs.ConnectString(), tlsOnly)
	echo(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sess, err := a.DialSession(ctx, b.ID())
	if err != nil {
		t.Fatalf("dial with the relay's streams used up: %v, want QUIC over relayed packets", err)
	}
	defer sess.Close()
	if sess.Strategy() != reach.StrategyRelay || sess.QUIC() == nil {
		t.Fatalf("strategy %q, QUIC %v: want relay over QUIC", sess.Strategy(), sess.QUIC() != nil)
	}
	if rl.Streams() != 1 {
		t.Errorf("the relay holds %d streams, want 1", rl.Streams())
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(st, 1<<20); err != nil {
		t.Fatal(err)
	}
	st.Close()
}

// TestRelayedStreamWriteDeadlineCongested: a Write waiting because the
// link to the relay is backed up (the relay reads the node's link at its
// PeerRate) still ends at its deadline, and Close ends it too.
func TestRelayedStreamWriteDeadlineCongested(t *testing.T) {
	rs, _ := startServer(t, relay.ServerConfig{PeerRate: 512 << 10, PeerBurst: 64 << 10, TotalRate: -1})
	a := newStreamPeer(t, rs.ServerAddr(), false)
	b := newStreamPeer(t, rs.ServerAddr(), true)
	c1, c2 := streamPair(t, a, b)
	defer c2.Close()
	go io.Copy(io.Discard, c2)
	buf := make([]byte, 4<<20)
	// Two more streams fill the link (each its 2 MiB window) beyond the
	// kernel's buffers.
	for range 2 {
		f1, f2 := streamPair(t, a, b)
		defer f1.Close()
		defer f2.Close()
		go io.Copy(io.Discard, f2)
		go f1.Write(buf)
	}
	time.Sleep(200 * time.Millisecond)
	c1.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	start := time.Now()
	_, err := c1.Write(buf)
	if d := time.Since(start); !errors.Is(err, os.ErrDeadlineExceeded) || d > time.Second {
		t.Errorf("Write with a 300 ms deadline on a backed-up link: %v after %v", err, d.Round(time.Millisecond))
	}
	c1.SetWriteDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { _, err := c1.Write(buf); done <- err }()
	time.Sleep(300 * time.Millisecond)
	start = time.Now()
	c1.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Write ended by Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(time.Second):
		t.Errorf("Write still blocked 1 s after Close")
		<-done
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d.Round(time.Millisecond))
	}
}

// TestRelayedStreamReadCongested: neither accepting a stream nor a Read
// waits while the node's own link to the relay is backed up by its
// writes: the WINDOWs it owes go out when there is room.
func TestRelayedStreamReadCongested(t *testing.T) {
	rs, _ := startServer(t, relay.ServerConfig{PeerRate: 512 << 10, PeerBurst: 2 << 20, TotalRate: -1})
	a := newStreamPeer(t, rs.ServerAddr(), true)
	b := newStreamPeer(t, rs.ServerAddr(), true)
	d := newStreamPeer(t, rs.ServerAddr(), false)
	buf := backUp(t, a, b)
	// Opened without waiting for a's first WINDOW: that waits behind
	// a's writes too.
	w, err := d.c.OpenStream(context.Background(), a.id)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var r net.Conn
	select {
	case r = <-a.in:
	case <-time.After(time.Second):
		t.Fatal("the stream was not accepted within a second")
	}
	defer r.Close()
	const size = 1900 << 10 // within d's burst and the window, past a quarter of it (a WINDOW is owed)
	go w.Write(buf[:size])
	start := time.Now()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(r, make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("reading %d KiB took %v while the reader's link was backed up", size>>10, d.Round(time.Millisecond))
	}
}

// TestRelayedStreamDialCongested: DialStream keeps to its context while
// the node's link to the relay is backed up by its writes.
func TestRelayedStreamDialCongested(t *testing.T) {
	rs, _ := startServer(t, relay.ServerConfig{PeerRate: 512 << 10, PeerBurst: 2 << 20, TotalRate: -1})
	a := newStreamPeer(t, rs.ServerAddr(), false)
	b := newStreamPeer(t, rs.ServerAddr(), true)
	backUp(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	c, err := a.c.DialStream(ctx, b.id)
	if err == nil {
		c.Close()
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("DialStream with a 300 ms context returned after %v (%v)", d.Round(time.Millisecond), err)
	}
}

// backUp backs a's link to the relay up with its own writes: four
// streams to b, each written 8 MiB at once and read by b, past a's rate
// burst. It returns the 8 MiB buffer.
func backUp(t *testing.T, a, b *streamPeer) []byte {
	t.Helper()
	buf := make([]byte, 8<<20)
	var fillers []net.Conn
	for range 4 { // all open before any write backs the link up
		f1, f2 := streamPair(t, a, b)
		t.Cleanup(func() { f1.Close(); f2.Close() })
		go io.Copy(io.Discard, f2)
		fillers = append(fillers, f1)
	}
	for _, f := range fillers {
		go f.Write(buf)
	}
	time.Sleep(4 * time.Second) // past a's burst
	return buf
}
