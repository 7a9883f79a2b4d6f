// Package reachmetrics exports what a reach node counts (reach.Node.Metrics)
// as Prometheus metrics, all prefixed reach_node_. Package reach does not
// import Prometheus, so programs that embed the SDK link it only if they
// use this package:
//
//	reg.MustRegister(reachmetrics.NewCollector(node))
//
// The collector reads a snapshot at every scrape. Every known strategy
// and outcome is exported, at zero until its first event, so rates and
// alerts work from the start. docs/server.md ("Metrics") lists the
// metrics.
package reachmetrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/reachp2p/reach"
)

var (
	descSessions = prometheus.NewDesc("reach_node_sessions",
		"Open sessions, by the rung that carries each now.", []string{"strategy"}, nil)
	descOpened = prometheus.NewDesc("reach_node_sessions_opened_total",
		"Sessions the node took, dialled or accepted (upgrades included), by the rung that made them.", []string{"strategy"}, nil)
	descAttempts = prometheus.NewDesc("reach_node_dial_attempts_total",
		"Rung attempts in the node's dials, by rung and outcome (connected, failed, cancelled: another rung won first); hole punching is strategy=\"holepunch\".", []string{"strategy", "outcome"}, nil)
	descPunches = prometheus.NewDesc("reach_node_listener_punches_total",
		"Hole punches the node ran as the listening side of an introduction, by outcome (heard: the dialler's checks came through; unheard: none while it punched; skipped: over the punch limits; no_candidates: no address of the dialler it may punch). The dialling side's are reach_node_dial_attempts_total{strategy=\"holepunch\"}.", []string{"outcome"}, nil)
	descFallbacks = prometheus.NewDesc("reach_node_relay_fallbacks_total",
		"Dialled sessions only a forwarding rung could make, by that rung (relay, turn, supernode).", []string{"strategy"}, nil)
	descUpAttempts = prometheus.NewDesc("reach_node_upgrade_attempts_total",
		"Background searches for a better path while a session is forwarded.", nil, nil)
	descUpFailures = prometheus.NewDesc("reach_node_upgrade_failures_total",
		"Background searches that found no better path.", nil, nil)
	descUpgrades = prometheus.NewDesc("reach_node_upgrades_total",
		"Forwarded sessions given a better path, by kind (moved: the sessions moved without breaking; new_session: a new session for new streams).", []string{"kind"}, nil)
	descLosses = prometheus.NewDesc("reach_node_path_losses_total",
		"Paths lost under a session, by reason (silent: a direct path went quiet and the sessions fell back to a forwarded one; supernode_lost).", []string{"reason"}, nil)
)

// Collector is a prometheus.Collector of one node's metrics.
type Collector struct {
	n *reach.Node
}

// NewCollector returns a collector of n's metrics, to register with a
// prometheus.Registerer. Register one collector per node; several nodes
// in one registry need a label each (prometheus.WrapRegistererWith).
func NewCollector(n *reach.Node) *Collector { return &Collector{n: n} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descOpened, descAttempts, descPunches, descFallbacks,
		descUpAttempts, descUpFailures, descUpgrades, descLosses} {
		ch <- d
	}
}

// forwarding are the rungs a relay fallback can land on.
var forwarding = []string{reach.StrategySupernode, reach.StrategyTURN, reach.StrategyRelay}

// labels returns known, then the keys of the maps not in it (a strategy
// this package does not know yet still shows).
func labels[V any](known []string, maps ...map[string]V) []string {
	out := append([]string(nil), known...)
	for _, m := range maps {
		for k := range m {
			if !contains(out, k) {
				out = append(out, k)
			}
		}
	}
	return out
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	m := c.n.Metrics()
	counter := func(d *prometheus.Desc, n uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), labels...)
	}
	known := append(reach.Strategies(), reach.InboundStrategy)
	for _, s := range labels(known, m.Sessions) {
		ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(m.Sessions[s]), s)
	}
	for _, s := range labels(known, m.SessionsOpened) {
		counter(descOpened, m.SessionsOpened[s], s)
	}
	attempted := map[string]bool{}
	for k := range m.Attempts {
		attempted[k.Strategy] = true
	}
	for _, s := range labels(reach.Strategies(), attempted) {
		for _, o := range []string{reach.AttemptConnected, reach.AttemptFailed, reach.AttemptCancelled} {
			counter(descAttempts, m.Attempts[reach.AttemptKey{Strategy: s, Outcome: o}], s, o)
		}
	}
	for _, o := range labels([]string{reach.PunchHeard, reach.PunchUnheard, reach.PunchSkipped, reach.PunchNoCandidates}, m.ListenerPunches) {
		counter(descPunches, m.ListenerPunches[o], o)
	}
	for _, s := range labels(forwarding, m.RelayFallbacks) {
		counter(descFallbacks, m.RelayFallbacks[s], s)
	}
	counter(descUpAttempts, m.UpgradeAttempts)
	counter(descUpFailures, m.UpgradeFailures)
	for _, k := range labels([]string{reach.UpgradeMoved, reach.UpgradeSession}, m.Upgrades) {
		counter(descUpgrades, m.Upgrades[k], k)
	}
	for _, r := range labels([]string{reach.LossSilent, reach.LossSupernode}, m.PathLosses) {
		counter(descLosses, m.PathLosses[r], r)
	}
}
