package supernode

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

func listenSock(t *testing.T) *sock.Socket { return listenSockOn(t, "127.0.0.1") }

// listenSockOn is listenSock on another loopback address (127.0.0.0/8):
// a peer from another source IP.
func listenSockOn(t *testing.T, ip string) *sock.Socket {
	t.Helper()
	s, err := sock.Listen(sock.Config{Addr: netip.AddrPortFrom(netip.MustParseAddr(ip), 0)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testVolunteer is a volunteer node on loopback: its socket's QUIC
// listener serves relay links to its Volunteer's relay server, as a
// node's listener does (stream.ListenWith).
type testVolunteer struct {
	key    *identity.Key
	vol    *Volunteer
	sock   *sock.Socket
	ln     *stream.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

func startVolunteer(t *testing.T, cfg Config) *testVolunteer {
	t.Helper()
	tv := &testVolunteer{key: mustKey(t), sock: listenSock(t)}
	tv.vol = NewVolunteer(cfg, testLogger(t).With("side", "volunteer"))
	ctx, cancel := context.WithCancel(context.Background())
	tv.cancel = cancel
	var err error
	tv.ln, err = stream.ListenWith(tv.sock.Transport(), tv.key, stream.Config{}, map[string]func(*quic.Conn){
		relay.ALPN: func(qc *quic.Conn) { tv.wg.Go(func() { tv.vol.Relay().ServeQUIC(ctx, qc) }) },
	})
	if err != nil {
		cancel()
		tv.sock.Close()
		t.Fatal(err)
	}
	tv.wg.Go(func() {
		for {
			s, err := tv.ln.Accept(ctx)
			if err != nil {
				return
			}
			s.CloseWithError(0, "not a peer")
		}
	})
	t.Cleanup(tv.stop)
	return tv
}

// stop shuts the volunteer down: its relay server closes every link
// (as a node that closes does), then its socket.
func (tv *testVolunteer) stop() {
	tv.once.Do(func() {
		tv.cancel()
		tv.ln.Close()
		tv.wg.Wait()
		tv.sock.Close()
	})
}

// candFor is the Supernode candidate a server hands peer for tv, with a
// token under secret.
func (tv *testVolunteer) candFor(peer identity.PeerID, sec []byte) rendezvous.Candidate {
	return rendezvous.Candidate{Kind: rendezvous.Supernode, Addr: tv.sock.LocalAddr(), Peer: tv.key.ID(),
		Token: rendezvous.NewSupernodeToken(sec, peer, time.Now().Add(time.Minute))}
}

// testPeer is a node that uses volunteers: its own socket and Pool; it
// echoes every stream of the sessions peers open to it.
type testPeer struct {
	key  *identity.Key
	pool *Pool
	lost chan *stream.Session
}

func newPeer(t *testing.T, name string) *testPeer { return newPeerOn(t, name, "127.0.0.1") }

// newPeerOn is newPeer on loopback address ip.
func newPeerOn(t *testing.T, name, ip string) *testPeer {
	t.Helper()
	p := &testPeer{key: mustKey(t), lost: make(chan *stream.Session, 4)}
	s := listenSockOn(t, ip)
	var wg sync.WaitGroup
	pool, err := NewPool(PoolConfig{
		Key: p.key, Socket: s.Transport(), Logger: testLogger(t).With("side", name),
		OnSession: func(sess *stream.Session) { wg.Go(func() { echoSession(sess) }) },
		OnLost: func(_ identity.PeerID, sess *stream.Session) {
			select {
			case p.lost <- sess:
			default:
			}
		},
	})
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	p.pool = pool
	t.Cleanup(func() {
		pool.Close()
		wg.Wait()
		s.Close()
	})
	return p
}

// echoSession copies back every stream of sess until it ends.
func echoSession(sess *stream.Session) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := sess.AcceptStream(context.Background())
		if err != nil {
			return
		}
		wg.Go(func() {
			defer st.Close()
			io.Copy(st, st)
			st.CloseWrite()
		})
	}
}

// roundTrip sends size random bytes on st and checks the echo.
func roundTrip(st *stream.Stream, size int) error {
	data := make([]byte, size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		if err == nil {
			err = st.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, st)
	if err != nil {
		return fmt.Errorf("reading echo after %d bytes: %w", n, err)
	}
	if err := <-werr; err != nil {
		return err
	}
	want := sha256.Sum256(data)
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("echo: %d bytes, want %d, intact=%v", n, size, bytes.Equal(h.Sum(nil), want[:]))
	}
	return nil
}

// TestForwardThroughVolunteer: two peers' pools link to a volunteer on
// loopback; one dials the other through it; 1 MiB comes back intact; the
// volunteer closes and the session fails with ErrVolunteerGone on both
// sides, and the volunteer is skipped afterwards.
func TestForwardThroughVolunteer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	tv := startVolunteer(t, Config{Enable: true})
	sec := secret(7)
	tv.vol.Verdict(admitted(serverAddr(t, 4900), sec))
	a, b := newPeer(t, "a"), newPeer(t, "b")

	// The listening side links to the volunteer of its introduction.
	if err := b.pool.Link(ctx, tv.candFor(b.key.ID(), sec), a.key.ID()); err != nil {
		t.Fatalf("b links to the volunteer: %v", err)
	}
	att := &rung.Attempt{Key: a.key, Peer: b.key.ID(), Logger: testLogger(t)}
	sess, err := a.pool.dial(ctx, tv.candFor(a.key.ID(), sec), att)
	if err != nil {
		t.Fatalf("a dials b through the volunteer: %v", err)
	}
	if sess.RemotePeer() != b.key.ID() {
		t.Fatalf("session with %s, want b", sess.RemotePeer().Short())
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(st, 1<<20); err != nil {
		t.Fatalf("1 MiB through the volunteer: %v", err)
	}

	// The volunteer forwarded it, for both peers, as one pair.
	vs := tv.vol.Status(serverAddr(t, 1))
	if vs.Sessions != 1 || len(vs.Peers) != 2 || vs.Bytes < 2<<20 {
		t.Errorf("volunteer status: %d sessions, %d peers, %d bytes; want 1, 2, >= 2 MiB", vs.Sessions, len(vs.Peers), vs.Bytes)
	}
	for _, p := range []*testPeer{a, b} {
		if u := p.pool.Using(); len(u) != 1 || u[0] != tv.key.ID() {
			t.Errorf("pool uses %v, want the volunteer", u)
		}
	}

	// An open stream when the volunteer goes away.
	open, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	if _, err := io.ReadFull(open, one); err != nil {
		t.Fatal(err)
	}
	tv.stop()

	rerr := make(chan error, 1)
	go func() {
		_, err := open.Read(one)
		rerr <- err
	}()
	select {
	case err := <-rerr:
		if !errors.Is(err, ErrVolunteerGone) {
			t.Errorf("read on a stream through the gone volunteer = %v, want ErrVolunteerGone", err)
		}
	case <-ctx.Done():
		t.Fatal("stream read still blocked after the volunteer closed")
	}
	for name, p := range map[string]*testPeer{"a": a, "b": b} {
		select {
		case s := <-p.lost:
			if s.RemotePeer() != map[string]identity.PeerID{"a": b.key.ID(), "b": a.key.ID()}[name] {
				t.Errorf("%s: OnLost for a session with %s", name, s.RemotePeer().Short())
			}
		case <-ctx.Done():
			t.Fatalf("%s: OnLost not called after the volunteer closed", name)
		}
		if u := p.pool.Using(); len(u) != 0 {
			t.Errorf("%s: pool still uses %v", name, u)
		}
	}
	select {
	case <-sess.Done():
	case <-ctx.Done():
		t.Fatal("session still open after the volunteer closed")
	}
	if _, err := sess.OpenStream(ctx); !errors.Is(err, ErrVolunteerGone) {
		t.Errorf("OpenStream on the lost session = %v, want ErrVolunteerGone", err)
	}
	// The vanished volunteer is skipped at once for a while.
	start := time.Now()
	if err := a.pool.Link(ctx, tv.candFor(a.key.ID(), sec), b.key.ID()); !errors.Is(err, ErrVolunteerGone) {
		t.Errorf("Link to the gone volunteer = %v, want ErrVolunteerGone", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Link to the gone volunteer took %v, want at once", d)
	}
}

// TestLinkRefused: a volunteer refuses a peer whose token is not its
// servers' (or not on its allow-list); the pool reports the relay's
// named error, and does not take the volunteer for gone.
func TestLinkRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	tv := startVolunteer(t, Config{Enable: true})
	tv.vol.Verdict(admitted(serverAddr(t, 4900), secret(1)))
	a := newPeer(t, "a")
	other := mustKey(t).ID() // the peer of the introduction
	if err := a.pool.Link(ctx, tv.candFor(a.key.ID(), secret(2)), other); !errors.Is(err, relay.ErrBadToken) {
		t.Errorf("Link with a forged token = %v, want relay.ErrBadToken", err)
	}
	if err := a.pool.Link(ctx, tv.candFor(a.key.ID(), secret(1)), other); err != nil {
		t.Errorf("Link with a valid token after a refusal = %v", err)
	}

	allow := startVolunteer(t, Config{Enable: true, Allow: []identity.PeerID{mustKey(t).ID()}})
	b := newPeer(t, "b")
	if err := b.pool.Link(ctx, allow.candFor(b.key.ID(), secret(1)), a.key.ID()); !errors.Is(err, relay.ErrBadToken) {
		t.Errorf("Link of a peer not on the allow-list = %v, want relay.ErrBadToken (the wire code of ErrNotAllowed)", err)
	}
	// Not a supernode candidate at all.
	if err := b.pool.Link(ctx, rendezvous.Candidate{Kind: rendezvous.Reflexive, Addr: allow.sock.LocalAddr()}, a.key.ID()); !errors.Is(err, ErrNoVolunteer) {
		t.Errorf("Link to a reflexive candidate = %v, want ErrNoVolunteer", err)
	}
}

// TestVolunteerLimits: Config.MaxSessions n makes the volunteer's relay
// take 4n+4 linked peers and n pairs (2n relay sessions); beyond them a
// peer is refused at once with ErrVolunteerFull (wrapping
// relay.ErrRelayFull), so its race moves on.
func TestVolunteerLimits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	const n = 1
	tv := startVolunteer(t, Config{Enable: true, MaxSessions: n})
	sec := secret(3)
	tv.vol.Verdict(admitted(serverAddr(t, 4900), sec))
	peers := make([]*testPeer, 4*n+5)
	for i := range peers {
		// Each from an address of its own: one address may hold only
		// half the links (TestVolunteerLinksPerSource).
		peers[i] = newPeerOn(t, fmt.Sprintf("p%d", i), fmt.Sprintf("127.0.0.%d", 10+i))
	}
	for i, p := range peers[:4*n+4] {
		// Introduced in pairs: 0 and 1, 2 and 3, ...
		if err := p.pool.Link(ctx, tv.candFor(p.key.ID(), sec), peers[i^1].key.ID()); err != nil {
			t.Fatalf("peer %d of %d links: %v", i+1, 4*n+4, err)
		}
	}
	extra := peers[4*n+4]
	if err := extra.pool.Link(ctx, tv.candFor(extra.key.ID(), sec), peers[0].key.ID()); !errors.Is(err, ErrVolunteerFull) || !errors.Is(err, relay.ErrRelayFull) {
		t.Errorf("peer %d links = %v, want ErrVolunteerFull and relay.ErrRelayFull", 4*n+5, err)
	}

	// n pairs are served; the next pair is refused, at once.
	a, b, c, d := peers[0], peers[1], peers[2], peers[3]
	sess, err := a.pool.dial(ctx, tv.candFor(a.key.ID(), sec), &rung.Attempt{Key: a.key, Peer: b.key.ID()})
	if err != nil {
		t.Fatalf("first pair: %v", err)
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(st, 64<<10); err != nil {
		t.Fatalf("first pair: %v", err)
	}
	start := time.Now()
	sess2, err := c.pool.dial(ctx, tv.candFor(c.key.ID(), sec), &rung.Attempt{Key: c.key, Peer: d.key.ID()})
	if err == nil {
		sess2.CloseWithError(0, "")
		t.Fatal("second pair served beyond MaxSessions 1")
	}
	if !errors.Is(err, ErrVolunteerFull) || !errors.Is(err, relay.ErrRelayFull) {
		t.Errorf("second pair = %v, want ErrVolunteerFull and relay.ErrRelayFull", err)
	}
	if ctx.Err() != nil {
		t.Errorf("second pair refused only when the test's context ended (%v)", time.Since(start))
	}
	if vs := tv.vol.Status(rendezvous.ServerAddr{}); vs.Sessions != n {
		t.Errorf("volunteer status: %d sessions, want %d", vs.Sessions, n)
	}
}

// TestVolunteerConsent: a volunteer forwards to a linked peer only from
// the peers it was introduced to (Pool.Link's peer). A third peer holding
// a valid token for the volunteer, as any peer introduced to anyone can,
// is refused with relay.ErrNotAllowed and b gets no session from it; the
// introduced peer gets through.
func TestVolunteerConsent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	tv := startVolunteer(t, Config{Enable: true})
	sec := secret(5)
	tv.vol.Verdict(admitted(serverAddr(t, 4900), sec))
	a, b, c := newPeer(t, "a"), newPeer(t, "b"), newPeer(t, "c")
	if err := b.pool.Link(ctx, tv.candFor(b.key.ID(), sec), a.key.ID()); err != nil {
		t.Fatalf("b links to the volunteer: %v", err)
	}
	// b asked for consent before its Link returned, so c's packets never
	// reach b: c's dial ends at its handshake timeout (a NOTICE
	// not_allowed is not final: the peer may allow c a moment later, as
	// a listener answering an introduction does), with ErrNotAllowed.
	sess, err := c.pool.dial(ctx, tv.candFor(c.key.ID(), sec), &rung.Attempt{Key: c.key, Peer: b.key.ID(),
		Session: stream.Config{HandshakeTimeout: 2 * time.Second}, Logger: testLogger(t)})
	if err == nil {
		sess.CloseWithError(0, "")
		t.Fatal("a peer b was not introduced to reached it through the volunteer")
	}
	if !errors.Is(err, relay.ErrNotAllowed) {
		t.Errorf("c dials b = %v, want relay.ErrNotAllowed", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("c's dial was refused only when the test's context ended")
	}
	sess, err = a.pool.dial(ctx, tv.candFor(a.key.ID(), sec), &rung.Attempt{Key: a.key, Peer: b.key.ID(), Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("a, introduced to b, dials b: %v", err)
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(st, 64<<10); err != nil {
		t.Fatalf("a ↔ b through the volunteer: %v", err)
	}
	if got := tv.vol.Relay().Metrics().Drops["not_allowed"]; got == 0 {
		t.Error("the volunteer counted no not_allowed drop for c's packets")
	}
}

// TestVolunteerFairness: one source IP cannot take a volunteer's whole
// session table. With MaxSessions 4 (8 relay sessions), colluding peers
// from one address (each allowing the others) get 2 pairs (4 sessions,
// MaxSessionsPerIP) and their third pair is refused at once with
// ErrVolunteerFull; a pair from other addresses is still served. One peer
// gets at most 2 destinations (MaxSessionsPerPeer).
func TestVolunteerFairness(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tv := startVolunteer(t, Config{Enable: true, MaxSessions: 4})
	sec := secret(9)
	tv.vol.Verdict(admitted(serverAddr(t, 4900), sec))
	hostile := make([]*testPeer, 6)
	for i := range hostile {
		hostile[i] = newPeerOn(t, fmt.Sprintf("h%d", i), "127.0.0.2")
	}
	// Each hostile peer allows its partner (pairs 0-1, 2-3, 4-5).
	for i, h := range hostile {
		if err := h.pool.Link(ctx, tv.candFor(h.key.ID(), sec), hostile[i^1].key.ID()); err != nil {
			t.Fatalf("hostile peer %d links: %v", i, err)
		}
	}
	pair := func(a, b *testPeer) error {
		sess, err := a.pool.dial(ctx, tv.candFor(a.key.ID(), sec), &rung.Attempt{Key: a.key, Peer: b.key.ID(), Logger: testLogger(t)})
		if err != nil {
			return err
		}
		st, err := sess.OpenStream(ctx)
		if err != nil {
			return err
		}
		return roundTrip(st, 16<<10) // both directions: two relay sessions
	}
	for i := 0; i < 4; i += 2 {
		if err := pair(hostile[i], hostile[i+1]); err != nil {
			t.Fatalf("hostile pair %d: %v", i/2+1, err)
		}
	}
	start := time.Now()
	if err := pair(hostile[4], hostile[5]); !errors.Is(err, ErrVolunteerFull) {
		t.Fatalf("third pair from one address = %v, want ErrVolunteerFull", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("third pair refused after %v, want at once", d)
	}
	if got := tv.vol.Relay().Metrics().Drops["ip_sessions"]; got == 0 {
		t.Error("no ip_sessions drop counted for the third pair")
	}
	a, b := newPeerOn(t, "a", "127.0.0.3"), newPeerOn(t, "b", "127.0.0.4")
	if err := b.pool.Link(ctx, tv.candFor(b.key.ID(), sec), a.key.ID()); err != nil {
		t.Fatal(err)
	}
	if err := pair(a, b); err != nil {
		t.Fatalf("an honest pair beside the hostile source: %v", err)
	}
}
