package fleet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/redistest"
	"github.com/reachp2p/reach/rendezvous"
)

// TestFleetFloodIntroductions: a dialler floods a peer on another server
// with introductions the peer never answers. The dialler's server hands
// at most MaxPendingIntros of them to the fleet at once (the rest are
// refused with a named error), the home server holds at most
// MaxIncomingIntros for the peer, every dial ends with a named error, and
// both servers go on serving.
func TestFleetFloodIntroductions(t *testing.T) {
	rs := redistest.Start(t)
	scfg := rendezvous.ServerConfig{MaxPendingIntros: 4, MaxIncomingIntros: 3, IntroTimeout: time.Second}
	srv := threeServers(t, rs, Config{}, scfg)
	keyA, keyB := mustKey(t), mustKey(t)
	a := startClient(t, "A", keyA, srv[0])
	b := startClient(t, "B", keyB, srv[2])
	// B reads its introductions and never answers them.
	var held sync.WaitGroup
	held.Go(func() {
		for range b.Incoming() {
		}
	})
	t.Cleanup(func() { b.Close(); held.Wait() })
	registered(t, srv[2], keyB.ID(), 5*time.Second)

	var maxInflight atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if n := int64(srv[0].reg.Stats().Inflight); n > maxInflight.Load() {
				maxInflight.Store(n)
			}
		}
	})
	// 48 at once: more would also fill the server's send queue to A (64
	// frames) with refusals, and the server disconnects a peer whose queue
	// overflows (slow_reader), the same with a target on its own server.
	const n = 48
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := a.Connect(ctx, keyB.ID(), rendezvous.PeerInfo{})
			errs <- err
		})
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	close(errs)
	counts := map[string]int{}
	for err := range errs {
		switch {
		case err == nil:
			t.Fatal("an introduction B never answered succeeded")
		case errors.Is(err, rendezvous.ErrRateLimited):
			counts["rate_limited"]++
		case errors.Is(err, rendezvous.ErrBusy):
			counts["busy"]++
		case errors.Is(err, rendezvous.ErrTimeout):
			counts["timeout"]++
		default:
			t.Fatalf("flooded dial: %v, want a named refusal", err)
		}
	}
	st1, st3 := srv[0].rs.Stats(), srv[2].rs.Stats()
	t.Logf("outcomes %v; server 1 handed %d to the fleet (at most %d at once); server 3 delivered %d, refused %d",
		counts, st1.FleetIntrosSent, maxInflight.Load(), st3.FleetIntrosServed, st3.IntrosRefused)
	if m := maxInflight.Load(); m > int64(scfg.MaxPendingIntros) {
		t.Errorf("server 1 had %d introductions in flight between servers, limit %d", m, scfg.MaxPendingIntros)
	}
	if counts["timeout"] == 0 || counts["busy"] == 0 {
		t.Errorf("outcomes %v: want both timeouts (held by B) and refusals", counts)
	}
	// The flood lasts less than IntroTimeout: the home server delivered
	// at most MaxIncomingIntros to B, and refused what came beyond.
	if st3.FleetIntrosServed > uint64(scfg.MaxIncomingIntros) {
		t.Errorf("server 3 delivered %d introductions to B, limit %d", st3.FleetIntrosServed, scfg.MaxIncomingIntros)
	}
	if st1.FleetIntrosSent > st3.FleetIntrosServed && st3.IntrosRefused == 0 {
		t.Errorf("server 3 got %d, delivered %d and refused none", st1.FleetIntrosSent, st3.FleetIntrosServed)
	}

	// Both servers still serve: a new pair across them connects.
	keyC, keyD := mustKey(t), mustKey(t)
	c := startClient(t, "C", keyC, srv[0])
	d := startClient(t, "D", keyD, srv[2])
	answerAll(t, d, rendezvous.Candidate{Addr: netip.MustParseAddrPort("192.0.2.4:4000"), Kind: rendezvous.Host})
	registered(t, srv[2], keyD.ID(), 5*time.Second)
	if _, err, _ := connect(t, c, keyD.ID(), rendezvous.PeerInfo{}, 5*time.Second); err != nil {
		t.Fatalf("dial across the servers after the flood: %v", err)
	}
}

// TestFleetMaxInflight: a server waits on at most Config.MaxInflight
// introductions handed to other servers; beyond, Introduce fails at once
// with ErrBusy.
func TestFleetMaxInflight(t *testing.T) {
	rs := redistest.Start(t)
	r1, err := New(rs.URL(), Config{MaxInflight: 2, Logger: testLogger(t, "r1")})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := New(rs.URL(), Config{Logger: testLogger(t, "r2")})
	if err != nil {
		t.Fatal(err)
	}
	h2 := &silentHandler{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r1.Run(ctx, "one", &silentHandler{}) })
	wg.Go(func() { r2.Run(ctx, "two", h2) })
	t.Cleanup(func() { cancel(); wg.Wait(); r1.Close(); r2.Close() })
	waitFor(t, 5*time.Second, "both servers listed", func() bool {
		s, err := r1.Servers(ctx)
		return err == nil && len(s) == 2
	})

	in := rendezvous.FleetIntro{Target: mustKey(t).ID()}
	results := make(chan error, 2)
	for range 2 {
		wg.Go(func() {
			ictx, icancel := context.WithTimeout(ctx, time.Second)
			defer icancel()
			_, err := r1.Introduce(ictx, "two", in)
			results <- err
		})
	}
	waitFor(t, 2*time.Second, "two introductions in flight", func() bool { return r1.Stats().Inflight == 2 })
	start := time.Now()
	_, err = r1.Introduce(ctx, "two", in)
	if !errors.Is(err, rendezvous.ErrBusy) || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("third introduction: %v after %v, want ErrBusy at once", err, time.Since(start))
	}
	for range 2 {
		if err := <-results; !errors.Is(err, rendezvous.ErrTimeout) {
			t.Fatalf("unanswered introduction: %v, want ErrTimeout", err)
		}
	}
	if got := h2.n.Load(); got != 2 {
		t.Fatalf("server two got %d introductions, want 2", got)
	}
	// A server that is not running: no subscriber, ErrPeerOffline at once.
	if _, err := r1.Introduce(ctx, "gone", in); !errors.Is(err, rendezvous.ErrPeerOffline) {
		t.Fatalf("introduction to a server that is gone: %v, want ErrPeerOffline", err)
	}
}

// silentHandler counts introductions and never answers them.
type silentHandler struct{ n atomic.Int64 }

func (h *silentHandler) LocalPeers() []identity.PeerID { return nil }
func (h *silentHandler) Introduce(rendezvous.FleetIntro, func(rendezvous.FleetResult)) {
	h.n.Add(1)
}

// TestFleetRegistrationsBounded: what peers can make the fleet store is
// bounded by each server's MaxPeers: registrations beyond it are refused
// and leave no key in Redis; a peer that leaves takes its key with it.
func TestFleetRegistrationsBounded(t *testing.T) {
	rs := redistest.Start(t)
	srv := startFleetServer(t, "s1", rs.URL(), Config{}, rendezvous.ServerConfig{MaxPeers: 3})
	var clients []*rendezvous.Client
	for i := range 3 {
		clients = append(clients, startClient(t, fmt.Sprint("p", i), mustKey(t), srv))
	}
	for range 3 {
		k := mustKey(t)
		c, err := rendezvous.NewClient(rendezvous.ClientConfig{Key: k, Servers: []rendezvous.ServerAddr{srv.rs.ServerAddr()},
			Logger: testLogger(t, "extra"), DialTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err = c.Start(ctx)
		cancel()
		c.Close()
		if !errors.Is(err, rendezvous.ErrBusy) {
			t.Fatalf("registration beyond MaxPeers: %v, want ErrBusy", err)
		}
	}
	rc := rs.Client(t)
	keys := func() int {
		ks, err := rc.Keys(context.Background(), "reach:peer:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		return len(ks)
	}
	waitFor(t, 5*time.Second, "3 registrations in Redis", func() bool { return keys() == 3 })
	time.Sleep(200 * time.Millisecond)
	if n := keys(); n != 3 {
		t.Fatalf("%d registrations in Redis, want 3 (MaxPeers)", n)
	}
	clients[0].Close()
	waitFor(t, 5*time.Second, "the leaving peer's key gone", func() bool { return keys() == 2 })
}

// TestNewBadURL: a malformed --registry gives ErrBadURL; the forms the
// docs name are accepted.
func TestNewBadURL(t *testing.T) {
	for _, u := range []string{"", "http://127.0.0.1:6379", "127.0.0.1", "redis://[::1", "a:1,,b"} {
		if r, err := New(u, Config{}); !errors.Is(err, ErrBadURL) {
			if r != nil {
				r.Close()
			}
			t.Errorf("New(%q): %v, want ErrBadURL", u, err)
		}
	}
	for _, u := range []string{"redis://127.0.0.1:6379", "redis://:secret@127.0.0.1:6379/2", "rediss://redis.example:6380", "10.0.0.1:7000,10.0.0.2:7000"} {
		r, err := New(u, Config{})
		if err != nil {
			t.Errorf("New(%q): %v", u, err)
			continue
		}
		r.Close()
	}
}
