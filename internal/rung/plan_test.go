package rung

import (
	"context"
	"testing"
	"time"

	"github.com/reachp2p/reach/stream"
)

// planRung is a rung whose Plan is given.
type planRung struct {
	Base
	name string
	hs   time.Duration // -1: keep the table's
	skip bool
}

func (r *planRung) Name() string { return r.name }
func (r *planRung) Connect(context.Context, *Attempt) (*stream.Session, error) {
	return nil, ErrNoSession
}
func (r *planRung) Plan(_ *Attempt, hs time.Duration) (time.Duration, bool) {
	if r.hs >= 0 {
		hs = r.hs
	}
	return hs, !r.skip
}

func names(l []Entry) (out []string, hs []time.Duration) {
	for _, e := range l {
		out = append(out, e.Rung.Name())
		hs = append(hs, e.HeadStart)
	}
	return out, hs
}

func TestPlan(t *testing.T) {
	ms := time.Millisecond
	ladder := []Entry{
		{Rung: &planRung{name: "direct", hs: 0}, HeadStart: 20 * ms},      // its Plan says: no head start
		{Rung: &planRung{name: "upnp", hs: 200 * ms}, HeadStart: 20 * ms}, // its Plan raises it
		{Rung: &planRung{name: "holepunch", hs: -1}, HeadStart: 20 * ms},
		{Rung: &planRung{name: "supernode", hs: -1, skip: true}, HeadStart: time.Second, Forwards: true},
		{Rung: &planRung{name: "relay", hs: -1}, HeadStart: 20 * ms, Forwards: true},
	}
	got, hs := names(Plan(&Attempt{}, ladder, 700*ms))
	wantNames := []string{"direct", "upnp", "holepunch", "relay"}
	// holepunch, the rung before the first forwarding one left, gets what
	// is left of the delay: 700 - (0 + 200).
	wantHS := []time.Duration{0, 200 * ms, 500 * ms, 20 * ms}
	if len(got) != len(wantNames) {
		t.Fatalf("Plan = %v, want %v", got, wantNames)
	}
	for i := range got {
		if got[i] != wantNames[i] || hs[i] != wantHS[i] {
			t.Errorf("entry %d: %s %v, want %s %v", i, got[i], hs[i], wantNames[i], wantHS[i])
		}
	}
	if ladder[0].HeadStart != 20*ms || ladder[2].HeadStart != 20*ms {
		t.Error("Plan modified the ladder it was given")
	}

	// Rungs before the forwarding ones that already used up the delay:
	// the forwarding rungs start right after them.
	_, hs = names(Plan(&Attempt{}, ladder, 100*ms))
	if hs[2] != 0 {
		t.Errorf("head start before relay = %v, want 0 (the delay is spent)", hs[2])
	}

	// A forwarding rung first: nothing to delay.
	only := []Entry{{Rung: &planRung{name: "relay", hs: -1}, HeadStart: 20 * ms, Forwards: true}}
	if _, hs := names(Plan(&Attempt{}, only, time.Second)); hs[0] != 20*ms {
		t.Errorf("relay alone: head start %v", hs[0])
	}
}

func TestForwardDelay(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		configured, intro time.Duration
		udp               bool
		want              time.Duration
	}{
		{0, 0, true, DefaultForwardDelay},                 // no measure: the default
		{0, 10 * ms, true, adaptiveFloor},                 // fast path: the floor
		{0, 200 * ms, true, 550 * ms},                     // 2*200 + 150
		{0, 2 * time.Second, true, DefaultForwardDelay},   // slow: capped
		{0, 200 * ms, false, blockedForwardDelay},         // UDP blocked on a side
		{3 * time.Second, 10 * ms, true, 3 * time.Second}, // configured: as it is
		{3 * time.Second, 10 * ms, false, blockedForwardDelay},
	} {
		if got := ForwardDelay(tc.configured, tc.intro, tc.udp); got != tc.want {
			t.Errorf("ForwardDelay(%v, %v, %v) = %v, want %v", tc.configured, tc.intro, tc.udp, got, tc.want)
		}
	}
}

// patientRung asks the forwarding rungs for a wait.
type patientRung struct {
	planRung
	wait time.Duration
}

func (r *patientRung) Patience(_ *Attempt, intro time.Duration) time.Duration { return r.wait + intro }

// TestPatience: the longest wish of the Patient rungs, capped at
// MaxPatience; rungs that are not Patient ask nothing.
func TestPatience(t *testing.T) {
	ms := time.Millisecond
	plain := Entry{Rung: &planRung{name: "direct", hs: -1}}
	short := Entry{Rung: &patientRung{planRung: planRung{name: "a", hs: -1}, wait: 300 * ms}}
	long := Entry{Rung: &patientRung{planRung: planRung{name: "b", hs: -1}, wait: 900 * ms}}
	huge := Entry{Rung: &patientRung{planRung: planRung{name: "c", hs: -1}, wait: time.Hour}}
	for _, tc := range []struct {
		ladder []Entry
		want   time.Duration
	}{
		{nil, 0},
		{[]Entry{plain}, 0},
		{[]Entry{plain, short, long}, 910 * ms},
		{[]Entry{long, short}, 910 * ms},
		{[]Entry{short, huge}, MaxPatience},
	} {
		if got := Patience(&Attempt{}, tc.ladder, 10*ms); got != tc.want {
			t.Errorf("Patience(%d rungs) = %v, want %v", len(tc.ladder), got, tc.want)
		}
	}
}
