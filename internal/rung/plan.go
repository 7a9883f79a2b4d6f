package rung

import "time"

// Defaults of the forwarding delay (see ForwardDelay).
const (
	// DefaultForwardDelay is the most the forwarding rungs wait after a
	// dial starts while the peer-to-peer rungs are still trying.
	DefaultForwardDelay = time.Second
	// blockedForwardDelay replaces it when one side's UDP looks blocked
	// (it registered over TCP): then only a LAN path could beat a relay.
	blockedForwardDelay = 250 * time.Millisecond
	// adaptiveSlack is added to twice the introduction's duration.
	adaptiveSlack = 150 * time.Millisecond
	// adaptiveFloor is the least the adaptive delay waits, so that a busy
	// machine's slow hole punch is not overtaken on a fast path.
	adaptiveFloor = 400 * time.Millisecond
	// MaxPatience caps what a Patient rung may ask: a dial that cannot go
	// direct is relayed within it.
	MaxPatience = 2 * time.Second
)

// ForwardDelay is how long after a dial starts the first forwarding rung
// joins the race while the rungs before it are still trying.
//
// configured, when positive, is used as it is (Config.RelayDelay).
// Otherwise the wait adapts to the path: intro is how long the
// introduction took (offer to the server, on to the peer, answer back:
// each access link crossed twice, like a round trip between the peers).
// The peer-to-peer rungs finish within about two such round trips when
// they can work at all, so the forwarding rungs join after
// 2*intro + adaptiveSlack, never sooner than adaptiveFloor nor later
// than DefaultForwardDelay. Either way the delay is at most
// blockedForwardDelay when either side has no UDP (udp false).
func ForwardDelay(configured, intro time.Duration, udp bool) time.Duration {
	d := configured
	if d <= 0 {
		d = DefaultForwardDelay
		if intro > 0 {
			d = min(d, max(2*intro+adaptiveSlack, adaptiveFloor))
		}
	}
	if !udp {
		d = min(d, blockedForwardDelay)
	}
	return d
}

// Patience is the longest wait the Patient rungs of ladder ask of the
// forwarding rungs for a, capped at MaxPatience (0: none asks).
func Patience(a *Attempt, ladder []Entry, intro time.Duration) time.Duration {
	var d time.Duration
	for _, e := range ladder {
		if p, ok := e.Rung.(Patient); ok {
			d = max(d, p.Patience(a, intro))
		}
	}
	return min(d, MaxPatience)
}

// Plan is the per-dial policy: it adapts a node's ladder to the peer's
// answer in a. Each rung's Plan may change its head start or drop it for
// this dial; then the rung before the first forwarding rung gets what is
// left of forwardDelay as its head start, so the forwarding rungs join
// forwardDelay after the dial starts even though hole punching may try
// for 10 s before it fails. (A failure of every earlier rung still starts
// them at once: see Race.) The ladder given is not modified.
func Plan(a *Attempt, ladder []Entry, forwardDelay time.Duration) []Entry {
	out := make([]Entry, 0, len(ladder))
	for _, e := range ladder {
		hs, ok := e.Rung.Plan(a, e.HeadStart)
		if !ok {
			continue
		}
		e.HeadStart = hs
		out = append(out, e)
	}
	var before time.Duration
	for i, e := range out {
		if !e.Forwards {
			before += e.HeadStart
			continue
		}
		if i > 0 {
			before -= out[i-1].HeadStart
			out[i-1].HeadStart = max(forwardDelay-before, 0)
		}
		break
	}
	return out
}
