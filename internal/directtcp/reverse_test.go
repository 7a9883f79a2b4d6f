package directtcp

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/stream"
)

// TestReversal: when UDP looks blocked, a listener that cannot be reached
// over TCP connects back to the dialler's TCP listener on introduction,
// and the dialler's Connect takes that session (the listener's node gets
// its side). A reversed session the dial did not take is closed when the
// dial's race is over; with UDP on both sides there is no reversal.
func TestReversal(t *testing.T) {
	dk, lk := mustKey(t), mustKey(t)
	dialler, _ := startRung(t, "127.0.0.1:0", dk, Limits{}, "127.0.0.1/8")
	listener, lgot := startRung(t, "127.0.0.1:0", lk, Limits{}, "127.0.0.1/8")
	offer := candidate.PeerInfo{Peer: dk.ID(), Candidates: dialler.Candidates()} // no reflexive: no UDP
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	release := dialler.Expect(lk.ID())
	a := attempt(t, dk, lk.ID()) // the listener advertised nothing reachable
	a.Local = offer
	if _, ok := dialler.Plan(a, 0); !ok {
		t.Fatal("a dial expecting a reversal: not planned")
	}
	listener.Introduced(offer)
	sess, err := dialler.Connect(ctx, a)
	release()
	if err != nil {
		t.Fatalf("reversal: %v", err)
	}
	defer sess.Abort()
	if sess.RemotePeer() != lk.ID() || sess.Transport() != stream.TransportTCP || sess.Strategy() != Name {
		t.Errorf("session with %v over %s, strategy %q", sess.RemotePeer(), sess.Transport(), sess.Strategy())
	}
	waitFor(t, "the listener's side", func() bool { return len(lgot.all()) == 1 })
	// The dialler opens a stream on it; the listener's node echoes.
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("hello"))
	st.CloseWrite()
	if back, err := io.ReadAll(st); err != nil || string(back) != "hello" {
		t.Errorf("echo over the reversed session: %q, %v", back, err)
	}

	// The race took another rung: the reversed session is closed.
	release = dialler.Expect(lk.ID())
	listener.Introduced(offer)
	waitFor(t, "a second reversal", func() bool { return len(lgot.all()) == 2 })
	release()
	second := lgot.all()[1]
	select {
	case <-second.Done():
	case <-time.After(2 * time.Second):
		t.Error("a reversed session the dial did not take is still open")
	}

	// UDP on both sides: no reversal; a dial with nothing to dial is
	// ErrNoAddress.
	withUDP := offer
	withUDP.Candidates = append(append([]candidate.Candidate(nil), offer.Candidates...),
		candidate.Candidate{Addr: netip.MustParseAddrPort("198.51.100.1:4000"), Kind: candidate.Reflexive})
	listener.h.Observed = func() netip.AddrPort { return netip.MustParseAddrPort("198.51.100.2:4000") }
	dialler.h.Observed = listener.h.Observed
	release = dialler.Expect(lk.ID())
	defer release()
	listener.Introduced(withUDP)
	b := attempt(t, dk, lk.ID(), candidate.Candidate{Addr: netip.MustParseAddrPort("198.51.100.2:4000"), Kind: candidate.Reflexive})
	b.Local = withUDP
	if _, ok := dialler.Plan(b, 0); ok {
		t.Error("UDP on both sides, no TCP address: planned")
	}
	if _, err := dialler.Connect(ctx, b); !errors.Is(err, ErrNoAddress) {
		t.Errorf("UDP on both sides: %v, want ErrNoAddress", err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(lgot.all()); n != 2 {
		t.Errorf("the listener reversed with UDP on both sides (%d sessions)", n)
	}
}
