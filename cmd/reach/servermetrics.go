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
	"github.com/reachp2p/reach/rendezvous/rendezvousmetrics"
)

// serverRegistry is the registry reach server's /metrics serves: the Go
// runtime and process, reach_build_info, the rendezvous server's
// reach_rendezvous_* and, unless rl is nil (--no-relay), the relay's
// reach_relay_*. docs/server.md lists them; docs/grafana/reach-server.json
// charts them (TestGrafanaDashboardMetrics checks it names no other).
func serverRegistry(rs *rendezvous.Server, rl *relay.Server) (*prometheus.Registry, error) {
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
	return reg, nil
}

// metricsHandler serves /metrics from reg and /healthz ("ok").
func metricsHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	return mux
}
