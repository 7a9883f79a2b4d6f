package relay

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the relay server's Prometheus metrics (all prefixed
// reach_relay_), plus plain counters for Stats.
type metrics struct {
	clients  *prometheus.GaugeVec   // connected peers, by transport
	conns    *prometheus.CounterVec // links accepted, by transport
	rejected *prometheus.CounterVec // links refused, by reason
	auth     *prometheus.CounterVec // token failures, by reason
	sessions prometheus.Gauge       // relay sessions now
	packets  prometheus.Counter     // packets forwarded
	bytes    prometheus.Counter     // payload bytes forwarded
	drops    *prometheus.CounterVec // packets dropped, by reason

	nPackets, nBytes, nDrops, nAuth atomic.Uint64
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "reach_relay_clients",
			Help: "Peers connected to the relay, by link transport."}, []string{"transport"}),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "reach_relay_connections_total",
			Help: "Relay links accepted, by transport."}, []string{"transport"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "reach_relay_rejected_total",
			Help: "Relay links refused before registration, by reason (full, rate_limited, handshake)."}, []string{"reason"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "reach_relay_auth_failures_total",
			Help: "Relay links refused for their token, by reason (bad_token, token_expired)."}, []string{"reason"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "reach_relay_sessions",
			Help: "Relay sessions (ordered pairs of peers with recent packets)."}),
		packets: prometheus.NewCounter(prometheus.CounterOpts{Name: "reach_relay_packets_total",
			Help: "Packets forwarded."}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "reach_relay_bytes_total",
			Help: "Payload bytes forwarded."}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "reach_relay_drops_total",
			Help: "Packets dropped, by reason (no_peer, session_limit, peer_rate, total_rate, queue_full, malformed)."}, []string{"reason"}),
	}
	// Known label values start at zero, so they show before the first event.
	for _, r := range []string{"no_peer", "session_limit", "peer_rate", "total_rate", "queue_full", "malformed"} {
		m.drops.WithLabelValues(r)
	}
	for _, r := range []string{"bad_token", "token_expired"} {
		m.auth.WithLabelValues(r)
	}
	for _, r := range []string{"full", "rate_limited", "handshake"} {
		m.rejected.WithLabelValues(r)
	}
	for _, t := range []string{"udp", "tls"} {
		m.clients.WithLabelValues(t)
		m.conns.WithLabelValues(t)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.clients, m.conns, m.rejected, m.auth, m.sessions, m.packets, m.bytes, m.drops} {
			reg.MustRegister(c)
		}
	}
	return m
}

func (m *metrics) drop(reason string) {
	m.nDrops.Add(1)
	m.drops.WithLabelValues(reason).Inc()
}
