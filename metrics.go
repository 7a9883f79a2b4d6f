package reach

import (
	"sync"

	"github.com/reachp2p/reach/internal/holepunch"
)

// Counting what a node does, for monitoring (package reachmetrics exports
// it to Prometheus; this package does not import Prometheus). The counts
// come from the places every session and path event already passes
// through: Node.accepted for sessions, Node.event for path events, the
// race's per-rung results (rung.Attempt.Result) and the hole punching
// rung's listening side (rung.Host.ListenerPunch).

// InboundStrategy is the strategy Metrics counts a session under when
// the peer opened it straight to the node's socket: the node cannot tell
// which of the peer's rungs (direct, upnp, holepunch) made it; the
// dialling side's metrics can.
const InboundStrategy = "inbound"

// strategyLabel is how Metrics names a session's strategy.
func strategyLabel(s string) string {
	if s == "" {
		return InboundStrategy
	}
	return s
}

// Attempt outcomes (Metrics.Attempts).
const (
	// AttemptConnected: the rung made a session (usually the winner; a
	// loser's late session is closed).
	AttemptConnected = "connected"
	// AttemptFailed: the rung gave up before the race ended.
	AttemptFailed = "failed"
	// AttemptCancelled: another rung won, or the dial's ctx ended, while
	// the rung was still trying.
	AttemptCancelled = "cancelled"
)

// Outcomes of the hole punches a node runs as the listening side of an
// introduction (Metrics.ListenerPunches); the dialling side's are in
// Metrics.Attempts under StrategyHolepunch.
const (
	// PunchHeard: the dialler's checks reached the node, or answered its
	// own: both NATs let the pair through.
	PunchHeard = holepunch.OutcomeHeard
	// PunchUnheard: nothing came from the dialler while the node punched
	// (Config.PunchLinger).
	PunchUnheard = holepunch.OutcomeUnheard
	// PunchSkipped: not punched, over Config.PunchLimits.
	PunchSkipped = holepunch.OutcomeSkipped
	// PunchNoCandidates: not punched, the dialler offered no address the
	// node may punch (none public, none on its own LAN).
	PunchNoCandidates = holepunch.OutcomeNoCandidates
)

// Upgrade kinds (Metrics.Upgrades).
const (
	// UpgradeMoved: sessions with a peer moved from a forwarded path to a
	// direct one without breaking (PathMoved with a direct Path).
	UpgradeMoved = "moved"
	// UpgradeSession: a new session on a better path replaced a forwarded
	// one for new streams (PathUpgraded).
	UpgradeSession = "new_session"
)

// Path loss reasons (Metrics.PathLosses).
const (
	// LossSilent: a direct path went silent and the peer's sessions fell
	// back to a forwarded path (PathMoved without a direct Path).
	LossSilent = "silent"
	// LossSupernode: the volunteer carrying a session vanished
	// (PathSupernodeLost).
	LossSupernode = "supernode_lost"
)

// AttemptKey names one count of Metrics.Attempts.
type AttemptKey struct {
	Strategy string // the rung: StrategyDirect, StrategyHolepunch, ...
	Outcome  string // AttemptConnected, AttemptFailed or AttemptCancelled
}

// Metrics is a snapshot of what a node counted since New. Counts only
// grow; Sessions is the state now.
type Metrics struct {
	// Sessions are the open sessions, by the rung that carries each now
	// (a session that moved counts under its new path's rung;
	// InboundStrategy for one the peer opened straight to the node).
	Sessions map[string]int
	// SessionsOpened are the sessions the node took, dialled or accepted
	// (upgrades included), by the rung that made them.
	SessionsOpened map[string]uint64
	// Attempts are the node's dials' rung attempts, by rung and outcome
	// (hole punching is Strategy "holepunch").
	Attempts map[AttemptKey]uint64
	// ListenerPunches are the hole punches the node ran as the listening
	// side of an introduction, by outcome (PunchHeard, PunchUnheard,
	// PunchSkipped, PunchNoCandidates): one for each introduction whose
	// dialler asked for a punch, counted when its outcome is known
	// (heard: at once; unheard: after PunchLinger), except punches the
	// node's Close cut short.
	ListenerPunches map[string]uint64
	// RelayFallbacks are dialled sessions that only a forwarding rung
	// could make (PathRelayed), by that rung.
	RelayFallbacks map[string]uint64
	// UpgradeAttempts and UpgradeFailures count the background searches
	// for a better path while a session is forwarded; Upgrades the ones
	// that found it, by kind (UpgradeMoved, UpgradeSession).
	UpgradeAttempts, UpgradeFailures uint64
	Upgrades                         map[string]uint64
	// PathLosses are direct or volunteer paths lost under a session, by
	// reason (LossSilent, LossSupernode).
	PathLosses map[string]uint64
}

// nodeCounts are a node's counters behind Metrics.
type nodeCounts struct {
	mu                 sync.Mutex
	opened             map[string]uint64
	attempts           map[AttemptKey]uint64
	punches            map[string]uint64
	fallbacks          map[string]uint64
	upgrades           map[string]uint64
	losses             map[string]uint64
	upAttempts, upFail uint64
}

// add adds one to m[k], making m if needed.
func add[K comparable](m *map[K]uint64, k K) {
	if *m == nil {
		*m = make(map[K]uint64)
	}
	(*m)[k]++
}

// session counts a session the node took.
func (c *nodeCounts) session(strategy string) {
	c.mu.Lock()
	add(&c.opened, strategyLabel(strategy))
	c.mu.Unlock()
}

// attempt counts one rung's result in a race (rung.Attempt.Result).
func (c *nodeCounts) attempt(strategy string, err error, cancelled bool) {
	outcome := AttemptConnected
	switch {
	case cancelled:
		outcome = AttemptCancelled
	case err != nil:
		outcome = AttemptFailed
	}
	c.mu.Lock()
	add(&c.attempts, AttemptKey{strategy, outcome})
	c.mu.Unlock()
}

// listenerPunch counts a listening-side punch's outcome
// (rung.Host.ListenerPunch).
func (c *nodeCounts) listenerPunch(outcome string) {
	c.mu.Lock()
	add(&c.punches, outcome)
	c.mu.Unlock()
}

// event counts a path event.
func (c *nodeCounts) event(e PathEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch e.Kind {
	case PathRelayed:
		add(&c.fallbacks, e.Strategy)
	case PathUpgradeAttempt:
		c.upAttempts++
	case PathUpgradeFailed:
		c.upFail++
	case PathUpgraded:
		add(&c.upgrades, UpgradeSession)
	case PathMoved:
		if e.Path.IsValid() {
			add(&c.upgrades, UpgradeMoved)
		} else {
			add(&c.losses, LossSilent)
		}
	case PathSupernodeLost:
		add(&c.losses, LossSupernode)
	}
}

// Metrics returns a snapshot of what the node counted since New, for
// monitoring: package reachmetrics exports it as Prometheus metrics
// (reachmetrics.NewCollector). It does not block on the network.
func (n *Node) Metrics() Metrics {
	m := Metrics{Sessions: map[string]int{}}
	for _, s := range n.Sessions() {
		m.Sessions[strategyLabel(s.Strategy())]++
	}
	c := &n.counts
	c.mu.Lock()
	defer c.mu.Unlock()
	m.SessionsOpened = clone(c.opened)
	m.Attempts = clone(c.attempts)
	m.ListenerPunches = clone(c.punches)
	m.RelayFallbacks = clone(c.fallbacks)
	m.Upgrades = clone(c.upgrades)
	m.PathLosses = clone(c.losses)
	m.UpgradeAttempts, m.UpgradeFailures = c.upAttempts, c.upFail
	return m
}

// clone copies m; nil becomes an empty map.
func clone[K comparable](m map[K]uint64) map[K]uint64 {
	out := make(map[K]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
