package relay_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// newNodeAt is newNode on the loopback address ip (127.0.0.2, ...), so
// the relay sees it as a source of its own.
func newNodeAt(t testing.TB, cs, ip string) *reach.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := reach.New(ctx, reach.Config{Servers: []string{cs}, Strategies: []string{reach.StrategyRelay},
		Logger: testLogger(t).With("node", ip), ListenAddr: netip.MustParseAddrPort(ip + ":0"), DisablePortMapping: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// hostileLinks links n fresh identities to the relay over UDP from the
// loopback sources ips (in turn), retrying a link the connection rate
// refused for up to 3 s; it returns the links that got in and how many
// were refused for good.
func hostileLinks(t *testing.T, sa rendezvous.ServerAddr, n int, ips []string) (links []relay.Link, ids []identity.PeerID, refused int) {
	t.Helper()
	trs := make([]*quic.Transport, len(ips))
	for i, ip := range ips {
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip)})
		if err != nil {
			t.Fatal(err)
		}
		trs[i] = &quic.Transport{Conn: u}
		t.Cleanup(func() { trs[i].Close(); u.Close() })
	}
	deadline := time.Now().Add(3 * time.Second)
	for i := range n {
		k, _ := identity.GenerateKey()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			l, err := relay.UDPDialer{Socket: trs[i%len(trs)]}.DialLink(ctx, relay.LinkParams{Server: sa, Key: k, Handler: nopHandler{}})
			cancel()
			if err == nil {
				t.Cleanup(func() { l.Close() })
				links, ids = append(links, l), append(ids, k.ID())
				break
			}
			var se *relay.ServerError
			if errors.As(err, &se) && errors.Is(err, relay.ErrRateLimited) && se.Reason != "" && time.Now().Before(deadline) &&
				!errorsContain(se.Reason, "links") {
				time.Sleep(50 * time.Millisecond) // the connection rate: again
				continue
			}
			refused++
			break
		}
	}
	return links, ids, refused
}

func errorsContain(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

type nopHandler struct{}

func (nopHandler) Packet(identity.PeerID, []byte) {}
func (nopHandler) Notice(identity.PeerID, error)  {}

// TestRelayHostileLinks (issue 15): 110 links under fresh keys, all
// sending to one another to fill the relay's 10,000-session table (it
// took 101 before the caps), from one source and from five; an honest
// pair on two other sources still gets a relayed session and moves 1 MiB
// intact. From one source at most MaxLinksPerIP links get in; each
// source's sessions stop at MaxSessionsPerIP. From eleven sources (in
// eleven /24s) they fill the default table, 10,000: the honest pair gets
// its sessions in place of the biggest holders' (fair.go).
func TestRelayHostileLinks(t *testing.T) {
	for _, c := range []struct {
		name string
		ips  []string
	}{
		{"one source", []string{"127.0.0.10"}},
		{"five sources", []string{"127.0.0.20", "127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"}},
		{"eleven sources", []string{"127.0.1.10", "127.0.2.10", "127.0.3.10", "127.0.4.10", "127.0.5.10", "127.0.6.10",
			"127.0.7.10", "127.0.8.10", "127.0.9.10", "127.0.10.10", "127.0.11.10"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The connection rate only delays one source (10 links a
			// second); it is off here to keep the test short.
			rs, rl := startServer(t, relay.ServerConfig{ConnRate: -1})
			start := time.Now()
			links, ids, refused := hostileLinks(t, rs.ServerAddr(), 110, c.ips)
			t.Logf("%d hostile links in %v, %d refused", len(links), time.Since(start).Round(time.Millisecond), refused)
			for round := range 2 {
				for i, l := range links {
					for j, id := range ids {
						if i != j {
							l.Send(id, []byte{byte(round)})
						}
					}
				}
				time.Sleep(300 * time.Millisecond)
			}
			m := rl.Metrics()
			t.Logf("sessions %d; drops %v; rejected %v", m.Sessions, m.Drops, m.Rejected)
			if m.Sessions > len(c.ips)*relay.DefaultMaxSessionsPerIP {
				t.Errorf("%d sessions from %d sources, want at most %d each", m.Sessions, len(c.ips), relay.DefaultMaxSessionsPerIP)
			}
			full := len(c.ips)*relay.DefaultMaxSessionsPerIP > 10000
			if full && m.Sessions != 10000 {
				t.Fatalf("%d sessions from %d sources, want the default table full (10,000)", m.Sessions, len(c.ips))
			}
			a := newNodeAt(t, rs.ConnectString(), "127.0.0.2")
			b := newNodeAt(t, rs.ConnectString(), "127.0.0.3")
			echo(b)
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			start = time.Now()
			sess, err := a.DialSession(ctx, b.ID())
			if err != nil {
				t.Fatalf("honest pair: %v", err)
			}
			st, err := sess.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := roundTrip(st, 1<<20); err != nil {
				t.Fatal(err)
			}
			st.Close()
			m = rl.Metrics()
			t.Logf("honest pair: relayed session and 1 MiB echoed intact in %v; sessions %d, evicted %d",
				time.Since(start).Round(time.Millisecond), m.Sessions, m.Evicted)
			if m.Sessions > 10000 || full && m.Evicted < 2 {
				t.Errorf("%d sessions (table 10,000), %d evicted", m.Sessions, m.Evicted)
			}
		})
	}
}

// countHandler counts the packets a link receives from each peer and
// keeps its notices.
type countHandler struct {
	mu      sync.Mutex
	from    map[identity.PeerID]int
	notices chan error
}

func newCountHandler() *countHandler {
	return &countHandler{from: map[identity.PeerID]int{}, notices: make(chan error, 64)}
}

func (h *countHandler) Packet(from identity.PeerID, _ []byte) {
	h.mu.Lock()
	h.from[from]++
	h.mu.Unlock()
}

func (h *countHandler) Notice(_ identity.PeerID, err error) {
	select {
	case h.notices <- err:
	default:
	}
}

func (h *countHandler) got(from identity.PeerID) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.from[from]
}

// dialTLS links k to the relay over TLS with h.
func dialTLS(t *testing.T, sa rendezvous.ServerAddr, k *identity.Key, token string, consent bool, h relay.Handler) relay.Link {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := relay.TLSDialer{}.DialLink(ctx, relay.LinkParams{Server: sa, Key: k, Token: token, Consent: consent, Handler: h, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestRelayConsent (issue 15): a node whose link asks for consent
// receives nothing from a peer it did not allow (the sender gets
// ErrNotAllowed, the drops are counted not_allowed), and everything from
// a peer it allowed; once it sends to the stranger itself, the
// stranger's packets come through too. A link that did not ask (an older
// client) receives from anyone, as before.
func TestRelayConsent(t *testing.T) {
	rs, rl := startServer(t, relay.ServerConfig{})
	sa := rs.ServerAddr()
	key := func() *identity.Key { k, _ := identity.GenerateKey(); return k }
	kr, ka, kc, ko := key(), key(), key(), key()
	hr, ha, hc, ho := newCountHandler(), newCountHandler(), newCountHandler(), newCountHandler()
	r := dialTLS(t, sa, kr, "", true, hr)
	a := dialTLS(t, sa, ka, "", true, ha)
	c := dialTLS(t, sa, kc, "", true, hc)
	dialTLS(t, sa, ko, "", false, ho)
	if err := r.Allow(ka.ID()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the ALLOW is on the relay before the packets
	const n = 50
	for range n {
		a.Send(kr.ID(), []byte("allowed"))
		c.Send(kr.ID(), []byte("stranger"))
		c.Send(ko.ID(), []byte("to an older client"))
	}
	wait := func(cond func() bool) {
		for deadline := time.Now().Add(5 * time.Second); !cond() && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait(func() bool { return hr.got(ka.ID()) == n && ho.got(kc.ID()) == n })
	time.Sleep(200 * time.Millisecond)
	t.Logf("recipient got %d from the allowed peer, %d from the stranger; the older client got %d; drops %v",
		hr.got(ka.ID()), hr.got(kc.ID()), ho.got(kc.ID()), rl.Metrics().Drops)
	if hr.got(ka.ID()) != n || hr.got(kc.ID()) != 0 || ho.got(kc.ID()) != n {
		t.Fatalf("got %d from the allowed peer, %d from the stranger, %d at the older client; want %d, 0, %d",
			hr.got(ka.ID()), hr.got(kc.ID()), ho.got(kc.ID()), n, n)
	}
	if d := rl.Metrics().Drops["not_allowed"]; d != n {
		t.Errorf("not_allowed drops %d, want %d", d, n)
	}
	select {
	case err := <-hc.notices:
		if !errors.Is(err, relay.ErrNotAllowed) {
			t.Errorf("stranger's notice %v, want ErrNotAllowed", err)
		}
	case <-time.After(2 * time.Second):
		t.Error("the stranger got no notice")
	}
	// The recipient sends to the stranger: consent to hear back.
	r.Send(kc.ID(), []byte("hello"))
	wait(func() bool { return hc.got(kr.ID()) == 1 })
	c.Send(kr.ID(), []byte("answer"))
	wait(func() bool { return hr.got(kc.ID()) == 1 })
	if hr.got(kc.ID()) != 1 {
		t.Errorf("after the recipient sent to it, the stranger's answer arrived %d times, want 1", hr.got(kc.ID()))
	}
}

// TestRelayTokenExpiresOnLiveLink (issue 15): a link made with a token
// that expires in about 2 s is ended by the relay at its expiry (ERROR
// token_expired) within 1 s; a client whose token source gives a fresh
// token links again at once.
func TestRelayTokenExpiresOnLiveLink(t *testing.T) {
	secret := []byte("secret")
	rs, rl := startServer(t, relay.ServerConfig{Secrets: [][]byte{secret}})
	sa := rs.ServerAddr()
	k, _ := identity.GenerateKey()
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second)
	l := dialTLS(t, sa, k, relay.NewToken(secret, k.ID(), exp), false, nopHandler{})
	select {
	case <-l.Done():
	case <-time.After(time.Until(exp) + 3*time.Second):
		t.Fatalf("link still up %v after its token expired", 3*time.Second)
	}
	late := time.Since(exp)
	t.Logf("link ended %v after its token's expiry: %v", late.Round(time.Millisecond), l.Err())
	if !errors.Is(l.Err(), relay.ErrTokenExpired) || late > time.Second {
		t.Errorf("link ended with %v, %v after expiry; want ErrTokenExpired within 1s", l.Err(), late)
	}

	// A client over UDP with a token source: short tokens, then fresh.
	k2, _ := identity.GenerateKey()
	var calls atomic.Int32
	exp2 := time.Now().Add(2 * time.Second).Truncate(time.Second)
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: u}
	defer func() { tr.Close(); u.Close() }()
	c, err := relay.NewClient(relay.ClientConfig{Key: k2, Socket: tr, Dialers: []relay.LinkDialer{relay.UDPDialer{Socket: tr}},
		Logger: testLogger(t).With("side", "client"),
		Token: func() string {
			if calls.Add(1) == 1 {
				return relay.NewToken(secret, k2.ID(), exp2)
			}
			return relay.NewToken(secret, k2.ID(), time.Now().Add(time.Hour))
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	first, err := c.Connect(ctx, sa)
	if err != nil {
		t.Fatal(err)
	}
	<-first.Done()
	ended := time.Now()
	var again relay.Link
	for time.Since(ended) < 3*time.Second {
		if l, err := c.Connect(ctx, sa); err == nil && l != first {
			again = l
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	relinked := time.Since(ended)
	t.Logf("client's link ended %v after expiry (%v), linked again %v later", ended.Sub(exp2).Round(time.Millisecond),
		first.Err(), relinked.Round(time.Millisecond))
	if !errors.Is(first.Err(), relay.ErrTokenExpired) || again == nil || relinked > time.Second {
		t.Errorf("link ended with %v; linked again after %v; want ErrTokenExpired and a new link within 1s", first.Err(), relinked)
	}
	if m := rl.Metrics(); m.Expired != 2 {
		t.Errorf("expired links %d, want 2", m.Expired)
	}
}
