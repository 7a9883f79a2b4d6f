package main

import (
	"io"
	"net/http"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/relay/relaymetrics"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/rendezvous/fleet"
	"github.com/reachp2p/reach/rendezvous/rendezvousmetrics"
)

// serverRegistry is the registry reach server's /metrics serves: the Go
// runtime and process, reach_build_info, the rendezvous server's
// reach_rendezvous_* and, unless rl is nil (--no-relay), the relay's
// reach_relay_*. docs/server.md lists them; docs/grafana/reach-server.json
// charts them (TestGrafanaDashboardMetrics checks it names no other).
// With a fleet registry (--registry), reach_fleet_* too.
func serverRegistry(rs *rendezvous.Server, rl *relay.Server, fr *fleet.Registry) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "reach_build_info",
		Help:        "Always 1; the labels name the build: version (module version or devel REVISION) and goversion.",
		ConstLabels: prometheus.Labels{"version": buildVersion(), "goversion": runtime.Version()},
	})
	build.Set(1)
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), build} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	if err := rendezvousmetrics.Register(reg, rs); err != nil {
		return nil, err
	}
	if rl != nil {
		if err := relaymetrics.Register(reg, rl); err != nil {
			return nil, err
		}
	}
	if fr != nil {
		for _, c := range fleetCollectors(fr) {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return reg, nil
}

// fleetCollectors export the fleet registry's Redis counters.
func fleetCollectors(fr *fleet.Registry) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "reach_fleet_redis_operations_total",
			Help: "Redis commands of the fleet registry (each of a pipeline counts one)."},
			func() float64 { return float64(fr.Stats().Ops) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "reach_fleet_redis_errors_total",
			Help: "Redis operations of the fleet registry that failed (a pipeline counts one)."},
			func() float64 { return float64(fr.Stats().Errors) }),
		redisLatency{fr},
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "reach_fleet_registrations_dropped_total",
			Help: "Registrations not queued for Redis because the queue was full (the next refresh writes them)."},
			func() float64 { return float64(fr.Stats().Dropped) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "reach_fleet_introductions_in_flight",
			Help: "Introductions handed to other servers and waiting for their answer now."},
			func() float64 { return float64(fr.Stats().Inflight) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "reach_fleet_redis_up",
			Help: "1 if the fleet registry's last Redis operation succeeded, else 0."},
			func() float64 {
				if fr.Stats().Healthy {
					return 1
				}
				return 0
			}),
	}
}

// descRedisLatency: the fleet registry's latency histograms.
var descRedisLatency = prometheus.NewDesc("reach_fleet_redis_operation_duration_seconds",
	"Latency of the fleet registry's Redis operations, failed ones included, by operation: lookup (a dialled peer's home server), "+
		"publish (an introduction or answer to another server), write (a pipeline of registrations), refresh (a pipeline of the periodic refresh), "+
		"servers (listing the live servers).", []string{"op"}, nil)

// redisLatency exports fleet.Stats.Latency as Prometheus histograms,
// every operation from the start (at zero until its first).
type redisLatency struct{ fr *fleet.Registry }

func (redisLatency) Describe(ch chan<- *prometheus.Desc) { ch <- descRedisLatency }

func (c redisLatency) Collect(ch chan<- prometheus.Metric) {
	for op, h := range c.fr.Stats().Latency {
		buckets := make(map[float64]uint64, len(h.Bounds))
		for i, b := range h.Bounds {
			buckets[b.Seconds()] = h.Cumulative[i]
		}
		ch <- prometheus.MustNewConstHistogram(descRedisLatency, h.Count, h.Sum.Seconds(), buckets, op)
	}
}

// metricsHandler serves /metrics from reg and /healthz ("ok").
func metricsHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	return mux
}
