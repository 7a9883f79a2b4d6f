package fleet

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/reachp2p/reach/internal/redistest"
	"github.com/reachp2p/reach/rendezvous"
)

// TestLatencyBuckets: a duration lands in the first bucket whose bound is
// at least it (bounds are inclusive, as Prometheus's le), one past every
// bound only in the count, and the snapshot's cumulative counts and sum
// add up.
func TestLatencyBuckets(t *testing.T) {
	var l latency
	for _, d := range []time.Duration{100 * time.Microsecond, 101 * time.Microsecond, 3 * time.Millisecond, 2 * time.Second} {
		l.observe(d)
	}
	h := l.snapshot()
	if h.Count != 4 || h.Sum != 100*time.Microsecond+101*time.Microsecond+3*time.Millisecond+2*time.Second {
		t.Fatalf("count %d, sum %v", h.Count, h.Sum)
	}
	if len(h.Bounds) != len(h.Cumulative) || h.Bounds[0] != 100*time.Microsecond || h.Bounds[len(h.Bounds)-1] != time.Second {
		t.Fatalf("bounds %v, cumulative %v", h.Bounds, h.Cumulative)
	}
	want := map[time.Duration]uint64{100 * time.Microsecond: 1, 250 * time.Microsecond: 2, 2500 * time.Microsecond: 2,
		5 * time.Millisecond: 3, time.Second: 3}
	for i, b := range h.Bounds {
		if w, ok := want[b]; ok && h.Cumulative[i] != w {
			t.Errorf("le %v: %d, want %d", b, h.Cumulative[i], w)
		}
		if i > 0 && h.Cumulative[i] < h.Cumulative[i-1] {
			t.Errorf("cumulative counts fall at le %v: %v", b, h.Cumulative)
		}
	}
	if m := h.Mean(); m != h.Sum/4 {
		t.Errorf("mean %v", m)
	}
	h.Bounds[0] = 0
	if latencyBounds[0] != 100*time.Microsecond {
		t.Fatal("a snapshot shares the registry's bounds")
	}
}

// TestRegistryLatency: a running registry times every kind of Redis
// operation it makes, each in its own histogram: the lookups a dial to
// an unknown peer makes (one each, failed ones included), the periodic
// refresh, the writes of registrations and the listing of servers.
func TestRegistryLatency(t *testing.T) {
	rds := redistest.Start(t)
	srv := startFleetServer(t, "s1", rds.URL(), Config{}, rendezvous.ServerConfig{})
	reg := srv.reg
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	const lookups = 20
	for range lookups {
		if _, err := reg.Lookup(ctx, mustKey(t).ID()); !errors.Is(err, rendezvous.ErrUnknownPeer) {
			t.Fatalf("lookup of a peer nobody registered: %v", err)
		}
	}
	startClient(t, "A", mustKey(t), srv) // its registration is written
	if _, err := reg.Servers(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the registration written and refreshed", func() bool {
		st := reg.Stats()
		return st.Latency[OpWrite].Count >= 1 && st.Latency[OpRefresh].Count >= 1
	})
	st := reg.Stats()
	if len(st.Latency) != 5 {
		t.Fatalf("histograms for %d operations, want 5: %v", len(st.Latency), st.Latency)
	}
	if h := st.Latency[OpLookup]; h.Count != lookups || h.Sum <= 0 || h.Mean() > time.Second {
		t.Errorf("lookups: count %d (want %d), sum %v, mean %v", h.Count, lookups, h.Sum, h.Mean())
	}
	// Ours, and the server's own (it hands clients the fleet's list).
	if h := st.Latency[OpServers]; h.Count < 1 {
		t.Errorf("servers listed %d times, want >= 1", h.Count)
	}
	if h := st.Latency[OpPublish]; h.Count != 0 {
		t.Errorf("%d publishes without an introduction", h.Count)
	}
	// A Redis on loopback answers well within the default OpTimeout.
	for op, h := range st.Latency {
		if h.Count > 0 && h.Cumulative[len(h.Cumulative)-1] != h.Count {
			t.Errorf("%s: %d of %d operations took over %v", op, h.Count-h.Cumulative[len(h.Cumulative)-1], h.Count, h.Bounds[len(h.Bounds)-1])
		}
		t.Logf("%s: %d operations, mean %v", op, h.Count, h.Mean())
	}

	// With Redis gone a lookup fails, and is still timed.
	rds.Stop()
	if _, err := reg.Lookup(ctx, mustKey(t).ID()); !errors.Is(err, rendezvous.ErrRegistryUnavailable) {
		t.Fatalf("lookup with Redis down: %v", err)
	}
	if n := reg.Stats().Latency[OpLookup].Count; n != lookups+1 {
		t.Errorf("failed lookup not timed: %d lookups", n)
	}
}
