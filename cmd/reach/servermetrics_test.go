package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/reachmetrics"
	"github.com/reachp2p/reach/rendezvous"
)

// metricsServer runs rendezvous, STUN and the relay on loopback, in
// process, with reach server's registry served over HTTP, until the test
// ends.
func metricsServer(t *testing.T) (cs string, reg *prometheus.Registry, metricsURL string) {
	t.Helper()
	rs, rl := loopbackServer(t)
	reg, err := serverRegistry(rs.Server, rl, nil)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(metricsHandler(reg))
	t.Cleanup(hs.Close)
	return rs.ConnectString(), reg, hs.URL + "/metrics"
}

// metricsNode starts a node on loopback, closed when the test ends.
func metricsNode(t *testing.T, name, server string, strategies ...string) *reach.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := reach.New(ctx, reach.Config{Servers: []string{server}, ListenAddr: netip.MustParseAddrPort("127.0.0.1:0"),
		Strategies: strategies, Logger: testLogger(t).With("n", name)})
	if err != nil {
		t.Fatalf("node %s: %v", name, err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// samples flattens metric families to name{label="value",...} -> value,
// labels sorted by name.
func samples(mfs map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
			}
			sort.Strings(ls)
			key := name
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			var v float64
			switch {
			case m.Counter != nil:
				v = m.Counter.GetValue()
			case m.Gauge != nil:
				v = m.Gauge.GetValue()
			case m.Untyped != nil:
				v = m.Untyped.GetValue()
			}
			out[key] = v
		}
	}
	return out
}

// scrape GETs a /metrics URL and parses the text exposition.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return samples(mfs)
}

// gather collects a node's collector in a registry of its own.
func gather(t *testing.T, n *reach.Node) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(reachmetrics.NewCollector(n))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	return samples(byName)
}

// echo writes msg on a stream of the dial and checks the listener's
// accept loop echoes it back.
func echo(t *testing.T, ctx context.Context, from *reach.Node, to reach.PeerID, msg string) *reach.Stream {
	t.Helper()
	conn, err := from.Dial(ctx, to)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
		t.Fatalf("echo: %q, %v", got, err)
	}
	return conn
}

// TestServerMetricsAfterSession runs a scripted session on loopback (an
// in-process server with reach server's registry, a listener, a dialler
// on the full ladder, one on the relay only, and a dial to a peer that
// never registered), then scrapes the server's /metrics over HTTP and the
// nodes' collectors, and checks the counters that should have moved did,
// by the amounts the script implies.
func TestServerMetricsAfterSession(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three nodes")
	}
	cs, _, url := metricsServer(t)
	before := scrape(t, url)
	for _, k := range []string{`reach_rendezvous_peers{transport="udp"}`, `reach_rendezvous_introductions_total{outcome="answered"}`,
		`reach_relay_bytes_total`, `reach_rendezvous_stun_requests_total`} {
		if v, ok := before[k]; !ok || v != 0 {
			t.Errorf("before any peer: %s = %v (present %v), want 0", k, v, ok)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lis := metricsNode(t, "lis", cs)
	full := metricsNode(t, "full", cs)
	relayed := metricsNode(t, "relayed", cs, reach.StrategyRelay)
	go func() { // echo every stream
		for {
			st, err := lis.Accept(ctx)
			if err != nil {
				return
			}
			go func() { io.Copy(st, st); st.Close() }()
		}
	}()
	direct := echo(t, ctx, full, lis.ID(), "over the best path")
	viaRelay := echo(t, ctx, relayed, lis.ID(), "through the relay")
	if s := viaRelay.Session().Strategy(); s != reach.StrategyRelay {
		t.Fatalf("relay-only dial: strategy %q", s)
	}
	stranger, _ := identity.GenerateKey()
	if _, err := full.Dial(ctx, stranger.ID()); !errors.Is(err, rendezvous.ErrUnknownPeer) {
		t.Errorf("dial to a peer never registered: %v, want ErrUnknownPeer", err)
	}

	// The server, scraped over HTTP as Prometheus would.
	m := scrape(t, url)
	want := func(key string, ok func(float64) bool, what string) {
		t.Helper()
		v, present := m[key]
		if !present || !ok(v) {
			t.Errorf("%s = %v (present %v), want %s", key, v, present, what)
		}
	}
	eq := func(n float64) func(float64) bool { return func(v float64) bool { return v == n } }
	atLeast := func(n float64) func(float64) bool { return func(v float64) bool { return v >= n } }
	want(`reach_rendezvous_peers{transport="udp"}`, eq(3), "3 (three nodes over QUIC)")
	want(`reach_rendezvous_peers{transport="tcp"}`, eq(0), "0")
	want(`reach_rendezvous_registrations_total{outcome="new"}`, atLeast(3), ">= 3")
	want(`reach_rendezvous_introductions_total{outcome="answered"}`, atLeast(2), ">= 2 (two dials)")
	want(`reach_rendezvous_introductions_total{outcome="unknown_peer"}`, eq(1), "1 (the stranger)")
	want(`reach_rendezvous_introductions_total{outcome="timeout"}`, eq(0), "0")
	want(`reach_rendezvous_stun_requests_total`, atLeast(1), ">= 1 (nodes learn their mapping)")
	want(`reach_rendezvous_rate_limited_total{limit="registration"}`, eq(0), "0")
	want(`reach_rendezvous_supernode_volunteers`, eq(0), "0")
	want(`reach_relay_connections_total{transport="udp"}`, atLeast(2), ">= 2 (both ends of the relayed session)")
	want(`reach_relay_bytes_total`, atLeast(float64(2*len("through the relay"))), "the echoed bytes at least")
	want(fmt.Sprintf(`reach_build_info{goversion=%q,version=%q}`, runtime.Version(), buildVersion()), eq(1), "1")

	// The nodes' collectors.
	problems, err := testutil.CollectAndLint(reachmetrics.NewCollector(full))
	if err != nil || len(problems) > 0 {
		t.Errorf("promlint of the node collector: %v %v", problems, err)
	}
	fm := gather(t, full)
	rm := gather(t, relayed)
	lm := gather(t, lis)
	ds := direct.Session().Strategy()
	if v := fm[fmt.Sprintf(`reach_node_sessions_opened_total{strategy=%q}`, ds)]; v != 1 {
		t.Errorf("full ladder: sessions_opened{%s} = %v, want 1", ds, v)
	}
	if v := fm[fmt.Sprintf(`reach_node_dial_attempts_total{outcome="connected",strategy=%q}`, ds)]; v < 1 {
		t.Errorf("full ladder: dial_attempts{%s,connected} = %v, want >= 1", ds, v)
	}
	if v := fm[`reach_node_relay_fallbacks_total{strategy="relay"}`]; v != 0 {
		t.Errorf("full ladder on loopback fell back to the relay %v times", v)
	}
	// The relay-only dialler: exactly one relay attempt, one fallback.
	if err := testutil.CollectAndCompare(reachmetrics.NewCollector(relayed), strings.NewReader(`
# HELP reach_node_relay_fallbacks_total Dialled sessions only a forwarding rung could make, by that rung (relay, turn, supernode).
# TYPE reach_node_relay_fallbacks_total counter
reach_node_relay_fallbacks_total{strategy="relay"} 1
reach_node_relay_fallbacks_total{strategy="supernode"} 0
reach_node_relay_fallbacks_total{strategy="turn"} 0
`), "reach_node_relay_fallbacks_total"); err != nil {
		t.Error(err)
	}
	if v := rm[`reach_node_dial_attempts_total{outcome="connected",strategy="relay"}`]; v != 1 {
		t.Errorf("relay-only: dial_attempts{relay,connected} = %v, want 1", v)
	}
	if v := rm[`reach_node_sessions_opened_total{strategy="relay"}`]; v != 1 {
		t.Errorf("relay-only: sessions_opened{relay} = %v, want 1", v)
	}
	// The listener took two sessions: one straight to its socket, one
	// through the relay.
	if v := lm[`reach_node_sessions_opened_total{strategy="inbound"}`] + lm[`reach_node_sessions_opened_total{strategy="relay"}`]; v != 2 {
		t.Errorf("listener: sessions opened %v, want 2: %v", v, lm)
	}
	var open float64
	for k, v := range lm {
		if strings.HasPrefix(k, "reach_node_sessions{") {
			open += v
		}
	}
	if open != 2 {
		t.Errorf("listener: %v open sessions, want 2", open)
	}

	// The relayed session looks for a direct path at once; with the relay
	// its only rung, none can validate one, so each search fails.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && gather(t, relayed)[`reach_node_upgrade_failures_total`] == 0 {
		time.Sleep(100 * time.Millisecond)
	}
	rm = gather(t, relayed)
	if a, f := rm[`reach_node_upgrade_attempts_total`], rm[`reach_node_upgrade_failures_total`]; a < 1 || f < 1 || f > a {
		t.Errorf("relayed: upgrade attempts %v, failures %v; want >= 1 each, failures <= attempts", a, f)
	}
	if v := rm[`reach_node_upgrades_total{kind="moved"}`] + rm[`reach_node_upgrades_total{kind="new_session"}`]; v != 0 {
		t.Errorf("relayed: %v upgrades without a rung that validates a path", v)
	}
	if v := rm[`reach_node_sessions{strategy="relay"}`]; v != 1 {
		t.Errorf("relayed: sessions{relay} = %v, want 1", v)
	}
}

// TestNodeMetricsPunchBothSides: a dial by hole punching alone is
// counted on both sides: the dialler's holepunch rung connected, and the
// listener's punch for that introduction heard the dialler (the only
// listening-side punch, as the dialler asked for no other).
func TestNodeMetricsPunchBothSides(t *testing.T) {
	cs, _, _ := metricsServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lis := metricsNode(t, "lis", cs)
	punch := metricsNode(t, "punch", cs, reach.StrategyHolepunch)
	go func() {
		for {
			st, err := lis.Accept(ctx)
			if err != nil {
				return
			}
			go func() { io.Copy(st, st); st.Close() }()
		}
	}()
	conn := echo(t, ctx, punch, lis.ID(), "punched through")
	if s := conn.Session().Strategy(); s != reach.StrategyHolepunch {
		t.Fatalf("holepunch-only dial: strategy %q", s)
	}
	if v := gather(t, punch)[`reach_node_dial_attempts_total{outcome="connected",strategy="holepunch"}`]; v != 1 {
		t.Errorf("dialler: dial_attempts{holepunch,connected} = %v, want 1", v)
	}
	// The listener counts its side once it heard the dialler, which the
	// session proves it did; the count may trail the session by a moment.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && gather(t, lis)[`reach_node_listener_punches_total{outcome="heard"}`] == 0 {
		time.Sleep(20 * time.Millisecond)
	}
	if err := testutil.CollectAndCompare(reachmetrics.NewCollector(lis), strings.NewReader(`
# HELP reach_node_listener_punches_total Hole punches the node ran as the listening side of an introduction, by outcome (heard: the dialler's checks came through; unheard: none while it punched; skipped: over the punch limits; no_candidates: no address of the dialler it may punch). The dialling side's are reach_node_dial_attempts_total{strategy="holepunch"}.
# TYPE reach_node_listener_punches_total counter
reach_node_listener_punches_total{outcome="heard"} 1
reach_node_listener_punches_total{outcome="no_candidates"} 0
reach_node_listener_punches_total{outcome="skipped"} 0
reach_node_listener_punches_total{outcome="unheard"} 0
`), "reach_node_listener_punches_total"); err != nil {
		t.Error(err)
	}
	if v := gather(t, punch)[`reach_node_listener_punches_total{outcome="heard"}`]; v != 0 {
		t.Errorf("the dialler counted %v listening-side punches", v)
	}
	if problems, err := testutil.CollectAndLint(reachmetrics.NewCollector(lis)); err != nil || len(problems) > 0 {
		t.Errorf("promlint of the node collector: %v %v", problems, err)
	}
}

// TestServerMetricsLint: the server's registry follows Prometheus's naming
// conventions (promlint: _total counters, base units, help on every
// metric).
func TestServerMetricsLint(t *testing.T) {
	_, reg, _ := metricsServer(t)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "reach_") {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
	if len(problems) == 0 {
		t.Log("promlint: no problems")
	}
}
