package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	mrand "math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
)

// TestRecordDropRebuild (issue 14): a direction whose AEAD is dropped at
// any record, at a rekey boundary too, seals exactly the bytes it would
// have sealed keeping it (same key, same counters: no counter skipped
// or sealed twice), and an opener that drops its own opens them all.
func TestRecordDropRebuild(t *testing.T) {
	setRekey(t, 5)
	rnd := mrand.New(mrand.NewPCG(7, 8))
	keep, _ := recordPair(t, 11)
	drop, open := recordPair(t, 11)
	var want, got []byte
	var plains [][]byte
	for i := range 60 {
		plain := make([]byte, rnd.IntN(3*maxRecordPlain))
		rand.Read(plain)
		plains = append(plains, plain)
		var err error
		if want, err = keep.seal(want, plain); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 || drop.seq%5 == 0 {
			seq, secret := drop.seq, drop.secret
			drop.drop()
			if drop.aead != nil || drop.seq != seq || drop.secret != secret {
				t.Fatal("drop kept the AEAD or moved the counter or secret")
			}
		}
		if got, err = drop.seal(got, plain); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the records sealed across drops differ from those sealed keeping the AEAD")
	}
	if keep.secret == bytes32(11) || drop.secret != keep.secret {
		t.Fatalf("no common rekey after %d records", keep.seq)
	}
	// Open them record by record, dropping the opener's AEAD now and then.
	var opened []byte
	for wire := got; len(wire) > 0; {
		n, err := recordLen(wire)
		if err != nil {
			t.Fatal(err)
		}
		if rnd.IntN(3) == 0 {
			open.drop()
		}
		p, err := open.open(wire[:n])
		if err != nil {
			t.Fatalf("record %d: %v", open.seq-1, err)
		}
		opened = append(opened, p...)
		wire = wire[n:]
	}
	if !bytes.Equal(opened, bytes.Join(plains, nil)) || open.seq != keep.seq {
		t.Fatalf("opened %d bytes in %d records; sealed %d in %d", len(opened), open.seq, len(bytes.Join(plains, nil)), keep.seq)
	}
}

func bytes32(b byte) (s [32]byte) {
	for i := range s {
		s[i] = b
	}
	return s
}

// BenchmarkRecordRebuild: what a parked link's wake-up costs in records:
// a direction rebuilds its AEAD from the secret and seals one small
// record (beside sealing it with the AEAD kept).
func BenchmarkRecordRebuild(b *testing.B) {
	plain := make([]byte, 100)
	for _, rebuild := range []bool{false, true} {
		name := "kept"
		if rebuild {
			name = "rebuilt"
		}
		b.Run(name, func(b *testing.B) {
			d, _ := recordPair(b, 12)
			buf := make([]byte, 0, 256)
			b.ReportAllocs()
			for b.Loop() {
				if rebuild {
					d.drop()
				}
				if _, err := d.seal(buf[:0], plain); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

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
