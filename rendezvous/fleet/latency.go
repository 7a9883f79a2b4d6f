package fleet

import (
	"slices"
	"sync/atomic"
	"time"
)

// Redis operations the registry times, one histogram each
// (Stats.Latency; reach server exports them as
// reach_fleet_redis_operation_duration_seconds{op}).
const (
	// OpLookup: a peer's home server, asked when a dial names a peer not
	// registered on this server.
	OpLookup = "lookup"
	// OpPublish: an introduction handed to another server, or the answer
	// to one, published on that server's channel.
	OpPublish = "publish"
	// OpWrite: a pipeline of queued registrations and unregistrations.
	OpWrite = "write"
	// OpRefresh: a pipeline of the periodic refresh: the heartbeat, or a
	// batch of this server's registrations.
	OpRefresh = "refresh"
	// OpServers: listing the fleet's live servers.
	OpServers = "servers"
)

// opKind indexes Registry.lat.
type opKind int

const (
	kindLookup opKind = iota
	kindPublish
	kindWrite
	kindRefresh
	kindServers
	nKinds
)

var opNames = [nKinds]string{OpLookup, OpPublish, OpWrite, OpRefresh, OpServers}

// latencyBounds are the histograms' bucket upper bounds: from a Redis on
// the same host (about 100 µs) to Config.OpTimeout's default (500 ms)
// and beyond.
var latencyBounds = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second,
}

// latency is one operation's histogram: counts per bucket (the last one
// past every bound) and the total time.
type latency struct {
	counts [len(latencyBounds) + 1]atomic.Uint64
	sumNS  atomic.Uint64
}

func (l *latency) observe(d time.Duration) {
	i := 0
	for i < len(latencyBounds) && d > latencyBounds[i] {
		i++
	}
	l.counts[i].Add(1)
	l.sumNS.Add(uint64(max(d, 0)))
}

// Histogram is the latency of one kind of timed Redis operation, failed
// ones included (Stats.Errors counts those), in the shape Prometheus
// histograms take.
type Histogram struct {
	// Bounds are the buckets' upper bounds, ascending; Cumulative[i] is
	// how many operations took at most Bounds[i].
	Bounds     []time.Duration
	Cumulative []uint64
	// Count is how many operations were timed, Sum their total time.
	Count uint64
	Sum   time.Duration
}

// Mean is the operations' mean latency (zero before the first).
func (h Histogram) Mean() time.Duration {
	if h.Count == 0 {
		return 0
	}
	return h.Sum / time.Duration(h.Count)
}

// snapshot reads l. Count is the sum of the buckets read, so the
// cumulative counts never exceed it even while operations finish.
func (l *latency) snapshot() Histogram {
	h := Histogram{Bounds: slices.Clone(latencyBounds[:]), Cumulative: make([]uint64, len(latencyBounds))}
	for i := range l.counts {
		h.Count += l.counts[i].Load()
		if i < len(latencyBounds) {
			h.Cumulative[i] = h.Count
		}
	}
	h.Sum = time.Duration(l.sumNS.Load())
	return h
}

// timed runs f, adding its duration to the histogram of kind.
func (r *Registry) timed(kind opKind, f func() error) error {
	t := time.Now()
	err := f()
	r.lat[kind].observe(time.Since(t))
	return err
}
