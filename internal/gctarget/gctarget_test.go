package gctarget

import (
	"errors"
	"math"
	"runtime/debug"
	"testing"
)

// restore puts the runtime's GC settings back after a test.
func restore(t *testing.T) {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	l := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetGCPercent(p); debug.SetMemoryLimit(l) })
}

func env(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

// TestApply: zero means the default percent and no limit; a set value is
// what the runtime then runs with; the environment's GOGC and GOMEMLIMIT
// win over the config.
func TestApply(t *testing.T) {
	restore(t)
	debug.SetGCPercent(50) // so that the default is seen set
	a, err := Apply(Config{}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if a.Percent != DefaultPercent || a.LimitFrom != "none" || a.Limit != math.MaxInt64 {
		t.Errorf("zero config: %+v, want GOGC %d and no limit", a, DefaultPercent)
	}
	if p := debug.SetGCPercent(DefaultPercent); p != DefaultPercent {
		t.Errorf("runtime GOGC %d, want %d", p, DefaultPercent)
	}

	a, err = Apply(Config{Percent: 300, Limit: 1 << 30}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if p := debug.SetGCPercent(300); p != 300 || debug.SetMemoryLimit(-1) != 1<<30 || a.LimitFrom != "config" {
		t.Errorf("runtime GOGC %d, limit %d (%+v), want 300 and 1 GiB", p, debug.SetMemoryLimit(-1), a)
	}

	// The user's environment: the runtime read it at start (here: what
	// is set now stands for it) and Apply leaves it.
	debug.SetGCPercent(50)
	debug.SetMemoryLimit(2 << 30)
	a, err = Apply(Config{Percent: 400, Limit: 1 << 30}, env(map[string]string{"GOGC": "50", "GOMEMLIMIT": "2GiB"}))
	if err != nil {
		t.Fatal(err)
	}
	if a.Percent != 50 || a.PercentFrom != "GOGC" || a.Limit != 2<<30 || a.LimitFrom != "GOMEMLIMIT" {
		t.Errorf("with GOGC and GOMEMLIMIT set: %+v, want theirs", a)
	}
	if p := debug.SetGCPercent(50); p != 50 || debug.SetMemoryLimit(-1) != 2<<30 {
		t.Errorf("runtime GOGC %d, limit %d: the environment's were changed", p, debug.SetMemoryLimit(-1))
	}
}

// TestApplyRefusesNoGC: GC off without a memory limit would let the heap
// grow without bound; a negative limit is an error too.
func TestApplyRefusesNoGC(t *testing.T) {
	restore(t)
	if _, err := Apply(Config{Percent: -1}, env(nil)); !errors.Is(err, ErrUnbounded) {
		t.Errorf("GC off with no limit: %v, want ErrUnbounded", err)
	}
	if _, err := Apply(Config{Limit: -5}, env(nil)); !errors.Is(err, ErrBadLimit) {
		t.Errorf("negative limit: %v, want ErrBadLimit", err)
	}
	a, err := Apply(Config{Percent: -1, Limit: 1 << 30}, env(nil))
	if err != nil || a.Percent != -1 {
		t.Errorf("GC off with a limit: %+v, %v", a, err)
	}
}
