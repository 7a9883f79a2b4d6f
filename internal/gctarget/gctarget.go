// Package gctarget sets the Go runtime's garbage-collection target for a
// process whose heap is mostly long-lived state, such as `reach server`
// holding many idle peers.
//
// Each collection marks everything live, so the cost of one grows with
// the peers held, and it runs beside the data plane's traffic (which
// allocates next to nothing since issue 14): a higher GOGC makes
// collections rarer at the price of a heap that may grow further past
// what is live before the next one, and a soft memory limit
// (debug.SetMemoryLimit) caps that growth where the machine needs it
// capped. A user's GOGC and GOMEMLIMIT environment variables win: the
// runtime read them at start, and Apply leaves them alone.
package gctarget

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// Named errors. Test with errors.Is.
var (
	// ErrUnbounded: GC off (a negative percent) with no memory limit.
	ErrUnbounded = errors.New("gctarget: GC off needs a memory limit")
	// ErrBadLimit: a negative memory limit.
	ErrBadLimit = errors.New("gctarget: negative memory limit")
)

// DefaultPercent is the GOGC a server runs with unless told otherwise:
// Go's own, a collection once the heap grew by what was live after the
// last one. 200 was measured against it (docs/benchmarks.md, "Forwarding
// without allocation, and a GC target"): with forwarding allocation-free
// it took no collection out of the floods measured and cost half again
// as much RSS per idle peer at 10,000, so it is an operator's choice
// (--gc-percent), not the default.
const DefaultPercent = 100

// Config is a GC target.
type Config struct {
	// Percent is GOGC: how far the heap grows past what was live, in
	// percent, before the next collection. 0: DefaultPercent; negative:
	// off (collections only as the heap nears Limit; with no Limit, never:
	// Apply refuses that).
	Percent int
	// Limit is the soft memory limit in bytes (runtime/debug.SetMemoryLimit):
	// the runtime collects more often as the Go heap and its other memory
	// near it, whatever Percent says. 0: none.
	Limit int64
}

// Applied is what Apply set (or left as the environment set it).
type Applied struct {
	Percent     int    // the GOGC in effect (-1: off)
	Limit       int64  // the memory limit in effect (math.MaxInt64: none)
	PercentFrom string // "config" or "GOGC" (the environment's)
	LimitFrom   string // "config", "GOMEMLIMIT" or "none"
}

// Apply sets c's target on the runtime. getenv reads the environment
// (os.Getenv): where GOGC or GOMEMLIMIT is set, that setting is the
// user's and stays.
func Apply(c Config, getenv func(string) string) (Applied, error) {
	if c.Limit < 0 {
		return Applied{}, fmt.Errorf("%w: %d", ErrBadLimit, c.Limit)
	}
	envGOGC, envLimit := getenv("GOGC") != "", getenv("GOMEMLIMIT") != ""
	if c.Percent < 0 && c.Limit == 0 && !envGOGC && !envLimit {
		return Applied{}, fmt.Errorf("%w (percent %d)", ErrUnbounded, c.Percent)
	}
	var a Applied
	if envLimit {
		a.Limit, a.LimitFrom = debug.SetMemoryLimit(-1), "GOMEMLIMIT"
	} else if c.Limit > 0 {
		a.Limit, a.LimitFrom = c.Limit, "config"
		debug.SetMemoryLimit(c.Limit)
	} else {
		a.Limit, a.LimitFrom = debug.SetMemoryLimit(-1), "none"
	}
	if envGOGC {
		// SetGCPercent returns the previous setting: put it back.
		p := debug.SetGCPercent(100)
		debug.SetGCPercent(p)
		a.Percent, a.PercentFrom = p, "GOGC"
	} else {
		p := c.Percent
		if p == 0 {
			p = DefaultPercent
		}
		if p < 0 {
			p = -1
		}
		debug.SetGCPercent(p)
		a.Percent, a.PercentFrom = p, "config"
	}
	return a, nil
}
