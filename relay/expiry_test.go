package relay_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
)

// TestRelayKeepSessionsPastExpiry (issue 15): with
// KeepSessionsPastExpiry (a supernode volunteer's relay, whose peers get
// tokens only with introductions) a link outlives its token only for the
// sessions it carries. At the expiry an idle link ends with
// ErrTokenExpired; a pair whose session is running keeps it; two links
// whose tokens expired open no new session between them (dropped
// token_expired, nothing delivered), while one with a live token still
// can; and a link whose last session went idle ends too.
func TestRelayKeepSessionsPastExpiry(t *testing.T) {
	expiry := time.Now().Add(time.Second)
	expiries := map[string]time.Time{"soon": expiry, "later": time.Now().Add(time.Hour)}
	rs, rl := startServer(t, relay.ServerConfig{SessionIdle: time.Second, KeepSessionsPastExpiry: true,
		Authorize: func(_ identity.PeerID, token string) (time.Time, error) { return expiries[token], nil }})
	sa := rs.ServerAddr()
	key := func() *identity.Key { k, _ := identity.GenerateKey(); return k }
	ka, kb, kc, kd, ke := key(), key(), key(), key(), key()
	hb, hd, he := newCountHandler(), newCountHandler(), newCountHandler()
	a := dialTLS(t, sa, ka, "soon", false, nopHandler{})
	b := dialTLS(t, sa, kb, "soon", false, hb)
	c := dialTLS(t, sa, kc, "soon", false, nopHandler{}) // idle
	d := dialTLS(t, sa, kd, "later", false, hd)
	e := dialTLS(t, sa, ke, "soon", false, he) // kept up by its session to d

	var mu sync.Mutex
	aTalks := true
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			mu.Lock()
			if aTalks {
				a.Send(kb.ID(), []byte("a"))
				b.Send(ka.ID(), []byte("b"))
			}
			mu.Unlock()
			e.Send(kd.ID(), []byte("e"))
		}
	})
	defer wg.Wait()
	defer close(stop)

	select {
	case <-c.Done():
	case <-time.After(time.Until(expiry) + 2*time.Second):
		t.Fatal("the idle link is up 2 s after its token expired")
	}
	if late := time.Since(expiry); !errors.Is(c.Err(), relay.ErrTokenExpired) || late < -50*time.Millisecond {
		t.Fatalf("idle link ended %v after its token's expiry with %v, want ErrTokenExpired at the expiry", late, c.Err())
	}
	time.Sleep(time.Until(expiry) + 300*time.Millisecond)
	atExpiry := hb.got(ka.ID())
	time.Sleep(500 * time.Millisecond)
	if after := hb.got(ka.ID()); after <= atExpiry {
		t.Errorf("the running session stopped at the expiry: b got %d packets from a then, %d 500 ms later", atExpiry, after)
	}
	select {
	case <-a.Done():
		t.Fatalf("a's link, carrying a session, ended: %v", a.Err())
	case <-e.Done():
		t.Fatalf("e's link, carrying a session, ended: %v", e.Err())
	default:
	}
	for range 20 {
		a.Send(ke.ID(), []byte("new, both expired"))
		a.Send(kd.ID(), []byte("new, d's token is live"))
	}
	time.Sleep(300 * time.Millisecond)
	m := rl.Metrics()
	if got := he.got(ka.ID()); got != 0 || m.Drops["token_expired"] < 20 {
		t.Errorf("between two expired links: e got %d of 20, %d dropped token_expired; want 0 and 20", got, m.Drops["token_expired"])
	}
	if got := hd.got(ka.ID()); got != 20 {
		t.Errorf("to a link with a live token: d got %d of 20", got)
	}

	// a and b stop: their sessions go idle (SessionIdle 1 s) and the
	// sweep ends the links.
	mu.Lock()
	aTalks = false
	mu.Unlock()
	stopped := time.Now()
	for _, l := range []relay.Link{a, b} {
		select {
		case <-l.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("a link whose token expired is up 5 s after its last session went quiet")
		}
		if !errors.Is(l.Err(), relay.ErrTokenExpired) {
			t.Errorf("link ended with %v, want ErrTokenExpired", l.Err())
		}
	}
	t.Logf("idle link ended at its token's expiry; a and b ended %v after their session went quiet", time.Since(stopped).Round(time.Millisecond))
	select {
	case <-e.Done():
		t.Errorf("e's link, still sending to d, ended: %v", e.Err())
	case <-d.Done():
		t.Errorf("d's link, with a live token, ended: %v", d.Err())
	default:
	}
	if m := rl.Metrics(); m.Expired != 3 {
		t.Errorf("%d links ended for their token, want 3 (the idle one, a, b)", m.Expired)
	}
}
