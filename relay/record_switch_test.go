package relay

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach/internal/tlstake"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// oneByteConn delivers what it reads one byte at a time.
type oneByteConn struct{ net.Conn }

func (c oneByteConn) Read(p []byte) (int, error) { return c.Conn.Read(p[:min(len(p), 1)]) }

// lumpConn waits before each read, so that a read takes everything
// that came meanwhile at once.
type lumpConn struct{ net.Conn }

func (c lumpConn) Read(p []byte) (int, error) {
	time.Sleep(20 * time.Millisecond)
	return c.Conn.Read(p)
}

// seqHandler keeps the sequence numbers of the packets it gets.
type seqHandler struct {
	mu  sync.Mutex
	got []uint32
	bad int // packets not as sent
}

func (h *seqHandler) Packet(_ identity.PeerID, pkt []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(pkt) != 100 || string(pkt[4:]) != string(seqFill) {
		h.bad++
		return
	}
	h.got = append(h.got, binary.BigEndian.Uint32(pkt))
}

func (*seqHandler) Notice(identity.PeerID, error) {}

var seqFill = make([]byte, 96)

func init() {
	for i := range seqFill {
		seqFill[i] = byte(i * 7)
	}
}

func seqPacket(i uint32) []byte { return binary.BigEndian.AppendUint32(nil, i) }

// snapshot: the numbers got, and the packets that came damaged.
func (h *seqHandler) snapshot() ([]uint32, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]uint32(nil), h.got...), h.bad
}

// recordServer serves the relay under ALPNRecord (or, to a node without
// it, ALPNKeyProof) on a loopback listener of its own, each connection
// wrapped (both ends read alike).
func recordServer(t *testing.T, wrap func(net.Conn) net.Conn) (*Server, rendezvous.ServerAddr) {
	t.Helper()
	sk := genKey(t)
	cfg, err := identity.ServerTLSConfig(sk, ALPNRecord, ALPNKeyProof)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ClientAuth, cfg.VerifyPeerCertificate = tls.NoClientCert, nil
	srv := NewServer(ServerConfig{Logger: dataLogger(t).With("side", "relay")})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait(); srv.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				tc := tls.Server(wrap(c), cfg)
				if err := tc.HandshakeContext(ctx); err != nil {
					c.Close()
					return
				}
				srv.ServeTLS(ctx, tc)
			})
		}
	})
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	return srv, rendezvous.ServerAddr{ID: sk.ID(), Host: "127.0.0.1", Port: port}
}

// TestRecordSwitch (issue 14): the relay and a node exchange frames at
// once after WELCOME, both ways (the relay forwards a flood that was
// running before the node linked; the node sends at once), with nothing
// lost or damaged, whether both ends read a byte at a time or all that
// came at once: neither side's TLS reads past WELCOME and HELLO.
func TestRecordSwitch(t *testing.T) {
	for _, mode := range []struct {
		name string
		wrap func(net.Conn) net.Conn
	}{
		{"one byte", func(c net.Conn) net.Conn { return oneByteConn{c} }},
		{"all at once", func(c net.Conn) net.Conn { return lumpConn{c} }},
	} {
		t.Run(mode.name, func(t *testing.T) {
			srv, sa := recordServer(t, mode.wrap)
			dial := TLSDialer{DialTCP: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return mode.wrap(c), nil
			}}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			kb, ka := genKey(t), genKey(t)
			hb, ha := new(seqHandler), new(seqHandler)
			lb, err := dial.DialLink(ctx, LinkParams{Server: sa, Key: kb, Handler: hb, Logger: dataLogger(t).With("side", "b")})
			if err != nil {
				t.Fatal(err)
			}
			defer lb.Close()
			// B sends to A from before A links until A has enough.
			stop := make(chan struct{})
			var flood sync.WaitGroup
			flood.Go(func() {
				for i := uint32(0); ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(500 * time.Microsecond):
					}
					if err := lb.Send(ka.ID(), append(seqPacket(i), seqFill...)); err != nil {
						t.Errorf("b: %v", err)
						return
					}
				}
			})
			defer flood.Wait()
			defer close(stop)
			time.Sleep(50 * time.Millisecond)
			la, err := dial.DialLink(ctx, LinkParams{Server: sa, Key: ka, Handler: ha, Logger: dataLogger(t).With("side", "a")})
			if err != nil {
				t.Fatal(err)
			}
			defer la.Close()
			const n = 300
			for i := range uint32(n) {
				if err := la.Send(kb.ID(), append(seqPacket(i), seqFill...)); err != nil {
					t.Fatal(err)
				}
			}
			if p := srv.link(ka.ID()); p == nil || p.tls.in == nil {
				t.Fatal("a's link is not in records at the relay")
			} else {
				waitUntil(t, func() bool { return !p.tls.keepsTLS() })
			}
			deadline := time.Now().Add(15 * time.Second)
			for {
				gotA, badA := ha.snapshot()
				gotB, badB := hb.snapshot()
				if badA+badB > 0 {
					t.Fatalf("damaged packets: %d at a, %d at b", badA, badB)
				}
				if len(gotA) >= 100 && len(gotB) == n {
					for i := 1; i < len(gotA); i++ {
						if gotA[i] != gotA[i-1]+1 {
							t.Fatalf("a got %d after %d: packets lost after WELCOME", gotA[i], gotA[i-1])
						}
					}
					for i, s := range gotB {
						if s != uint32(i) {
							t.Fatalf("b got packet %d as its %dth", s, i)
						}
					}
					t.Logf("a got %d (from %d on), b all %d", len(gotA), gotA[0], n)
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("a got %d packets, b %d of %d", len(gotA), len(gotB), n)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestRecordAges (issue 14): a node of this age and one that offers no
// ALPNRecord link to a server of this age and to one without it, each
// pair forwarding packets both ways; records only where both have them.
func TestRecordAges(t *testing.T) {
	for _, srvRecords := range []bool{true, false} {
		t.Run(fmt.Sprintf("server records %v", srvRecords), func(t *testing.T) {
			srv, sa, _ := dataServerConfig(t, ServerConfig{}, func(s *Server) rendezvous.Protocol {
				s.noRecords = !srvRecords
				return s
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			type end struct {
				k  *identity.Key
				in chan []byte
				l  Link
			}
			var ends [2]end
			for i, noRecords := range []bool{false, true} {
				e := end{k: genKey(t), in: make(chan []byte, 4)}
				var err error
				e.l, err = TLSDialer{}.DialLink(ctx, LinkParams{Server: sa, Key: e.k, Handler: chanHandler(e.in),
					Logger: dataLogger(t), noRecords: noRecords})
				if err != nil {
					t.Fatal(err)
				}
				defer e.l.Close()
				var p *peerLink
				waitUntil(t, func() bool { p = srv.link(e.k.ID()); return p != nil })
				if want := srvRecords && !noRecords; (p.tls.in != nil) != want || !p.tls.proof {
					t.Fatalf("node without records %v: records %v, want %v (key proof %v)", noRecords, p.tls.in != nil, want, p.tls.proof)
				}
				ends[i] = e
			}
			for i := range ends {
				from, to := ends[i], ends[1-i]
				msg := fmt.Sprintf("from %d to %d", i, 1-i)
				if err := from.l.Send(to.k.ID(), []byte(msg)); err != nil {
					t.Fatal(err)
				}
				select {
				case got := <-to.in:
					if string(got) != msg {
						t.Fatalf("got %q, want %q", got, msg)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("%s: nothing came", msg)
				}
			}
		})
	}
}

// TestRecordTamperedEndsLink: a record from the node that does not open
// ends its link at the relay: ERROR protocol (in a record), the
// connection closed, the peer unregistered; a good record before it was
// taken (its PING answered).
func TestRecordTamperedEndsLink(t *testing.T) {
	srv, sa, _ := dataServerConfig(t, ServerConfig{}, nil)
	k := genKey(t)
	cfg, _, err := identity.ClientTLSConfig(k, sa.ID, ALPNRecord)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", sa.TCPHostPort())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	bounded := tlstake.NewBounded(raw)
	tc := tls.Client(bounded, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	cs := tc.ConnectionState()
	proof, err := appendKeyProof(nil, k, cs)
	if err != nil {
		t.Fatal(err)
	}
	if err := helloAnswer(t, tc, proof); err != nil {
		t.Fatal(err)
	}
	if !bounded.AtBoundary() {
		t.Fatal("WELCOME ended inside a TLS record")
	}
	in, out, err := newRecordDirs(cs, false)
	if err != nil {
		t.Fatal(err)
	}
	rc := newRecordConn(raw, in, out)
	if _, err := rc.Write(appendFrame(nil, framePing, []byte("12345678"))); err != nil {
		t.Fatal(err)
	}
	typ, body, _, err := readFrame(rc, nil)
	if err != nil || typ != framePong || string(body) != "12345678" {
		t.Fatalf("answer to PING in a record: 0x%02x %q %v", typ, body, err)
	}
	bad, err := out.seal(nil, appendFrame(nil, framePing, []byte("87654321")))
	if err != nil {
		t.Fatal(err)
	}
	bad[len(bad)-1] ^= 1
	if _, err := raw.Write(bad); err != nil {
		t.Fatal(err)
	}
	typ, body, _, err = readFrame(rc, nil)
	if err != nil || typ != frameError || len(body) < 1 || body[0] != codeProtocol {
		t.Fatalf("after a tampered record: 0x%02x %q %v; want ERROR protocol", typ, body, err)
	}
	if _, _, _, err := readFrame(rc, nil); err != io.EOF {
		t.Fatalf("after ERROR: %v, want EOF", err)
	}
	waitUntil(t, func() bool { return srv.link(k.ID()) == nil })
}
