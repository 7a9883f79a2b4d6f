package main

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/reachp2p/reach/rendezvous/fleet"
)

// The dashboard of docs/grafana, checked against the server's registry so
// it cannot rot: a renamed metric or label fails here.
const dashboardFile = "../../docs/grafana/reach-server.json"

// Target labels Prometheus adds to every series it scrapes.
var targetLabels = []string{"instance", "job"}

// promQLWords are PromQL's keywords and aggregation modifiers: identifiers
// that are not metric names.
var promQLWords = []string{"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
	"and", "or", "unless", "inf", "nan"}

var (
	reString     = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	reSelector   = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}`)
	reMatcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	reGrouping   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	reRange      = regexp.MustCompile(`\[[^\]]*\]`)
	reVariable   = regexp.MustCompile(`\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?`)
	reIdent      = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	reLabelValue = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)
)

// promQLRefs returns the metric names expr uses and, for each, the label
// names its selectors match on; grouping labels (by, without, on) go to
// every metric of the expression.
func promQLRefs(expr string) map[string][]string {
	refs := map[string][]string{}
	expr = reVariable.ReplaceAllString(expr, "1")
	// Selectors first, with their matchers, before strings are blanked.
	for _, m := range reSelector.FindAllStringSubmatch(expr, -1) {
		body := reString.ReplaceAllString(m[2], `""`)
		for _, lm := range reMatcher.FindAllStringSubmatch(body, -1) {
			refs[m[1]] = append(refs[m[1]], lm[1])
		}
	}
	rest := reString.ReplaceAllString(expr, `""`)
	rest = regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(rest, " ")
	rest = reRange.ReplaceAllString(rest, " ")
	var grouping []string
	for _, g := range reGrouping.FindAllStringSubmatch(rest, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				grouping = append(grouping, l)
			}
		}
	}
	rest = reGrouping.ReplaceAllString(rest, " ")
	for _, m := range reIdent.FindAllStringSubmatch(rest, -1) {
		id := strings.TrimSpace(strings.TrimSuffix(m[0], "("))
		if m[1] != "" || slices.Contains(promQLWords, strings.ToLower(id)) {
			continue // a function, or a keyword
		}
		if _, ok := refs[id]; !ok {
			refs[id] = nil
		}
	}
	for name := range refs {
		refs[name] = append(refs[name], grouping...)
	}
	return refs
}

// dashboardQueries returns every PromQL expression of the dashboard: the
// panels' targets (rows' nested panels too) and the query variables.
func dashboardQueries(t *testing.T, v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			switch s := val.(type) {
			case string:
				if k == "expr" || (k == "query" && strings.HasPrefix(s, "label_values(")) {
					out = append(out, s)
				}
			default:
				out = append(out, dashboardQueries(t, val)...)
			}
		}
	case []any:
		for _, e := range x {
			out = append(out, dashboardQueries(t, e)...)
		}
	}
	return out
}

func TestPromQLRefs(t *testing.T) {
	got := promQLRefs(`sum by (outcome) (rate(reach_x_total{instance=~"$instance",outcome!="a{b}"}[$__rate_interval])) / on() group_left sum(reach_y) or vector(0)`)
	want := map[string][]string{"reach_x_total": {"instance", "outcome", "outcome"}, "reach_y": {"outcome"}}
	if len(got) != len(want) {
		t.Fatalf("promQLRefs = %v, want %v", got, want)
	}
	for name, ls := range want {
		if !slices.Equal(got[name], ls) {
			t.Errorf("promQLRefs[%s] = %v, want %v", name, got[name], ls)
		}
	}
}

// panelIDs returns the id of every panel of the dashboard, rows' nested
// panels too.
func panelIDs(v any) []float64 {
	var out []float64
	switch x := v.(type) {
	case map[string]any:
		if ps, ok := x["panels"].([]any); ok {
			for _, p := range ps {
				if pm, ok := p.(map[string]any); ok {
					if id, ok := pm["id"].(float64); ok {
						out = append(out, id)
					}
					out = append(out, panelIDs(pm)...)
				}
			}
		}
	}
	return out
}

// TestGrafanaDashboardMetrics: every metric the dashboard queries exists
// in reach server's registry (with the relay and a fleet registry), with
// every label the queries match or group on; every reach_ metric of the
// server is charted; panel ids are unique (Grafana mixes up panels that
// share one).
func TestGrafanaDashboardMetrics(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	ids := panelIDs(dash)
	slices.Sort(ids)
	if len(ids) < 20 || len(slices.Compact(slices.Clone(ids))) != len(ids) {
		t.Errorf("panel ids not unique: %v", ids)
	}
	rs, rl := loopbackServer(t)
	// A registry that is never run: its metrics exist from the start.
	fr, err := fleet.New("redis://127.0.0.1:1", fleet.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fr.Close() })
	reg, err := serverRegistry(rs.Server, rl, fr)
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string][]string{} // metric -> its label names
	family := map[string]string{}   // a histogram's series -> its name
	for _, mf := range mfs {
		ls := slices.Clone(targetLabels)
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !slices.Contains(ls, lp.GetName()) {
					ls = append(ls, lp.GetName())
				}
			}
		}
		labels[mf.GetName()] = ls
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				family[mf.GetName()+suffix] = mf.GetName()
				labels[mf.GetName()+suffix] = ls
			}
			labels[mf.GetName()+"_bucket"] = append(slices.Clone(ls), "le")
		}
	}
	queries := dashboardQueries(t, dash)
	if len(queries) < 20 {
		t.Fatalf("found %d queries in the dashboard; the walk is broken", len(queries))
	}
	seen := map[string]bool{}
	for _, q := range queries {
		refs := promQLRefs(q)
		if m := reLabelValue.FindStringSubmatch(q); m != nil {
			refs = map[string][]string{m[1]: {m[2]}}
		}
		if len(refs) == 0 {
			t.Errorf("query %q names no metric", q)
		}
		for name, ls := range refs {
			seen[name] = true
			if f, ok := family[name]; ok {
				seen[f] = true
			}
			have, ok := labels[name]
			if !ok {
				t.Errorf("query %q: metric %s is not exported by reach server", q, name)
				continue
			}
			for _, l := range ls {
				if !slices.Contains(have, l) {
					t.Errorf("query %q: metric %s has no label %q (has %v)", q, name, l, have)
				}
			}
		}
	}
	// Every reach_ metric of the server is on the dashboard.
	for name := range labels {
		if _, series := family[name]; strings.HasPrefix(name, "reach_") && !series && !seen[name] {
			t.Errorf("reach server exports %s, but the dashboard does not chart it", name)
		}
	}
}
