package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// rawLink is a hostile relay client on a TLS link that writes frames by
// hand and reads only when asked.
type rawLink struct {
	id identity.PeerID
	tc *tls.Conn
}

func startStreamRelay(t *testing.T, cfg ServerConfig) (rendezvous.ServerAddr, *Server) {
	t.Helper()
	srv, sa, _ := dataServerConfig(t, cfg, nil)
	return sa, srv
}

func dialRaw(t *testing.T, sa rendezvous.ServerAddr, features bool) *rawLink {
	t.Helper()
	k, _ := identity.GenerateKey()
	return dialRawKey(t, sa, features, k)
}

// dialRawKey is dialRaw as the peer of k.
func dialRawKey(t *testing.T, sa rendezvous.ServerAddr, features bool, k *identity.Key) *rawLink {
	t.Helper()
	return dialRawFrom(t, sa, features, k, "127.0.0.1")
}

// dialRawFrom is dialRawKey from the loopback address ip.
func dialRawFrom(t *testing.T, sa rendezvous.ServerAddr, features bool, k *identity.Key, ip string) *rawLink {
	t.Helper()
	cfg, _, err := identity.ClientTLSConfig(k, sa.ID, ALPN)
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tc, err := tls.DialWithDialer(d, "tcp", sa.TCPHostPort(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	r := &rawLink{id: k.ID(), tc: tc}
	r.write(t, appendFrame(nil, frameHello))
	typ, body, _, err := readFrame(tc, nil)
	if err != nil || typ != frameWelcome || len(body) < 5 || body[4]&welcomeStreams == 0 {
		t.Fatalf("want WELCOME with streams: type 0x%02x %v", typ, err)
	}
	if features {
		r.write(t, appendFrame(nil, frameFeatures, []byte{featureStreams}))
	}
	return r
}

func (r *rawLink) write(t *testing.T, b []byte) {
	t.Helper()
	r.tc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.tc.Write(b); err != nil {
		t.Fatal(err)
	}
}

// closes reads frames for d and counts the CLOSE frames by code.
func (r *rawLink) closes(d time.Duration) map[byte]int {
	got := map[byte]int{}
	r.tc.SetReadDeadline(time.Now().Add(d))
	var buf []byte
	for {
		typ, body, b, err := readFrame(r.tc, buf)
		buf = b
		if err != nil {
			return got
		}
		if typ == frameClose {
			got[body[len(body)-1]]++
		}
	}
}

func ref(peer identity.PeerID, id uint32) streamRef { return streamRef{peer: peer, id: id} }

// TestStreamFloods: a hostile peer's stream frames keep the relay's state
// bounded and leave it serving: OPENs beyond the per-peer limit are
// refused, DATA beyond any window resets the stream with the bytes the
// relay holds bounded, frames about unknown streams get one answer, and a
// WINDOW flood to a receiver that does not read resets its stream instead
// of growing the queue.
func TestStreamFloods(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{MaxStreamsPerPeer: 4, PeerRate: -1, TotalRate: -1})
	hostile := dialRaw(t, sa, true)
	victim := dialRaw(t, sa, true) // takes streams, never reads its link
	waitUntil(t, func() bool { l := srv.link(victim.id); return l != nil && l.streams.Load() })

	t.Run("open", func(t *testing.T) {
		var b []byte
		for i := range uint32(100) {
			b = appendStreamFrame(b, frameOpen, ref(victim.id, 1000+i), nil)
		}
		hostile.write(t, b)
		got := hostile.closes(300 * time.Millisecond)
		if n := srv.Streams(); n != 4 {
			t.Errorf("the relay holds %d streams, want the per-peer limit 4", n)
		}
		if got[closeLimit] != 96 {
			t.Errorf("refusals %v, want 96 × limit", got)
		}
		// Done with them: their CLOSEs free the slots.
		b = nil
		for i := range uint32(4) {
			b = appendStreamFrame(b, frameClose, ref(victim.id, 1000+i), []byte{closeReset})
		}
		hostile.write(t, b)
		waitUntil(t, func() bool { return srv.Streams() == 0 })
	})

	t.Run("overrun", func(t *testing.T) {
		hostile.write(t, appendStreamFrame(nil, frameOpen, ref(victim.id, 1), nil))
		waitUntil(t, func() bool { return srv.Streams() == 1 })
		chunk := make([]byte, streamChunk)
		limit := int64(4 * maxStreamWindow)
		var peak int64
		victimLink := srv.link(victim.id)
		sent := 0
		for sent < 64<<20 && srv.Streams() == 1 {
			hostile.write(t, appendStreamFrame(nil, frameData, ref(victim.id, 1), chunk))
			sent += len(chunk)
			peak = max(peak, victimLink.qStream.Load())
		}
		if peak > limit {
			t.Errorf("the relay held %d stream bytes for one receiver, want at most %d", peak, limit)
		}
		waitUntil(t, func() bool { return srv.Streams() == 0 })
		if got := hostile.closes(300 * time.Millisecond); got[closeOverrun] != 1 {
			t.Errorf("the sender heard %v, want one overrun", got)
		}
	})

	t.Run("unknown", func(t *testing.T) {
		var b []byte
		for range 2000 {
			b = appendStreamFrame(b, frameData, ref(victim.id, 77), []byte("x"))
			b = appendStreamFrame(b, frameWindow, ref(victim.id, 77), windowBody(1<<20))
		}
		hostile.write(t, b)
		if got := hostile.closes(300 * time.Millisecond); got[closeGone] != 1 {
			t.Errorf("answers %v to 4000 frames about an unknown stream, want one gone", got)
		}
	})

	t.Run("window", func(t *testing.T) {
		hostile.write(t, appendStreamFrame(nil, frameOpen, ref(victim.id, 2), nil))
		waitUntil(t, func() bool { return srv.Streams() == 1 })
		// Enough to fill the kernel's buffers towards the victim (it
		// reads nothing) many times over.
		for i := uint64(0); i < 2_000_000 && srv.Streams() == 1; i += 10000 {
			var b []byte
			for j := range uint64(10000) {
				b = appendStreamFrame(b, frameWindow, ref(victim.id, 2), windowBody(i+j))
			}
			hostile.write(t, b)
		}
		waitUntil(t, func() bool { return srv.Streams() == 0 })
		l := srv.link(victim.id)
		l.qmu.Lock()
		n := len(l.queue)
		l.qmu.Unlock()
		if limit := srv.cfg.SendQueue + controlHeadroom + streamControlRoom + 2 + int(l.qData.Load()); n > limit {
			t.Errorf("the victim's queue holds %d frames, want at most %d", n, limit)
		}
	})

	t.Run("client-overrun", func(t *testing.T) {
		// An honest node accepts; the hostile opener sends past the
		// node's window (the relay lets up to its own bound through).
		k, _ := identity.GenerateKey()
		in := make(chan net.Conn, 1)
		c, err := NewClient(ClientConfig{Key: k, Dialers: []LinkDialer{TLSDialer{}},
			AcceptStream: func(_ identity.PeerID, c net.Conn) { in <- c }})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.Connect(ctx, sa); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, func() bool { l := srv.link(k.ID()); return l != nil && l.streams.Load() })
		hostile.closes(200 * time.Millisecond) // what the subtests before left
		b := appendStreamFrame(nil, frameOpen, ref(k.ID(), 3), nil)
		chunk := make([]byte, streamChunk)
		for range StreamWindow/streamChunk + 4 {
			b = appendStreamFrame(b, frameData, ref(k.ID(), 3), chunk)
		}
		hostile.write(t, b)
		var conn net.Conn
		select {
		case conn = <-in:
		case <-ctx.Done():
			t.Fatal("no stream accepted")
		}
		defer conn.Close()
		time.Sleep(300 * time.Millisecond) // the burst arrives before the node reads
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := io.Copy(io.Discard, conn)
		if !errors.Is(err, ErrStreamReset) || n > StreamWindow {
			t.Errorf("the node read %d bytes, then %v; want at most its window, then ErrStreamReset", n, err)
		}
		if got := hostile.closes(300 * time.Millisecond); got[closeOverrun] != 1 {
			t.Errorf("the sender heard %v, want one overrun", got)
		}
	})

	// The relay still serves: a fresh pair opens a stream and talks.
	a := dialRaw(t, sa, true)
	bb := dialRaw(t, sa, true)
	waitUntil(t, func() bool { l := srv.link(bb.id); return l != nil && l.streams.Load() })
	a.write(t, appendStreamFrame(appendStreamFrame(nil, frameOpen, ref(bb.id, 1), nil), frameData, ref(bb.id, 1), []byte("hello")))
	bb.tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		typ, body, _, err := readFrame(bb.tc, nil)
		if err != nil {
			t.Fatalf("the relay stopped serving: %v", err)
		}
		if typ == frameData {
			r, rest, _ := parseStream(body)
			if r.peer != a.id || r.id != 1|acceptorBit || string(rest) != "hello" {
				t.Fatalf("DATA %v %q", r, rest)
			}
			break
		}
	}
}

// TestStreamFramesOnlyOnByteStreams: a client that did not send FEATURES
// gets no OPEN (its opener hears not_stream after the grace), and a
// malformed stream frame ends the sender's link with a protocol error.
func TestStreamFramesOnlyOnByteStreams(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{})
	a := dialRaw(t, sa, true)
	old := dialRaw(t, sa, false)
	time.Sleep(featuresGrace)
	a.write(t, appendStreamFrame(nil, frameOpen, ref(old.id, 1), nil))
	if got := a.closes(300 * time.Millisecond); got[closeNotStream] != 1 {
		t.Errorf("OPEN to a client without FEATURES: %v, want not_stream", got)
	}
	if srv.Streams() != 0 {
		t.Error("a stream opened to a client without FEATURES")
	}
	a.write(t, appendFrame(nil, frameOpen, []byte("short")))
	a.tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		typ, body, _, err := readFrame(a.tc, nil)
		if err != nil {
			t.Fatalf("no ERROR before the close: %v", err)
		}
		if typ == frameError {
			if body[0] != codeProtocol {
				t.Fatalf("ERROR code %d, want protocol", body[0])
			}
			break
		}
	}
	var ne net.Error
	if _, _, _, err := readFrame(a.tc, nil); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the link is still open after a malformed stream frame: %v", err)
	}
}

// link returns the relay's link of peer.
func (s *Server) link(peer identity.PeerID) *peerLink {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.peers[peer]
}

func waitUntil(t *testing.T, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("timed out")
		}
	}
}

// TestStreamRefusedByAcceptor: a node that cannot take one more stream
// (its rung's handshake slots are full) refuses it, and the opener sees
// ErrStreamRefused, which makes its rung relay QUIC packets instead
// (streamFallback), not an end of stream.
func TestStreamRefusedByAcceptor(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{})
	mk := func(accept func(identity.PeerID, net.Conn)) (*Client, identity.PeerID) {
		k, _ := identity.GenerateKey()
		c, err := NewClient(ClientConfig{Key: k, Dialers: []LinkDialer{TLSDialer{}}, AcceptStream: accept})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.Connect(ctx, sa); err != nil {
			t.Fatal(err)
		}
		return c, k.ID()
	}
	a, _ := mk(nil)
	_, bid := mk(func(_ identity.PeerID, c net.Conn) { refuseStream(c) })
	waitUntil(t, func() bool { l := srv.link(bid); return l != nil && l.streams.Load() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := a.OpenStream(ctx, bid)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	if !errors.Is(err, ErrStreamRefused) || !streamFallback(err) {
		t.Fatalf("read on a refused stream: %v, want ErrStreamRefused (a reason to fall back)", err)
	}
}

// TestStreamsPerSource: the peers of one source may be ends of
// MaxStreamsPerIP streams together (a stream between two of them counts
// twice); beyond it OPENs are refused (limit), also from another source
// into the full one, until one of its streams ends.
func TestStreamsPerSource(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{MaxStreamsPerIP: 4})
	from := func(ip string) *rawLink {
		k, _ := identity.GenerateKey()
		return dialRawFrom(t, sa, true, k, ip)
	}
	a, b, c := from("127.0.0.1"), from("127.0.0.1"), from("127.0.0.2")
	for _, l := range []*rawLink{a, b, c} {
		waitUntil(t, func() bool { p := srv.link(l.id); return p != nil && p.streams.Load() })
	}
	var f []byte
	for i := range uint32(3) {
		f = appendStreamFrame(f, frameOpen, ref(b.id, 1+i), nil)
	}
	a.write(t, f)
	if got := a.closes(300 * time.Millisecond); got[closeLimit] != 1 || srv.Streams() != 2 {
		t.Fatalf("3 OPENs within one source (limit 4, each counting twice): %d open, refusals %v; want 2 open, 1 limit", srv.Streams(), got)
	}
	c.write(t, appendStreamFrame(nil, frameOpen, ref(a.id, 1), nil))
	if got := c.closes(300 * time.Millisecond); got[closeLimit] != 1 {
		t.Fatalf("an OPEN into a full source: refusals %v, want 1 limit", got)
	}
	a.write(t, appendStreamFrame(nil, frameClose, ref(b.id, 1), []byte{closeReset}))
	waitUntil(t, func() bool { return srv.Streams() == 1 })
	c.write(t, appendStreamFrame(nil, frameOpen, ref(a.id, 2), nil))
	waitUntil(t, func() bool { return srv.Streams() == 2 })
}
