package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
)

// idleConn is a server's carrier that can go idle (idler) and says which
// TCP connection to park on (parkConn), as rendezvous's WebSocket end;
// it counts its Idle calls.
type idleConn struct {
	net.Conn
	idles *atomic.Int64
}

func (c idleConn) ParkConn() net.Conn { return c.Conn }
func (c idleConn) Idle()              { c.idles.Add(1) }

// parkedState is what a link holds while parked: whether it is parked,
// and whether its in and out directions hold an AEAD (read under the
// locks that order them with the link's reads and writes).
func (s *Server) parkedState(p *peerLink) (parked, inAEAD, outAEAD bool) {
	c := p.tls
	s.watch.mu.Lock()
	parked = c.parked
	if parked && c.in != nil {
		inAEAD = c.in.aead != nil // no read loop runs while parked
	}
	s.watch.mu.Unlock()
	c.wmu.Lock()
	outAEAD = c.out != nil && c.out.aead != nil
	c.wmu.Unlock()
	return parked, inAEAD, outAEAD
}

// TestTLSParkIdles (issue 14): a parked link lets go of its records'
// AEADs and calls its carrier's Idle, once per park; a packet forwarded
// to it while parked is written without waking it (its out AEAD rebuilt,
// its in still dropped), and both links carry packets intact both ways
// after every wake-up, across many rekeys (one every 3 records); no
// goroutine outlives the server. Over records and over TLS records (a
// node without ALPNRecord: the carrier is under the tls.Conn).
func TestTLSParkIdles(t *testing.T) {
	setRekey(t, 3)
	for _, records := range []bool{true, false} {
		name := "records"
		if !records {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after the server's cleanup
			var idles atomic.Int64
			srv, sa := recordServer(t, func(c net.Conn) net.Conn { return idleConn{c, &idles} })
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			ka, kb := genKey(t), genKey(t)
			ina, inb := make(chan []byte, 4), make(chan []byte, 4)
			la, err := TLSDialer{}.DialLink(ctx, LinkParams{Server: sa, Key: ka, Handler: chanHandler(ina), Logger: dataLogger(t).With("side", "a"), noRecords: !records})
			if err != nil {
				t.Fatal(err)
			}
			defer la.Close()
			lb, err := TLSDialer{}.DialLink(ctx, LinkParams{Server: sa, Key: kb, Handler: chanHandler(inb), Logger: dataLogger(t).With("side", "b"), noRecords: !records})
			if err != nil {
				t.Fatal(err)
			}
			defer lb.Close()
			var pa, pb *peerLink
			waitUntil(t, func() bool { pa, pb = srv.link(ka.ID()), srv.link(kb.ID()); return pa != nil && pb != nil })
			if (pa.tls.in != nil) != records || (pb.tls.in != nil) != records {
				t.Fatalf("records at the relay: %v, %v; want %v", pa.tls.in != nil, pb.tls.in != nil, records)
			}
			send := func(round int, from Link, toID identity.PeerID, in chan []byte) {
				t.Helper()
				pkt := make([]byte, 1000+round)
				rand.Read(pkt)
				if err := from.Send(toID, pkt); err != nil {
					t.Fatal(err)
				}
				select {
				case got := <-in:
					if !bytes.Equal(got, pkt) {
						t.Fatalf("round %d: packet changed on the way", round)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("round %d: the packet did not arrive", round)
				}
			}
			const rounds = 6
			for i := range rounds {
				waitUntil(t, func() bool { return srv.Metrics().Parked == 2 })
				for _, p := range []*peerLink{pa, pb} {
					if parked, in, out := srv.parkedState(p); !parked || in || out {
						t.Fatalf("round %d: parked %v, in AEAD kept %v, out AEAD kept %v", i, parked, in, out)
					}
				}
				// a wakes; b, parked, is written to.
				send(i, la, kb.ID(), inb)
				if parked, in, out := srv.parkedState(pb); records && (!parked || in || !out) {
					t.Fatalf("round %d: b after a write: parked %v, in AEAD %v, out AEAD %v; want parked, out rebuilt only", i, parked, in, out)
				}
				// b wakes; a may be parked again or not.
				send(i, lb, ka.ID(), ina)
			}
			waitUntil(t, func() bool { return srv.Metrics().Parked == 2 })
			m := srv.Metrics()
			if n := idles.Load(); n != int64(m.Woken)+2 {
				t.Fatalf("%d Idle calls; want one per park: %d wake-ups + 2 parked", n, m.Woken)
			}
			if m.Woken < 2*rounds {
				t.Fatalf("%d wake-ups in %d rounds, want at least %d", m.Woken, rounds, 2*rounds)
			}
			if records {
				for _, p := range []*peerLink{pa, pb} {
					srv.watch.mu.Lock()
					parked, seq := p.tls.parked, p.tls.in.seq
					srv.watch.mu.Unlock()
					if parked && seq <= 2*3 {
						t.Fatalf("%d records opened: too few for two rekeys", seq)
					}
				}
			}
			t.Logf("%d parks, %d Idle calls", m.Woken+2, idles.Load())
		})
	}
}
