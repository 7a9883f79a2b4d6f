package e2e_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

const (
	// lossShare is the random loss on each peer's access link, each way.
	lossShare = 0.05
	// lossPayload is what each side of a pair sends at once.
	lossPayload = 100 << 20
	// lossPairTimeout bounds one pair's transfer (both directions).
	lossPairTimeout = 5 * time.Minute
)

// TestLabRelayLoss: relayed sessions lose no data when the peers' access
// links drop 5% of the packets each way (issue 14). Each peer's eth0 drops
// a random 5% of what it sends and of what it receives (natlab's loss:
// an nftables numgen rule), from before the nodes register. Four pairs:
//
//   - udp: both peers behind symmetric NATs, both linked to the relay over
//     UDP;
//   - tls: a peer in a UDP-blocked network (its relay link TLS on TCP 443)
//     and a peer behind a symmetric NAT (UDP);
//   - tls-tls: two peers in UDP-blocked networks, both on TLS links, so
//     their session is TLS+yamux over a relayed stream (TCP recovers the
//     loss on each leg);
//   - udp-tls: a peer behind a symmetric NAT (UDP link) dialling a peer in
//     a UDP-blocked network (TLS link): a relayed stream through the
//     dialler's streams-only link.
//
// In each pair the dialler opens two streams of one relayed session and
// both peers send lossPayload of a seeded pseudo-random stream at the same
// time, one each way; each receiver hashes what it read and the test
// compares that with the sender's SHA-256: every byte, in order, once.
// The pairs run at once (the first two share the listener, all the relay); on
// this machine's two shared cores the test takes 2 to 2.5 minutes (each
// transfer 105 to 130 s: 6.5 to 9 Mbit/s each way, bound by the loss, not
// the CPU; QUIC counts 8% of the UDP pair's packets lost, 4.5% of the TLS
// pair's, whose TLS side loses nothing QUIC sees).
func TestLabRelayLoss(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	syma, symb := s.Site(t, "lsa", natlab.Kind(natlab.Symmetric)), s.Site(t, "lsb", natlab.Kind(natlab.Symmetric))
	corp := s.Site(t, "lcorp", natlab.Kind(natlab.UDPBlocked))
	corp2 := s.Site(t, "lcorp2", natlab.Kind(natlab.UDPBlocked))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, site := range []*natlab.Site{syma, symb, corp, corp2} {
		if err := site.Host.Impair(ctx, natlab.Impairment{Loss: lossShare}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := reach.Config{DisablePortMapping: true, UpgradeInterval: -1}
	na := s.Node(t, syma.Host, cfg)
	nb := s.Node(t, symb.Host, cfg)
	nc := s.Node(t, corp.Host, cfg)
	nd := s.Node(t, corp2.Host, cfg)
	sinkB, sinkD := serveLossStreams(t, nb), serveLossStreams(t, nd)
	for _, p := range []struct {
		name                string
		from, to            *reach.Node
		sink                *lossSink
		wantTransport, want string // the dialler's link, the listener's
	}{{"udp", na, nb, sinkB, "udp", "udp"}, {"tls", nc, nb, sinkB, "tls", "udp"}, {"tls-tls", nc, nd, sinkD, "tls", "tls"},
		{"udp-tls", na, nd, sinkD, "udp", "tls"}} {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), lossPairTimeout)
			defer cancel()
			sess, el, err := reachlab.Dial(ctx, p.from, p.to)
			if err != nil {
				t.Fatal(err)
			}
			// A streams-only link that loses its TCP handshake's SYN waits
			// a second for the retransmission, and the dial does not wait
			// that long for it: QUIC over relayed packets (the designed
			// fallback). The link comes up meanwhile and stays for the
			// next dial.
			mixed := p.wantTransport != p.want // one side on UDP, one on TLS: a relayed stream
			for try := 1; mixed && sess.QUIC() != nil && try < 3; try++ {
				t.Logf("dial %d ran QUIC over relayed packets (the streams-only link was late); dialling again", try)
				closeAndWaitGone(t, sess, p.from, p.to)
				if sess, el, err = reachlab.Dial(ctx, p.from, p.to); err != nil {
					t.Fatal(err)
				}
			}
			defer sess.CloseWithError(0, "done")
			if sess.Strategy() != reach.StrategyRelay {
				t.Fatalf("strategy %q, want relay", sess.Strategy())
			}
			// A TCP link is "tls" or, when its TCP handshake lost a
			// packet and the WebSocket attempt (300 ms behind it) got
			// through first, "ws": the same TLS link inside a WebSocket,
			// a byte stream as well (the relay link's transport race).
			if tr, lt := p.from.Status().RelayTransport, p.to.Status().RelayTransport; linkClass(tr) != p.wantTransport || linkClass(lt) != p.want {
				t.Fatalf("relay links: dialler's over %q, listener's over %q; want %q and %q", tr, lt, p.wantTransport, p.want)
			}
			if stream := sess.QUIC() == nil; stream != (p.want == "tls" || p.wantTransport == "tls") {
				t.Fatalf("relayed stream %v, want it when either side is on a TLS link", stream)
			}
			t.Logf("relayed session after %v; dialler linked over %s, listener over %s", el.Round(time.Millisecond),
				p.from.Status().RelayTransport, p.to.Status().RelayTransport)
			start := time.Now()
			up, down := moveBothWays(ctx, sess, p.sink)
			took := time.Since(start)
			for _, r := range []struct {
				dir string
				err error
			}{{"dialler -> listener", up}, {"listener -> dialler", down}} {
				if r.err != nil {
					t.Errorf("%s: %v", r.dir, r.err)
				}
			}
			t.Logf("%d MiB each way at once under %.0f%% loss per access link in %v (%.1f Mbit/s each way)",
				lossPayload>>20, lossShare*100, took.Round(time.Millisecond), float64(lossPayload)*8/took.Seconds()/1e6)
			// The impairment is real: the session's own count of lost
			// packets (the pairs with a lossy UDP side; the tls-tls
			// pair's TCP legs recover their loss below the session).
			if sess.QUIC() == nil {
				return
			}
			if lost := sessionLoss(t, sess); lost < lossShare/2 {
				t.Errorf("session lost %.2f%% of its packets; the links' loss is not in effect", lost*100)
			}
		})
	}
	t.Cleanup(func() { t.Logf("relay: %+v", s.Relay.Stats()) })
}

// linkClass is "tls" for a relay link over TCP (TLS or WebSocket), else
// the transport itself.
func linkClass(transport string) string {
	if transport == "ws" {
		return "tls"
	}
	return transport
}

// lossStream is the first byte of each stream the dialler opens: which
// way the payload goes.
const (
	lossUp   = 'u' // the dialler sends, the listener hashes
	lossDown = 'd' // the listener sends, the dialler hashes
)

// lossSink is the listener's side: what it hashed of each peer's upload.
type lossSink struct {
	mu  sync.Mutex
	got map[identity.PeerID]chan lossResult
}

// from is the channel the results of uploads from peer come on.
func (s *lossSink) from(peer identity.PeerID) chan lossResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.got[peer] == nil {
		s.got[peer] = make(chan lossResult, 1)
	}
	return s.got[peer]
}

// lossResult is what a receiver read: how many bytes and their SHA-256.
type lossResult struct {
	n   int64
	sum []byte
	err error
}

// serveLossStreams accepts n's streams until the test ends: an upload is
// read and hashed (the result goes to the sink, by sending peer), a download
// gets lossPayload bytes of the pattern seeded 2.
func serveLossStreams(t *testing.T, n *reach.Node) *lossSink {
	sink := &lossSink{got: map[identity.PeerID]chan lossResult{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := n.Accept(ctx)
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				stop := context.AfterFunc(ctx, func() { c.Close() })
				defer stop()
				var kind [1]byte
				if _, err := io.ReadFull(c, kind[:]); err != nil {
					t.Logf("loss stream: reading its kind: %v", err)
					return
				}
				switch kind[0] {
				case lossUp:
					select {
					case sink.from(c.Session().RemotePeer()) <- hashAll(c):
					default:
						t.Logf("loss stream: a second upload from %s", c.Session().RemotePeer().Short())
					}
				case lossDown:
					if err := sendPattern(c, 2, lossPayload); err != nil {
						t.Logf("loss stream: sending: %v", err)
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return sink
}

// moveBothWays opens two streams on sess, sends lossPayload bytes on one
// (the pattern seeded 1) while it reads lossPayload bytes (seeded 2) from
// the other, and checks both against the senders' SHA-256. It returns an
// error for each direction.
func moveBothWays(ctx context.Context, sess *reach.Session, sink *lossSink) (up, down error) {
	open := func(kind byte) (*reach.Stream, error) {
		c, err := sess.OpenStream(ctx)
		if err != nil {
			return nil, fmt.Errorf("open stream: %w", err)
		}
		if _, err := c.Write([]byte{kind}); err != nil {
			c.Close()
			return nil, fmt.Errorf("stream kind: %w", err)
		}
		context.AfterFunc(ctx, func() { c.Close() })
		return c, nil
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := open(lossUp)
		if err != nil {
			up = err
			return
		}
		defer c.Close()
		if err := sendPattern(c, 1, lossPayload); err != nil {
			up = err
			return
		}
		select {
		case r := <-sink.from(sess.LocalPeer()):
			up = checkPattern(r, 1)
		case <-ctx.Done():
			up = fmt.Errorf("listener did not finish reading: %w", ctx.Err())
		}
	})
	wg.Go(func() {
		c, err := open(lossDown)
		if err != nil {
			down = err
			return
		}
		defer c.Close()
		if err := c.CloseWrite(); err != nil {
			down = err
			return
		}
		down = checkPattern(hashAll(c), 2)
	})
	wg.Wait()
	return up, down
}

// sendPattern writes size bytes of the pseudo-random stream seeded seed
// on c in 64 KiB writes, then closes its write side.
func sendPattern(c *reach.Stream, seed byte, size int64) error {
	src := rand.NewChaCha8([32]byte{seed})
	buf := make([]byte, 64<<10)
	for off := int64(0); off < size; off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), size-off)]
		src.Read(b)
		if _, err := c.Write(b); err != nil {
			return fmt.Errorf("writing after %d bytes: %w", off, err)
		}
	}
	return c.CloseWrite()
}

// hashAll reads c to its end.
func hashAll(c io.Reader) lossResult {
	h := sha256.New()
	n, err := io.Copy(h, c)
	return lossResult{n: n, sum: h.Sum(nil), err: err}
}

// patternSums caches the SHA-256 of each seed's lossPayload bytes.
var patternSums sync.Map

// checkPattern says whether r is exactly lossPayload bytes of the
// pattern seeded seed.
func checkPattern(r lossResult, seed byte) error {
	if r.err != nil {
		return fmt.Errorf("reading after %d of %d bytes: %w", r.n, lossPayload, r.err)
	}
	want, ok := patternSums.Load(seed)
	if !ok {
		h := sha256.New()
		src := rand.NewChaCha8([32]byte{seed})
		io.CopyN(h, src, lossPayload)
		want, _ = patternSums.LoadOrStore(seed, h.Sum(nil))
	}
	if r.n != lossPayload || !bytes.Equal(r.sum, want.([]byte)) {
		return fmt.Errorf("%w: %d of %d bytes, SHA-256 matches: %v", errCorrupt, r.n, lossPayload, bytes.Equal(r.sum, want.([]byte)))
	}
	return nil
}

// errCorrupt: the bytes received are not the bytes sent.
var errCorrupt = errors.New("received bytes differ from those sent")

// sessionLoss logs the session's QUIC loss figures (the relayed session
// is QUIC end to end, whatever the links) and returns the share of its
// packets it declared lost.
func sessionLoss(t *testing.T, sess *reach.Session) float64 {
	qc := sess.QUIC()
	if qc == nil {
		t.Fatal("relayed session without QUIC")
	}
	cs := qc.ConnectionStats()
	lost := float64(cs.PacketsLost) / float64(max(cs.PacketsSent, 1))
	t.Logf("session: sent %d packets, lost %d (%.2f%%), srtt %v", cs.PacketsSent, cs.PacketsLost, 100*lost, cs.SmoothedRTT)
	return lost
}
