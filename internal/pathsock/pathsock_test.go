package pathsock

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
)

// memPath forwards packets in memory to the other Conn, as a relay would,
// arriving there from the sender's virtual address; drop counts packets it
// throws away (every dropEvery-th, when set).
type memPath struct {
	to        *Conn
	as        netip.AddrPort
	n, drop   atomic.Int64
	nonQUIC   atomic.Int64 // packets whose first byte is below 0x40
	dropEvery int64
}

func (m *memPath) Send(b []byte) error {
	if len(b) > 0 && b[0] < 0x40 {
		m.nonQUIC.Add(1)
	}
	if k := m.n.Add(1); m.dropEvery > 0 && k%m.dropEvery == 0 {
		m.drop.Add(1)
		return nil
	}
	return m.to.Inject(m.as, b)
}

// pair is two Conns on loopback, each knowing the other as a virtual
// address (aPeer: how a knows b; bPeer: how b knows a).
type pair struct {
	a, b         *Conn
	aReal, bReal netip.AddrPort
	aPeer, bPeer netip.AddrPort
}

func newPair(t testing.TB) *pair {
	t.Helper()
	p := &pair{}
	var err error
	p.a, p.aReal = listen(t)
	p.b, p.bReal = listen(t)
	if p.aPeer, err = p.a.AddPeer(); err != nil {
		t.Fatal(err)
	}
	if p.bPeer, err = p.b.AddPeer(); err != nil {
		t.Fatal(err)
	}
	return p
}

func listen(t testing.TB) (*Conn, netip.AddrPort) {
	t.Helper()
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c := New(u)
	t.Cleanup(func() { c.Close() })
	return c, u.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (p *pair) direct(t testing.TB) {
	t.Helper()
	if err := p.a.SetDirect(p.aPeer, p.bReal); err != nil {
		t.Fatal(err)
	}
	if err := p.b.SetDirect(p.bPeer, p.aReal); err != nil {
		t.Fatal(err)
	}
}

func (p *pair) forwarded(t testing.TB, dropEvery int64) (ab, ba *memPath) {
	t.Helper()
	ab = &memPath{to: p.b, as: p.bPeer, dropEvery: dropEvery}
	ba = &memPath{to: p.a, as: p.aPeer, dropEvery: dropEvery}
	if err := p.a.SetPath(p.aPeer, ab); err != nil {
		t.Fatal(err)
	}
	if err := p.b.SetPath(p.bPeer, ba); err != nil {
		t.Fatal(err)
	}
	return ab, ba
}

// session dials from a's transport to b's over the virtual addresses and
// returns both ends.
func session(t testing.TB, ta, tb *quic.Transport, to netip.AddrPort) (client, server *quic.Conn) {
	t.Helper()
	ck, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	sk, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	stls, err := identity.ServerTLSConfig(sk, "test")
	if err != nil {
		t.Fatal(err)
	}
	ctls, _, err := identity.ClientTLSConfig(ck, sk.ID(), "test")
	if err != nil {
		t.Fatal(err)
	}
	// A long idle timeout: under -race on a loaded machine, loss
	// recovery's backoff after a move can leave a connection quiet for
	// seconds; the tests are about moving, not about liveness.
	qcfg := &quic.Config{MaxIdleTimeout: 30 * time.Second, KeepAlivePeriod: time.Second,
		InitialStreamReceiveWindow: 8 << 20, MaxStreamReceiveWindow: 16 << 20,
		InitialConnectionReceiveWindow: 12 << 20, MaxConnectionReceiveWindow: 24 << 20}
	ln, err := tb.Listen(stls, qcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan *quic.Conn, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			t.Error(err)
		}
		done <- c
	}()
	client, err = ta.Dial(ctx, net.UDPAddrFromAddrPort(to), ctls, qcfg)
	if err != nil {
		t.Fatal(err)
	}
	server = <-done
	if server == nil {
		t.FailNow()
	}
	t.Cleanup(func() { client.CloseWithError(0, ""); server.CloseWithError(0, "") })
	return client, server
}

// TestVirtualAddressesOnBothSides: a session over a direct path sees
// only virtual addresses, on both sides, and echoes bytes.
func TestVirtualAddressesOnBothSides(t *testing.T) {
	p := newPair(t)
	p.direct(t)
	ta, tb := &quic.Transport{Conn: p.a}, &quic.Transport{Conn: p.b}
	client, server := session(t, ta, tb, p.aPeer)
	if got := client.RemoteAddr().(*net.UDPAddr).AddrPort(); got != p.aPeer {
		t.Fatalf("client sees %v, want the virtual %v", got, p.aPeer)
	}
	if got := server.RemoteAddr().(*net.UDPAddr).AddrPort(); got != p.bPeer {
		t.Fatalf("server sees %v, want the virtual %v", got, p.bPeer)
	}
	echo(t, client, server, []byte("hello over a virtual address"))
}

func echo(t *testing.T, client, server *quic.Conn, msg []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() {
		st, err := server.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(st, st)
		st.Close()
	}()
	st, err := client.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := st.Write(msg); err != nil {
		t.Fatal(err)
	}
	st.Close()
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echoed %q, want %q", got, msg)
	}
}

// TestStreamSurvivesPathMoves: one stream of 24 MiB starts on a forwarded
// path that loses 1 packet in 50, moves to the direct path, back to the
// forwarded one and to direct again while it runs; every byte arrives in
// order (same SHA-256) and the stream is never reset.
func TestStreamSurvivesPathMoves(t *testing.T) {
	p := newPair(t)
	ab, ba := p.forwarded(t, 50)
	ta, tb := &quic.Transport{Conn: p.a}, &quic.Transport{Conn: p.b}
	client, server := session(t, ta, tb, p.aPeer)

	const size = 24 << 20
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(data)
	want := sha256.Sum256(data)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	got := make(chan [32]byte, 1)
	var received atomic.Int64
	go func() {
		st, err := server.AcceptStream(ctx)
		if err != nil {
			t.Error(err)
			close(got)
			return
		}
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(h, countWriter{&received}), st); err != nil {
			t.Errorf("receiving: %v", err)
		}
		var s [32]byte
		copy(s[:], h.Sum(nil))
		got <- s
	}()
	st, err := client.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	writeErr := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		if err == nil {
			err = st.Close()
		}
		writeErr <- err
	}()
	moves := []func(){
		func() { p.direct(t) },
		func() { p.forwarded(t, 50) },
		func() { p.direct(t) },
	}
	for i, move := range moves {
		waitFor(t, ctx, func() bool { return received.Load() >= int64(i+1)*size/5 })
		move()
		t.Logf("moved at %d MiB", received.Load()>>20)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	select {
	case s := <-got:
		if s != want {
			t.Fatalf("SHA-256 differs after %d bytes", received.Load())
		}
	case <-ctx.Done():
		t.Fatalf("stream did not finish: %d of %d bytes", received.Load(), size)
	}
	if ab.n.Load() == 0 || ba.n.Load() == 0 || ab.drop.Load() == 0 {
		t.Fatalf("the forwarded path carried %d/%d packets (%d dropped): the test did not test it", ab.n.Load(), ba.n.Load(), ab.drop.Load())
	}
}

type countWriter struct{ n *atomic.Int64 }

func (w countWriter) Write(b []byte) (int, error) { w.n.Add(int64(len(b))); return len(b), nil }

func waitFor(t *testing.T, ctx context.Context, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("timed out")
		case <-time.After(time.Millisecond):
		}
	}
}

// TestErrors: unknown virtual addresses and peers without a path are
// named errors; a removed peer is unknown.
func TestErrors(t *testing.T) {
	p := newPair(t)
	if _, _, err := p.a.WriteMsgUDP([]byte{0x40}, nil, net.UDPAddrFromAddrPort(p.aPeer)); !errors.Is(err, ErrNoPath) {
		t.Fatalf("no path: %v", err)
	}
	p.a.RemovePeer(p.aPeer)
	if _, _, err := p.a.WriteMsgUDP([]byte{0x40}, nil, net.UDPAddrFromAddrPort(p.aPeer)); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("removed: %v", err)
	}
	if err := p.a.SetDirect(p.aPeer, p.bReal); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("SetDirect on a removed peer: %v", err)
	}
	if err := p.a.Inject(p.aPeer, []byte{1}); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("Inject from a removed peer: %v", err)
	}
	if !IsVirtual(p.bPeer.Addr()) || IsVirtual(p.bReal.Addr()) {
		t.Fatal("IsVirtual")
	}
}

// TestRealAddressBelongsToOnePeer: giving a second peer the first's
// direct address takes it from the first.
func TestRealAddressBelongsToOnePeer(t *testing.T) {
	p := newPair(t)
	other, err := p.a.AddPeer()
	if err != nil {
		t.Fatal(err)
	}
	p.a.SetDirect(p.aPeer, p.bReal)
	p.a.SetDirect(other, p.bReal)
	if d, _, _ := p.a.Current(p.aPeer); d.IsValid() {
		t.Fatalf("first peer kept %v", d)
	}
	if d, _, _ := p.a.Current(other); d != p.bReal {
		t.Fatalf("second peer has %v", d)
	}
}

// TestFloodsAreBounded: a flood of forwarded packets that nobody reads
// holds at most injectQueue packets and never blocks the sender; a flood
// of peers stops at MaxPeers with ErrFull.
func TestFloodsAreBounded(t *testing.T) {
	p := newPair(t)
	pkt := make([]byte, 1200)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20 * injectQueue {
			if err := p.a.Inject(p.aPeer, pkt); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Inject blocked")
	}
	if n := len(p.a.inj); n != injectQueue {
		t.Fatalf("queue holds %d packets, want the bound %d", n, injectQueue)
	}
	for {
		_, err := p.b.AddPeer()
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(p.b.byVirt); n != MaxPeers {
		t.Fatalf("%d peers, want MaxPeers %d", n, MaxPeers)
	}
	p.b.RemovePeer(p.bPeer)
	if _, err := p.b.AddPeer(); err != nil {
		t.Fatalf("after a removal: %v", err)
	}
}

// TestReadDeadlineStillWorks: a wake-up by Inject does not swallow the
// caller's read deadline, and Close unblocks a reader.
func TestReadDeadlineStillWorks(t *testing.T) {
	t.Run("plain", func(t *testing.T) { testReadDeadline(t, false) })
	t.Run("gro", func(t *testing.T) { testReadDeadline(t, true) })
}

func testReadDeadline(t *testing.T, gro bool) {
	p := newPair(t)
	if gro && !p.a.EnableGRO() {
		t.Skip("no UDP GRO here")
	}
	buf := make([]byte, 1500)
	p.a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, _, err := p.a.ReadFrom(buf); !isTimeout(err) {
		t.Fatalf("want a timeout, got %v", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("deadline ignored: %v", el)
	}
	p.a.SetReadDeadline(time.Time{})
	go func() {
		time.Sleep(20 * time.Millisecond)
		p.a.Inject(p.aPeer, []byte("forwarded"))
	}()
	n, from, err := p.a.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "forwarded" || from.(*net.UDPAddr).AddrPort() != p.aPeer {
		t.Fatalf("injected read: %q from %v, %v", buf[:n], from, err)
	}
	errc := make(chan error, 1)
	go func() { _, _, err := p.a.ReadFrom(buf); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	p.a.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock the reader")
	}
}
