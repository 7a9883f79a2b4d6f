package reach_test

// Robustness at the node level, on loopback: every failure a user meets
// comes back as a named error (errors.Is / errors.As), quickly, and the
// nodes and servers involved keep serving afterwards.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"golang.org/x/net/nettest"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/holepunch"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

var rbLoopback = netip.MustParseAddrPort("127.0.0.1:0")

// rbServer starts a rendezvous server on loopback until the test ends.
func rbServer(t testing.TB) *rendezvous.RunningServer {
	t.Helper()
	rs, err := rendezvous.StartServer(context.Background(),
		rendezvous.ServerConfig{Logger: natlab.TestLogger(t).With("server", "srv")}, rbLoopback)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs
}

// rbNode starts a node on loopback registered with servers until the test
// ends.
func rbNode(t testing.TB, name string, servers ...string) *reach.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := reach.New(ctx, reach.Config{Servers: servers, ListenAddr: rbLoopback,
		Logger: natlab.TestLogger(t).With("n", name)})
	if err != nil {
		t.Fatalf("node %s: %v", name, err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// rbCheckDial dials to (which must run reachlab.Echo) from from and
// checks that 256 KiB come back intact.
func rbCheckDial(t *testing.T, from, to *reach.Node) *stream.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := reachlab.CheckEcho(t, ctx, from, to, 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

func rbKey(t testing.TB) *identity.Key {
	t.Helper()
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// rbSessionsTo counts n's live sessions to peer.
func rbSessionsTo(n *reach.Node, peer identity.PeerID) int {
	k := 0
	for _, s := range n.Sessions() {
		if s.RemotePeer() == peer {
			k++
		}
	}
	return k
}

// impostor is a peer registered at the server under one key (k1) whose
// QUIC listener proves another (k2). It answers introductions and punches
// exactly like a node, so every strategy reaches it.
type impostor struct {
	sock   *sock.Socket
	client *rendezvous.Client
	ln     *stream.Listener
	punch  *holepunch.Manager
}

func startImpostor(t *testing.T, sa rendezvous.ServerAddr, k1, k2 *identity.Key) *impostor {
	t.Helper()
	log := natlab.TestLogger(t).With("n", "impostor")
	s, err := sock.Listen(sock.Config{Addr: rbLoopback, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	im := &impostor{sock: s, punch: holepunch.NewManager(s, log)}
	t.Cleanup(func() {
		if im.client != nil {
			im.client.Close()
		}
		if im.ln != nil {
			im.ln.Close()
		}
		im.punch.Close()
		s.Close()
	})
	if im.ln, err = stream.Listen(s.Transport(), k2, stream.Config{Logger: log}); err != nil {
		t.Fatal(err)
	}
	im.client, err = rendezvous.NewClient(rendezvous.ClientConfig{
		Key: k1, Servers: []rendezvous.ServerAddr{sa}, Transport: s.Transport(), Logger: log,
		Candidates: func() []rendezvous.Candidate {
			return []rendezvous.Candidate{{Addr: s.LocalAddr(), Kind: rendezvous.Host}}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := im.client.Start(ctx); err != nil {
		t.Fatal(err)
	}
	go func() {
		for in := range im.client.Incoming() {
			if err := in.Accept(rendezvous.PeerInfo{}); err != nil {
				continue
			}
			var remotes []netip.AddrPort
			for _, c := range in.Offer.Candidates {
				remotes = append(remotes, c.Addr)
			}
			at, err := im.punch.Start(holepunch.Params{Attempt: in.Offer.Attempt, Key: in.Offer.PunchKey,
				Role: holepunch.RoleListener, Remote: remotes})
			if err == nil {
				time.AfterFunc(5*time.Second, at.Close)
			}
		}
	}()
	return im
}

// TestWrongPeerKey: a peer registered under K1 whose QUIC listener proves
// K2 is refused by every strategy: DialSession fails fast with
// identity.ErrWrongPeer inside a *rung.RaceError (the hole punch
// validates the impostor's address, since it knows the punch key, and must
// give up at once rather than wait for the context), and no session to
// either key is left. The node then still dials an honest peer.
func TestWrongPeerKey(t *testing.T) {
	rs := rbServer(t)
	cs := rs.ConnectString()
	k1, k2 := rbKey(t), rbKey(t)
	startImpostor(t, rs.ServerAddr(), k1, k2)
	a := rbNode(t, "a", cs)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	sess, err := a.DialSession(ctx, k1.ID())
	el := time.Since(start)
	if err == nil {
		sess.Close()
		t.Fatalf("dial to an impostor succeeded (strategy %s)", sess.Strategy())
	}
	t.Logf("after %v: %v", el, err)
	if !errors.Is(err, identity.ErrWrongPeer) {
		t.Errorf("error does not wrap identity.ErrWrongPeer: %v", err)
	}
	var re *rung.RaceError
	if !errors.As(err, &re) {
		t.Errorf("error is not a *rung.RaceError: %v", err)
	} else {
		// The strategies that reached the peer's address must say it
		// proved the wrong key; rungs that had nothing to try (no mapped
		// address, no relay) fail for their own reason.
		for _, se := range re.Errs {
			if (se.Strategy == "direct" || se.Strategy == "holepunch") && !errors.Is(se, identity.ErrWrongPeer) {
				t.Errorf("strategy %s failed for another reason: %v", se.Strategy, se.Err)
			}
		}
	}
	var wpe *identity.WrongPeerError
	if errors.As(err, &wpe) && (wpe.Want != k1.ID() || wpe.Got != k2.ID()) {
		t.Errorf("WrongPeerError want %s got %s; expected want %s got %s", wpe.Want.Short(), wpe.Got.Short(), k1.ID().Short(), k2.ID().Short())
	}
	if ctx.Err() != nil || el > 3*time.Second {
		t.Errorf("wrong peer reported after %v, want a fast failure", el)
	}
	if n := rbSessionsTo(a, k1.ID()) + rbSessionsTo(a, k2.ID()); n != 0 {
		t.Errorf("%d sessions to the impostor remain", n)
	}

	b := rbNode(t, "b", cs)
	reachlab.Echo(t, b)
	rbCheckDial(t, a, b)
}

// TestUnknownAndOfflinePeer: the server's verdicts come back at once as
// rendezvous.ErrUnknownPeer (never registered) and rendezvous.ErrPeerOffline
// (registered, then gone), inside a *rendezvous.ConnectError; the dialler
// keeps working.
func TestUnknownAndOfflinePeer(t *testing.T) {
	rs := rbServer(t)
	cs := rs.ConnectString()
	a := rbNode(t, "a", cs)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	start := time.Now()
	_, err := a.DialSession(ctx, rbKey(t).ID())
	el := time.Since(start)
	t.Logf("unknown peer after %v: %v", el, err)
	if !errors.Is(err, rendezvous.ErrUnknownPeer) {
		t.Errorf("dial unknown peer: %v, want rendezvous.ErrUnknownPeer", err)
	}
	var ce *rendezvous.ConnectError
	if !errors.As(err, &ce) {
		t.Errorf("error is not a *rendezvous.ConnectError: %v", err)
	}
	if el > 300*time.Millisecond {
		t.Errorf("unknown peer reported after %v, want at once", el)
	}
	// The same through Dial with the printable ID.
	if _, err := a.Dial(ctx, rbKey(t).ID()); !errors.Is(err, rendezvous.ErrUnknownPeer) {
		t.Errorf("Dial unknown peer: %v, want rendezvous.ErrUnknownPeer", err)
	}

	gone := rbNode(t, "gone", cs)
	goneID := gone.ID()
	gone.Close()
	deadline := time.Now().Add(3 * time.Second)
	for rs.Stats().Peers > 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	start = time.Now()
	_, err = a.DialSession(ctx, goneID)
	el = time.Since(start)
	t.Logf("offline peer after %v: %v", el, err)
	if !errors.Is(err, rendezvous.ErrPeerOffline) {
		t.Errorf("dial offline peer: %v, want rendezvous.ErrPeerOffline", err)
	}
	if el > 300*time.Millisecond {
		t.Errorf("offline peer reported after %v, want at once", el)
	}

	b := rbNode(t, "b", cs)
	reachlab.Echo(t, b)
	rbCheckDial(t, a, b)
}

// TestBadInput: a dead server, malformed connect strings and malformed peer
// IDs give their named errors, the dead server within a few seconds.
func TestBadInput(t *testing.T) {
	// A port nothing listens on (UDP or TCP).
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	dead := rendezvous.ServerAddr{ID: rbKey(t).ID(), Host: "127.0.0.1", Port: uint16(port)}.String()

	t.Run("dead server", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		start := time.Now()
		n, err := reach.New(ctx, reach.Config{Servers: []string{dead}, ListenAddr: rbLoopback, Logger: natlab.TestLogger(t)})
		el := time.Since(start)
		if err == nil {
			n.Close()
			t.Fatal("New succeeded with a dead server")
		}
		t.Logf("after %v: %v", el, err)
		if !errors.Is(err, rendezvous.ErrNoServer) {
			t.Errorf("error does not wrap rendezvous.ErrNoServer: %v", err)
		}
		var nse *rendezvous.NoServerError
		if !errors.As(err, &nse) || len(nse.Servers) != 1 {
			t.Errorf("want a *rendezvous.NoServerError naming the server: %v", err)
		}
		if el > 4*time.Second {
			t.Errorf("dead server reported after %v, want within a few seconds", el)
		}
	})

	t.Run("connect strings", func(t *testing.T) {
		id := rbKey(t).ID().String()
		for _, tc := range []struct {
			cs   string
			want []error
		}{
			{"", []error{rendezvous.ErrBadServerAddr}},
			{"127.0.0.1:4950", []error{rendezvous.ErrBadServerAddr}},
			{"http://" + id + "@127.0.0.1:4950", []error{rendezvous.ErrBadServerAddr}},
			{"reach://127.0.0.1:4950", []error{rendezvous.ErrBadServerAddr}},
			{"reach://" + id + "@127.0.0.1", []error{rendezvous.ErrBadServerAddr}},
			{"reach://" + id + "@127.0.0.1:0", []error{rendezvous.ErrBadServerAddr}},
			{"reach://" + id + "@127.0.0.1:99999", []error{rendezvous.ErrBadServerAddr}},
			{"reach://" + id + "@::1:4950", []error{rendezvous.ErrBadServerAddr}},
			{"reach://" + id[:len(id)-1] + "@127.0.0.1:4950", []error{rendezvous.ErrBadServerAddr, identity.ErrBadPeerID}},
			{"reach://" + rbTypo(id) + "@127.0.0.1:4950", []error{rendezvous.ErrBadServerAddr, identity.ErrBadPeerID}},
		} {
			_, perr := rendezvous.ParseServerAddr(tc.cs)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			start := time.Now()
			n, err := reach.New(ctx, reach.Config{Servers: []string{tc.cs}, ListenAddr: rbLoopback})
			cancel()
			if err == nil {
				n.Close()
				t.Errorf("New(%q) succeeded", tc.cs)
				continue
			}
			if time.Since(start) > 100*time.Millisecond {
				t.Errorf("New(%q) took %v to reject it", tc.cs, time.Since(start))
			}
			for _, w := range tc.want {
				if !errors.Is(perr, w) || !errors.Is(err, w) {
					t.Errorf("%q: ParseServerAddr: %v; New: %v; want both to wrap %v", tc.cs, perr, err, w)
				}
			}
		}
	})

	t.Run("peer IDs", func(t *testing.T) {
		rs := rbServer(t)
		a := rbNode(t, "a", rs.ConnectString())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		id := rbKey(t).ID().String()
		for _, s := range []string{"garbage", "", id[:len(id)-1], id + "a", rbTypo(id), strings.ToUpper(id) + "!"} {
			p, err := reach.ParsePeerID(s)
			if err == nil {
				t.Errorf("ParsePeerID(%q) = %v, want an error", s, p)
				continue
			}
			if !errors.Is(err, identity.ErrBadPeerID) {
				t.Errorf("ParsePeerID(%q): %v, want identity.ErrBadPeerID", s, err)
			}
		}
		// The zero PeerID is no peer: the server knows nobody by it.
		if _, err := a.Dial(ctx, reach.PeerID{}); err == nil {
			t.Error("Dial(zero PeerID) succeeded")
		}
		if _, err := a.Dial(ctx, a.ID()); !errors.Is(err, reach.ErrSelfDial) {
			t.Errorf("Dial(self): %v, want reach.ErrSelfDial", err)
		}
	})
}

// rbTypo changes one character of a peer ID, so only the checksum can
// tell.
func rbTypo(id string) string {
	b := []byte(id)
	i := len(b) / 2
	if b[i] == 'a' {
		b[i] = 'b'
	} else {
		b[i] = 'a'
	}
	return string(b)
}

// TestFailover: two nodes configured with two servers register with the
// first; when it dies both move to the second within a few seconds, and a
// fresh session between them is made through it.
func TestFailover(t *testing.T) {
	rs1, rs2 := rbServer(t), rbServer(t)
	cs1, cs2 := rs1.ConnectString(), rs2.ConnectString()
	a := rbNode(t, "a", cs1, cs2)
	b := rbNode(t, "b", cs1, cs2)
	reachlab.Echo(t, b)
	for _, n := range []*reach.Node{a, b} {
		if n.Server() != cs1 {
			t.Fatalf("node registered with %q, want the first server %s", n.Server(), cs1)
		}
	}
	sess := rbCheckDial(t, a, b)
	sess.Close()

	rs1.Close()
	killed := time.Now()
	reachlab.MustWaitFor(t, 5*time.Second, "both nodes on server 2", func() bool { return a.Server() == cs2 && b.Server() == cs2 })
	t.Logf("both nodes failed over in %v", time.Since(killed))
	reachlab.MustWaitFor(t, 2*time.Second, "old session gone", func() bool { return rbSessionsTo(a, b.ID())+rbSessionsTo(b, a.ID()) == 0 })

	start := time.Now()
	rbCheckDial(t, a, b)
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("fresh dial after failover took %v, want under 2s", el)
	}
	if got := rs2.Stats().Introductions; got != 1 {
		t.Errorf("server 2 made %d introductions, want 1", got)
	}
}

// rbJunk returns every kind of packet a node's socket should shrug off:
// random bytes under every first byte, truncated, garbled and forged punch
// packets, STUN requests and broken STUN, and fake QUIC long-header
// packets (Initial, Handshake, 0-RTT, Retry; real and unknown versions).
func rbJunk() [][]byte {
	rnd := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	var out [][]byte
	for first := range 256 {
		for _, n := range []int{1, 2, 20, 54, 200, 1200, 1500} {
			b := rnd(n)
			b[0] = byte(first)
			out = append(out, b)
		}
	}
	// Punch packets: every truncation of a well-formed one, a flipped bit
	// in each byte, a valid layout under a random key for both types and
	// roles, and overlong ones.
	for n := 1; n <= holepunch.PacketLen+8; n++ {
		b := rnd(n)
		b[0] = holepunch.Magic
		if n > 1 {
			b[1] = holepunch.Version
		}
		out = append(out, b)
	}
	for typ := byte(0); typ <= 3; typ++ {
		for role := byte(0); role <= 3; role++ {
			b := rnd(holepunch.PacketLen)
			b[0], b[1], b[2], b[3] = holepunch.Magic, holepunch.Version, typ, role
			out = append(out, b)
			g := append([]byte(nil), b...)
			g[int(typ*4+role)%holepunch.PacketLen] ^= 0x10
			out = append(out, g)
		}
	}
	// STUN: a genuine binding request, one with a lying length, a
	// truncated one, and a success response nobody asked for.
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	out = append(out, req.Raw)
	lying := append([]byte(nil), req.Raw...)
	binary.BigEndian.PutUint16(lying[2:], 0xfff0)
	out = append(out, lying, req.Raw[:10])
	resp := stun.MustBuild(stun.TransactionID, stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.IPv4(6, 6, 6, 6), Port: 6666}, stun.Fingerprint)
	out = append(out, resp.Raw)
	// QUIC long headers: first byte 0xc0|type<<4, a version, connection
	// IDs, then junk, padded to the 1200 bytes an Initial needs.
	for _, version := range []uint32{1, 0x6b3343cf, 0, 0x1a2a3a4a} {
		for typ := byte(0); typ < 4; typ++ {
			b := []byte{0xc0 | typ<<4}
			b = binary.BigEndian.AppendUint32(b, version)
			b = append(b, 8)
			b = append(b, rnd(8)...)
			b = append(b, 8)
			b = append(b, rnd(8)...)
			if typ == 0 {
				b = append(b, 0) // token length
			}
			b = append(b, 0x44, 0xa0) // length 1184, varint
			b = append(b, rnd(1200-len(b))...)
			out = append(out, b)
		}
	}
	// Short headers with random connection IDs.
	for range 16 {
		b := rnd(100)
		b[0] = 0x40 | b[0]&0x3f
		out = append(out, b)
	}
	return out
}

// rbFlood sends junk to dst from c until stop is closed, at least once
// (only once with a nil stop).
func rbFlood(c *net.UDPConn, dst netip.AddrPort, junk [][]byte, stop <-chan struct{}) (sent int) {
	for {
		for i, p := range junk {
			if _, err := c.WriteToUDPAddrPort(p, dst); err == nil {
				sent++
			}
			if i%64 == 63 {
				time.Sleep(time.Millisecond) // do not just overflow the receive buffer
			}
		}
		if stop == nil {
			return sent
		}
		select {
		case <-stop:
			return sent
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestJunkAtNode: a node whose socket receives every kind of junk, before
// and during a dial, still accepts the dial and moves data intact; the
// junk makes no session.
func TestJunkAtNode(t *testing.T) {
	rs := rbServer(t)
	cs := rs.ConnectString()
	b := rbNode(t, "b", cs)
	reachlab.Echo(t, b)
	a := rbNode(t, "a", cs)
	reachlab.Echo(t, a)

	atk, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(rbLoopback))
	if err != nil {
		t.Fatal(err)
	}
	defer atk.Close()
	junk := rbJunk()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent int
	wg.Go(func() { sent = rbFlood(atk, b.LocalAddr(), junk, stop) })
	time.Sleep(100 * time.Millisecond)
	rbCheckDial(t, a, b)
	close(stop)
	wg.Wait()
	t.Logf("sent %d junk packets (%d kinds)", sent, len(junk))

	// And after the flood, on a session the junk did not precede.
	if n := len(b.Sessions()); n != 1 {
		t.Errorf("b has %d sessions, want 1 (a's)", n)
	}
	for _, s := range b.Sessions() {
		if s.RemotePeer() != a.ID() {
			t.Errorf("b has a session with %s", s.RemotePeer().Short())
		}
	}
	c := rbNode(t, "c", cs)
	rbCheckDial(t, c, b)
	// The dialler side's socket too.
	wg.Go(func() { rbFlood(atk, c.LocalAddr(), junk, nil) })
	wg.Wait()
	rbCheckDial(t, c, a)
}

// TestJunkAtServer: after garbage at the rendezvous server's UDP and TCP
// ports, a node registered before and one registering after are introduced
// and connect.
func TestJunkAtServer(t *testing.T) {
	rs := rbServer(t)
	cs := rs.ConnectString()
	a := rbNode(t, "a", cs)

	atk, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(rbLoopback))
	if err != nil {
		t.Fatal(err)
	}
	defer atk.Close()
	rbFlood(atk, rs.UDPAddr(), rbJunk(), nil)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", rs.TCPAddr().String(), time.Second)
			if err != nil {
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			junk := make([]byte, 1<<(i%16))
			rand.Read(junk)
			if i%4 == 0 {
				junk[0] = 0x16 // a TLS record type, then nonsense
			}
			c.Write(junk)
			if i%2 == 0 {
				c.(*net.TCPConn).CloseWrite()
				var buf [512]byte
				c.Read(buf[:])
			}
		})
	}
	wg.Wait()
	t.Logf("server stats after the flood: %+v", rs.Stats())

	// STUN still answers on the flooded port.
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	var got *stun.Message
	for try := 0; try < 5 && got == nil; try++ {
		atk.WriteToUDPAddrPort(req.Raw, rs.UDPAddr())
		atk.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		buf := make([]byte, 1500)
		for {
			k, _, err := atk.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			m := &stun.Message{Raw: buf[:k]}
			if m.Decode() == nil && m.TransactionID == req.TransactionID {
				got = m
				break
			}
		}
	}
	var xa stun.XORMappedAddress
	if got == nil || xa.GetFrom(got) != nil || xa.Port != atk.LocalAddr().(*net.UDPAddr).Port {
		t.Errorf("no STUN answer with our mapped address after the flood (%v)", got)
	}

	b := rbNode(t, "b", cs)
	reachlab.Echo(t, b)
	reachlab.Echo(t, a)
	rbCheckDial(t, a, b)
	c := rbNode(t, "c", cs)
	rbCheckDial(t, c, a)
}

// TestNodeConn runs nettest's net.Conn conformance suite on streams between
// two nodes introduced by an in-process server, from the opening and the
// accepting side.
func TestNodeConn(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	mp := func(t *testing.T, opener bool) nettest.MakePipe {
		return func() (c1, c2 net.Conn, stop func(), err error) {
			rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{}, rbLoopback)
			if err != nil {
				return nil, nil, nil, err
			}
			var nodes []*reach.Node
			stop = func() {
				if c1 != nil {
					c1.Close()
					c2.Close()
				}
				for _, n := range nodes {
					n.Close()
				}
				rs.Close()
			}
			defer func() {
				if err != nil {
					stop()
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for range 2 {
				n, err := reach.New(ctx, reach.Config{Servers: []string{rs.ConnectString()}, ListenAddr: rbLoopback})
				if err != nil {
					return nil, nil, nil, err
				}
				nodes = append(nodes, n)
			}
			d, err := nodes[0].Dial(ctx, nodes[1].ID())
			if err != nil {
				return nil, nil, nil, err
			}
			acc, err := nodes[1].Accept(ctx)
			if err != nil {
				d.Close()
				return nil, nil, nil, err
			}
			if acc.RemoteAddr().String() != nodes[0].ID().String() {
				t.Errorf("accepted stream from %s, want %s", acc.RemoteAddr(), nodes[0].ID())
			}
			if opener {
				c1, c2 = d, acc
			} else {
				c1, c2 = acc, d
			}
			return c1, c2, stop, nil
		}
	}
	t.Run("opener", func(t *testing.T) { nettest.TestConn(t, mp(t, true)) })
	t.Run("acceptor", func(t *testing.T) { nettest.TestConn(t, mp(t, false)) })
}
