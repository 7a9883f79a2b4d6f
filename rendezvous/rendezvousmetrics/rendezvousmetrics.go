// Package rendezvousmetrics exports a rendezvous server's counters
// (rendezvous.Server.Stats and Breakdown) as Prometheus metrics, all
// prefixed reach_rendezvous_. Like relay/relaymetrics, it keeps
// Prometheus out of package rendezvous: the server binary (reach server
// --metrics) registers this package's collector, and a program that
// embeds the server may too.
//
// The collector reads a snapshot at every scrape; every known label value
// is exported, at zero until its first event. docs/server.md lists the
// metrics and what to alert on.
package rendezvousmetrics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/reachp2p/reach/rendezvous"
)

// ErrNoServer is returned by Register for a nil server.
var ErrNoServer = errors.New("rendezvousmetrics: no rendezvous server")

// Registration outcomes (reach_rendezvous_registrations_total).
const (
	RegNew         = "new"          // a peer not registered before
	RegReplaced    = "replaced"     // replaced the peer's older connection
	RegRateLimited = "rate_limited" // refused: over its source's or peer ID's rate
	RegFull        = "full"         // refused: the server is at its peer limit
)

// Rate limits (reach_rendezvous_rate_limited_total).
const (
	LimitConnection   = "connection"   // new connections over their source's rate or a handshake cap
	LimitRegistration = "registration" // registrations (also counted as rate_limited registrations)
	LimitIntroduction = "introduction" // introductions (also counted as rate_limited introductions)
	LimitSTUN         = "stun"         // STUN binding requests, dropped
	LimitCode         = "code"         // short-code reservations and claims
)

// Short-code outcomes (reach_rendezvous_code_requests_total).
const (
	CodeStored  = "stored"  // a code was put
	CodeClaimed = "claimed" // a code was claimed with the right proof
	CodeWrong   = "wrong"   // a claim with a wrong proof
	CodeBurnt   = "burnt"   // a code burnt by wrong proofs
	CodeRefused = "refused" // a reservation refused: the server's or the source's cap
)

var (
	descPeers = prometheus.NewDesc("reach_rendezvous_peers",
		"Peers registered now, by transport of their signalling (udp: QUIC; tcp: TLS, directly or in a WebSocket).", []string{"transport"}, nil)
	descTCPParked = prometheus.NewDesc("reach_rendezvous_tcp_readers_parked",
		"TCP registrations whose reader is parked now (no goroutine until their connection has bytes).", nil, nil)
	descRegs = prometheus.NewDesc("reach_rendezvous_registrations_total",
		"Registrations, by outcome (new, replaced, rate_limited, full).", []string{"outcome"}, nil)
	descIntros = prometheus.NewDesc("reach_rendezvous_introductions_total",
		"Introductions asked for, by outcome (answered, rejected, timeout, unknown_peer, peer_offline, busy, rate_limited, bad_request, registry_unavailable, not_woken: a parked peer did not come back).", []string{"outcome"}, nil)
	descSTUN = prometheus.NewDesc("reach_rendezvous_stun_requests_total",
		"STUN binding requests answered (main and alternate port).", nil, nil)
	descLimited = prometheus.NewDesc("reach_rendezvous_rate_limited_total",
		"Requests refused or dropped by a per-source limit, by limit (connection, registration, introduction, stun, code).", []string{"limit"}, nil)
	descVolunteers = prometheus.NewDesc("reach_rendezvous_supernode_volunteers",
		"Supernode volunteers admitted now.", nil, nil)
	descHandshakeFail = prometheus.NewDesc("reach_rendezvous_handshake_failures_total",
		"TLS or QUIC handshakes that failed or timed out.", nil, nil)
	descTLSTake = prometheus.NewDesc("reach_rendezvous_tls_takeover_total",
		"TLS connections of the TCP ports (WebSockets' outer TLS, TCP registrations) after their handshake, by whether the server took their record layer over (taken) or crypto/tls kept it (kept: not TLS 1.3 with AES-128-GCM).", []string{"outcome"}, nil)
	descHandshakes = prometheus.NewDesc("reach_rendezvous_handshakes",
		"Handshakes in progress now.", nil, nil)
	descRetries = prometheus.NewDesc("reach_rendezvous_quic_retries_total",
		"QUIC handshakes asked to prove their address first (Retry).", nil, nil)
	descProtoErr = prometheus.NewDesc("reach_rendezvous_protocol_errors_total",
		"Connections closed for breaking the protocol.", nil, nil)
	descFleet = prometheus.NewDesc("reach_rendezvous_fleet_introductions_total",
		"Introductions between servers of a fleet (--registry), by direction: sent (a dialler here, its target on another server), served (from another server, delivered to a peer here).", []string{"direction"}, nil)
	descRegistryErr = prometheus.NewDesc("reach_rendezvous_registry_unavailable_total",
		"Dials that failed because the fleet's shared registry (Redis) could not be asked.", nil, nil)
	descCodes = prometheus.NewDesc("reach_rendezvous_codes",
		"Short codes waiting for their receiver now.", nil, nil)
	descCodeSlots = prometheus.NewDesc("reach_rendezvous_code_slots",
		"Short-code slots kept now, every state (reserved, waiting, spent).", nil, nil)
	descCodeReqs = prometheus.NewDesc("reach_rendezvous_code_requests_total",
		"Short-code mailbox events, by outcome (stored, claimed, wrong, burnt, refused).", []string{"outcome"}, nil)
	descDropped = prometheus.NewDesc("reach_rendezvous_dropped_packets_total",
		"Datagrams on the QUIC port that were neither QUIC nor a valid STUN binding request.", nil, nil)
)

// Collector is a prometheus.Collector of one rendezvous server's metrics.
type Collector struct {
	s *rendezvous.Server
}

// NewCollector returns a collector of s's metrics, to register with a
// prometheus.Registerer.
func NewCollector(s *rendezvous.Server) *Collector { return &Collector{s: s} }

// Register registers a collector of s's metrics with reg.
func Register(reg prometheus.Registerer, s *rendezvous.Server) error {
	if s == nil {
		return ErrNoServer
	}
	return reg.Register(NewCollector(s))
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeers, descTCPParked, descRegs, descIntros, descSTUN, descLimited, descVolunteers,
		descHandshakeFail, descTLSTake, descHandshakes, descRetries, descProtoErr, descDropped, descCodes, descCodeSlots, descCodeReqs,
		descFleet, descRegistryErr} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	b := c.s.Breakdown()
	counter := func(d *prometheus.Desc, n uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), labels...)
	}
	gauge := func(d *prometheus.Desc, n int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(n), labels...)
	}
	for t, n := range b.Peers {
		gauge(descPeers, n, t)
	}
	gauge(descTCPParked, st.TCPReadersParked)
	counter(descRegs, b.RegistrationsNew, RegNew)
	counter(descRegs, st.Replaced, RegReplaced)
	counter(descRegs, st.RegistrationsLimited, RegRateLimited)
	counter(descRegs, b.RegistrationsFull, RegFull)
	for o, n := range b.Introductions {
		counter(descIntros, n, o)
	}
	counter(descSTUN, st.STUNRequests)
	counter(descLimited, st.ConnsRefused, LimitConnection)
	counter(descLimited, st.RegistrationsLimited, LimitRegistration)
	counter(descLimited, st.IntrosLimited, LimitIntroduction)
	counter(descLimited, st.STUNLimited, LimitSTUN)
	gauge(descVolunteers, len(c.s.Volunteers()))
	counter(descHandshakeFail, st.FailedHandshakes)
	counter(descTLSTake, st.TLSTaken, "taken")
	counter(descTLSTake, st.TLSKept, "kept")
	gauge(descHandshakes, st.Handshakes)
	counter(descRetries, st.Retries)
	counter(descProtoErr, st.ProtocolErrors)
	counter(descDropped, st.DroppedPackets)
	counter(descFleet, st.FleetIntrosSent, "sent")
	counter(descFleet, st.FleetIntrosServed, "served")
	counter(descRegistryErr, st.RegistryErrors)
	cs := c.s.CodeStats()
	gauge(descCodes, cs.Live)
	gauge(descCodeSlots, cs.Slots)
	counter(descCodeReqs, cs.Puts, CodeStored)
	counter(descCodeReqs, cs.Claims, CodeClaimed)
	counter(descCodeReqs, cs.Wrong, CodeWrong)
	counter(descCodeReqs, cs.Burnt, CodeBurnt)
	counter(descCodeReqs, cs.Refused, CodeRefused)
	counter(descLimited, cs.Limited, LimitCode)
}
