package loadtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// The hostile source: one loopback address flooding the server with
// fresh-identity registrations, introductions to the honest peers, STUN
// binding requests and relay packets, each from its own goroutines at
// full speed, until its context ends.

const (
	hostileIP = "127.0.0.2"
	// regWorkers register fresh identities, one at a time each.
	regWorkers = 4
	// introPeers are the hostile identities asking for introductions.
	introPeers = 8
	// introWorkers ask for introductions at once for each of them.
	introWorkers = 4
	// relayLinks are the hostile relay links (below the relay's
	// MaxLinksPerIP and ConnBurst), each sending from its own goroutine.
	relayLinks = 16
	// relayPacket is the size of a hostile relay packet: a full QUIC
	// packet, to weigh on the relay's rates as much as any.
	relayPacket = 1200
)

// hostile counts what the flood sent and what it got.
type hostile struct {
	regOK, regLimited, regOther                             atomic.Int64
	introOK, introLimited, introBusy, introGone, introOther atomic.Int64
	stunSent, stunAnswered                                  atomic.Int64
	relaySent, relaySendErr, relayGot, relayNotices         atomic.Int64
	links                                                   []relay.Link
	linkIDs                                                 map[identity.PeerID]bool
	intro                                                   []*rendezvous.Client
}

// udpOn opens a UDP socket on ip, closed with the test.
func udpOn(t testing.TB, ip string) *net.UDPConn {
	t.Helper()
	uc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	return uc
}

// transportOn is a QUIC transport on ip, closed with the test.
func transportOn(t testing.TB, ip string) *quic.Transport {
	t.Helper()
	tr := &quic.Transport{Conn: udpOn(t, ip)}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// dialTCPFrom opens TCP connections from ip, so that a peer's TLS
// signalling and relay links count against its own source (the kernel
// would pick 127.0.0.1 for them all).
func dialTCPFrom(ip string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return d.DialContext
}

func newKey(t testing.TB) *identity.Key {
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// prepare links the hostile relay links and registers the hostile
// introduction identities, before the flood: the registration flood
// then spends the source's buckets.
func (h *hostile) prepare(t *testing.T, sa rendezvous.ServerAddr, log *slog.Logger) {
	tr := transportOn(t, hostileIP)
	h.linkIDs = map[identity.PeerID]bool{}
	for range relayLinks {
		k := newKey(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		l, err := relay.UDPDialer{Socket: tr}.DialLink(ctx, relay.LinkParams{Server: sa, Key: k, Handler: (*hostileHandler)(h), Logger: log})
		cancel()
		if err != nil {
			t.Fatalf("hostile relay link: %v", err)
		}
		t.Cleanup(func() { l.Close() })
		h.links = append(h.links, l)
		h.linkIDs[k.ID()] = true
	}
	for range introPeers {
		c, err := rendezvous.NewClient(rendezvous.ClientConfig{Key: newKey(t), Servers: []rendezvous.ServerAddr{sa},
			Transport: tr, DialTCP: dialTCPFrom(hostileIP), Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = c.Start(ctx)
		cancel()
		if err != nil {
			t.Fatalf("hostile introduction peer: %v", err)
		}
		h.intro = append(h.intro, c)
	}
}

// hostileHandler counts what reaches the hostile links.
type hostileHandler hostile

func (h *hostileHandler) Packet(identity.PeerID, []byte) { h.relayGot.Add(1) }
func (h *hostileHandler) Notice(identity.PeerID, error)  { h.relayNotices.Add(1) }

// run floods until ctx ends; targets are the honest peers' IDs.
func (h *hostile) run(ctx context.Context, t *testing.T, rs *rendezvous.RunningServer, targets []identity.PeerID, log *slog.Logger) {
	var wg sync.WaitGroup
	sa := rs.ServerAddr()
	regTr := transportOn(t, hostileIP)
	for range regWorkers {
		wg.Go(func() { h.registrations(ctx, t, regTr, sa, log) })
	}
	for _, c := range h.intro {
		for range introWorkers {
			wg.Go(func() { h.introductions(ctx, c, targets) })
		}
	}
	for _, l := range h.links {
		wg.Go(func() { h.relayPackets(ctx, l, targets) })
	}
	wg.Go(func() { h.stunFlood(ctx, t, rs.UDPAddr()) })
	wg.Wait()
}

// registrations registers fresh identities one after another, each
// hanging up once registered.
func (h *hostile) registrations(ctx context.Context, t *testing.T, tr *quic.Transport, sa rendezvous.ServerAddr, log *slog.Logger) {
	for ctx.Err() == nil {
		c, err := rendezvous.NewClient(rendezvous.ClientConfig{Key: newKey(t), Servers: []rendezvous.ServerAddr{sa},
			Transport: tr, DialTCP: dialTCPFrom(hostileIP), DialTimeout: 2 * time.Second, Logger: log})
		if err != nil {
			t.Error(err)
			return
		}
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err = c.Start(rctx)
		cancel()
		c.Close()
		switch {
		case err == nil:
			h.regOK.Add(1)
		case errors.Is(err, rendezvous.ErrRateLimited):
			h.regLimited.Add(1)
		default:
			h.regOther.Add(1) // refused or retried handshakes, or the flood's end
		}
	}
}

// introductions asks for introductions to random honest peers as fast
// as the answers come.
func (h *hostile) introductions(ctx context.Context, c *rendezvous.Client, targets []identity.PeerID) {
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := c.Connect(cctx, targets[randN(len(targets))], rendezvous.PeerInfo{})
		cancel()
		switch {
		case err == nil:
			h.introOK.Add(1)
		case errors.Is(err, rendezvous.ErrRateLimited):
			h.introLimited.Add(1)
		case errors.Is(err, rendezvous.ErrBusy):
			h.introBusy.Add(1)
		case errors.Is(err, rendezvous.ErrUnknownPeer), errors.Is(err, rendezvous.ErrPeerOffline):
			h.introGone.Add(1) // the honest peer is not registered yet
		default:
			h.introOther.Add(1)
		}
	}
}

// relayPackets sends full-size packets through l, alternately to a
// random peer ID and to an honest peer (which never consented).
func (h *hostile) relayPackets(ctx context.Context, l relay.Link, targets []identity.PeerID) {
	pkt := make([]byte, relayPacket)
	rand.Read(pkt)
	var dst identity.PeerID
	for i := 0; ctx.Err() == nil; i++ {
		if i%2 == 0 {
			rand.Read(dst[:])
		} else {
			dst = targets[randN(len(targets))]
		}
		if err := l.Send(dst, pkt); err != nil {
			h.relaySendErr.Add(1)
			select {
			case <-l.Done():
				return
			default:
			}
			continue
		}
		h.relaySent.Add(1)
		if i%64 == 0 {
			runtime.Gosched()
		}
	}
}

// stunFlood sends binding requests from the hostile address as fast as
// it can and counts the answers.
func (h *hostile) stunFlood(ctx context.Context, t *testing.T, server netip.AddrPort) {
	uc := udpOn(t, hostileIP)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer uc.Close()
	wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			n, err := uc.Read(buf)
			if err != nil {
				return
			}
			if stun.IsMessage(buf[:n]) {
				h.stunAnswered.Add(1)
			}
		}
	})
	m, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		t.Error(err)
		return
	}
	for i := 0; ctx.Err() == nil; i++ {
		if _, err := uc.WriteToUDPAddrPort(m.Raw, server); err == nil {
			h.stunSent.Add(1)
		}
		if i%64 == 0 {
			runtime.Gosched()
		}
	}
	time.Sleep(200 * time.Millisecond) // the last answers
}

func randN(n int) int {
	v, _ := rand.Int(rand.Reader, big.NewInt(int64(n)))
	return int(v.Int64())
}

// summary is one line per kind of the flood.
func (h *hostile) summary() []string {
	return []string{
		fmt.Sprintf("registrations (fresh IDs): %d registered, %d rate-limited, %d refused at the handshake or cut off",
			h.regOK.Load(), h.regLimited.Load(), h.regOther.Load()),
		fmt.Sprintf("introductions (%d IDs): %d answered, %d rate-limited, %d busy, %d target not yet registered, %d other",
			introPeers, h.introOK.Load(), h.introLimited.Load(), h.introBusy.Load(), h.introGone.Load(), h.introOther.Load()),
		fmt.Sprintf("STUN: %d sent, %d answered", h.stunSent.Load(), h.stunAnswered.Load()),
		fmt.Sprintf("relay (%d links): %d packets of %d B sent (%d send errors), %d delivered to the hostile links, %d notices",
			len(h.links), h.relaySent.Load(), relayPacket, h.relaySendErr.Load(), h.relayGot.Load(), h.relayNotices.Load()),
	}
}
