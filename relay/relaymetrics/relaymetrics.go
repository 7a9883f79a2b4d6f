// Package relaymetrics exports a relay server's counters
// (relay.Server.Metrics) as Prometheus metrics, all prefixed reach_relay_.
// Package relay counts in plain atomics and does not import Prometheus, so
// programs that embed the SDK (or run a supernode) do not link it; the
// server binary (reach server --metrics) registers this package's
// collector.
//
// The collector reads a snapshot at every scrape; every known label value
// is exported, at zero until its first event.
package relaymetrics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/reachp2p/reach/relay"
)

// ErrNoServer is returned by Register for a nil server.
var ErrNoServer = errors.New("relaymetrics: no relay server")

// The metrics, with the names, help texts and labels reach server has
// always exported.
var (
	descClients = prometheus.NewDesc("reach_relay_clients",
		"Peers connected to the relay, by link transport.", []string{"transport"}, nil)
	descConns = prometheus.NewDesc("reach_relay_connections_total",
		"Relay links accepted, by transport.", []string{"transport"}, nil)
	descRejected = prometheus.NewDesc("reach_relay_rejected_total",
		"Relay links refused before registration, by reason (full, rate_limited, handshake, ip_links).", []string{"reason"}, nil)
	descAuth = prometheus.NewDesc("reach_relay_auth_failures_total",
		"Relay links refused for their token, by reason (bad_token, token_expired), or for their key proof (key_proof).", []string{"reason"}, nil)
	descSessions = prometheus.NewDesc("reach_relay_sessions",
		"Relay sessions (ordered pairs of peers with recent packets).", nil, nil)
	descStreams = prometheus.NewDesc("reach_relay_streams",
		"Relayed streams open (two peers both on byte-stream links).", nil, nil)
	descStreamsRefused = prometheus.NewDesc("reach_relay_streams_refused_total",
		"Relayed streams the relay refused to open, by reason (no_peer, not_stream, not_allowed, limit, protocol).", []string{"reason"}, nil)
	descPackets = prometheus.NewDesc("reach_relay_packets_total",
		"Packets forwarded.", nil, nil)
	descBytes = prometheus.NewDesc("reach_relay_bytes_total",
		"Payload bytes forwarded.", nil, nil)
	descDrops = prometheus.NewDesc("reach_relay_drops_total",
		"Packets dropped, by reason (no_peer, session_limit, peer_rate, total_rate, queue_full, malformed, peer_sessions, ip_sessions, not_allowed, unknown_link, token_expired).", []string{"reason"}, nil)
	descData = prometheus.NewDesc("reach_relay_data_packets_total",
		"Packets that came from (in) or went to (out) UDP links as data packets rather than QUIC DATAGRAM frames.", []string{"direction"}, nil)
	descDetached = prometheus.NewDesc("reach_relay_detached_links",
		"UDP relay links that live on as data packets alone, without a QUIC connection (counted in reach_relay_clients).", nil, nil)
	descParked = prometheus.NewDesc("reach_relay_parked_tls_links",
		"TLS relay links idle now without a goroutine, their connections held by the server's watcher (counted in reach_relay_clients).", nil, nil)
	descWoken = prometheus.NewDesc("reach_relay_tls_wakeups_total",
		"Times a parked TLS link's connection had something to read and its read loop started again.", nil, nil)
	descExpired = prometheus.NewDesc("reach_relay_token_expired_total",
		"Live relay links ended because their token expired.", nil, nil)
	descEvicted = prometheus.NewDesc("reach_relay_sessions_evicted_total",
		"Relay sessions ended in a full session table to make room for a source or network that held fewer.", nil, nil)
)

// Collector is a prometheus.Collector of one relay server's metrics.
type Collector struct {
	s *relay.Server
}

// NewCollector returns a collector of s's metrics, to register with a
// prometheus.Registerer.
func NewCollector(s *relay.Server) *Collector { return &Collector{s: s} }

// Register registers a collector of s's metrics with reg.
func Register(reg prometheus.Registerer, s *relay.Server) error {
	if s == nil {
		return ErrNoServer
	}
	return reg.Register(NewCollector(s))
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descClients, descConns, descRejected, descAuth, descSessions, descStreams, descStreamsRefused, descPackets, descBytes, descDrops, descData, descExpired, descDetached, descParked, descWoken, descEvicted} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	m := c.s.Metrics()
	for t, n := range m.Clients {
		ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, float64(n), t)
	}
	counters := func(d *prometheus.Desc, byLabel map[string]uint64) {
		for l, n := range byLabel {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), l)
		}
	}
	counters(descConns, m.Connections)
	counters(descRejected, m.Rejected)
	counters(descAuth, m.AuthFailures)
	counters(descDrops, m.Drops)
	counters(descStreamsRefused, m.StreamsRefused)
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(m.Sessions))
	ch <- prometheus.MustNewConstMetric(descStreams, prometheus.GaugeValue, float64(m.Streams))
	ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(m.Packets))
	ch <- prometheus.MustNewConstMetric(descData, prometheus.CounterValue, float64(m.DataIn), "in")
	ch <- prometheus.MustNewConstMetric(descData, prometheus.CounterValue, float64(m.DataOut), "out")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(m.Bytes))
	ch <- prometheus.MustNewConstMetric(descExpired, prometheus.CounterValue, float64(m.Expired))
	ch <- prometheus.MustNewConstMetric(descDetached, prometheus.GaugeValue, float64(m.Detached))
	ch <- prometheus.MustNewConstMetric(descParked, prometheus.GaugeValue, float64(m.Parked))
	ch <- prometheus.MustNewConstMetric(descWoken, prometheus.CounterValue, float64(m.Woken))
	ch <- prometheus.MustNewConstMetric(descEvicted, prometheus.CounterValue, float64(m.Evicted))
}
