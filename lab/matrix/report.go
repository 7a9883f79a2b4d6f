package matrix

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Files written by WriteFiles.
const (
	MarkdownFile = "matrix.md"
	JSONFile     = "matrix.json"
	PNGFile      = "matrix.png"
)

// WriteFiles writes the Markdown table, the JSON and the PNG heatmap into
// dir (created if missing).
func (r *Result) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, MarkdownFile), []byte(r.Markdown()), 0o644); err != nil {
		return err
	}
	for name, write := range map[string]func(io.Writer) error{JSONFile: r.WriteJSON, PNGFile: r.WritePNG} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		err = write(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("matrix: %s: %w", name, err)
		}
	}
	return nil
}

// WriteJSON writes the result as indented JSON.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ReadJSON reads a result WriteJSON wrote, e.g. to render it again.
func ReadJSON(r io.Reader) (*Result, error) {
	var res Result
	if err := json.NewDecoder(r).Decode(&res); err != nil {
		return nil, fmt.Errorf("matrix: reading a result: %w", err)
	}
	return &res, nil
}

// StrategySummary is the connect time of the directions one strategy won.
type StrategySummary struct {
	Strategy string
	// Label is Strategy, with the dialler's link for the relay
	// ("relay (tls)"): the link decides how soon the relay joins.
	Label      string
	Directions int
	// RTTs: the median, lowest and highest of the directions' median
	// connect times in round trips; MS the same in milliseconds.
	RTTs, RTTsMin, RTTsMax float64
	MS, MSMin, MSMax       float64
	// Mbps is the median of the directions' median throughputs.
	Mbps float64
}

// ByStrategy summarises connect times per winning strategy, in ladder
// order.
func (r *Result) ByStrategy() []StrategySummary {
	groups := map[string][]Direction{}
	for _, d := range r.Directions {
		if d.Strategy == "" {
			continue
		}
		label := d.Strategy
		if l := relayLinks(d); d.Strategy == Relay && l != "" {
			label += " (" + l + ")"
		}
		groups[label] = append(groups[label], d)
	}
	var out []StrategySummary
	for label, ds := range groups {
		var rtts, mss, mbps []float64
		for _, d := range ds {
			rtts = append(rtts, d.ConnectRTTs)
			mss = append(mss, d.ConnectMedianMS)
			if d.Mbps > 0 {
				mbps = append(mbps, d.Mbps)
			}
		}
		out = append(out, StrategySummary{
			Strategy: ds[0].Strategy, Label: label, Directions: len(ds),
			RTTs: round(median(rtts)), RTTsMin: slices.Min(rtts), RTTsMax: slices.Max(rtts),
			MS: round(median(mss)), MSMin: slices.Min(mss), MSMax: slices.Max(mss),
			Mbps: round(median(mbps)),
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if ri, rj := rank(out[i].Strategy), rank(out[j].Strategy); ri != rj {
			return ri < rj
		}
		return out[i].Label < out[j].Label
	})
	return out
}

// Markdown renders the result: a summary, the dialer × listener grid,
// connect times per strategy, every direction, and the flagged ones.
func (r *Result) Markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	connected, best := 0, 0
	for _, d := range r.Directions {
		if d.Connected == len(d.Attempts) && len(d.Attempts) > 0 {
			connected++
		}
		if !d.Worse {
			best++
		}
	}
	p("Directions: **%d**; every attempt connected: **%d**; as good as possible: **%d**; flagged: **%d**.",
		len(r.Directions), connected, best, len(r.Directions)-best)
	if n := fellBack(r.Directions); n > 0 {
		p(" Fell back where the best path is found by chance only (◇, not flagged): %d of the birthday cells' dials.", n)
	}
	p("\n\n")
	p("Run %s, %s, %d dial(s) per direction with fresh nodes, %s, %s transfer, ladder %s, %s",
		r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Duration, r.Runs, r.topology(),
		fmtSize(r.Size), strings.Join(r.Ladder, " → "), r.GoVersion)
	if r.Commit != "" {
		p(", commit %s", r.Commit)
	}
	p(".\n\n")
	for _, n := range r.Notes {
		p("Note: %s.\n\n", n)
	}

	unit := "in round trips"
	if !r.inRTTs() {
		unit = "in ms"
	}
	p("#### Grid: winning strategy and connect time %s (dialer ↓, listener →)\n\n", unit)
	p("| dialer \\ listener |")
	for _, k := range r.Kinds {
		p(" %s |", k)
	}
	p("\n|---|")
	for range r.Kinds {
		p("---|")
	}
	p("\n")
	for _, dk := range r.Kinds {
		p("| **%s** |", dk)
		for _, lk := range r.Kinds {
			d, ok := r.Lookup(dk, lk)
			p(" %s |", r.gridCell(d, ok))
		}
		p("\n")
	}
	p("\n✗: no attempt connected; ⚠: worse than possible, a failure or a forwarded path where the peers could have their own (or IPv4 where both have IPv6); △: a peer-to-peer rung other than the best one won (the same kind of path); ~: mixed outcomes; ◇: the best path is found by chance only (holepunch's birthday mode) and some dials fell back to the forwarder, as allowed. Reasons below.\n\n")

	p("#### Connect time by winning strategy\n\n")
	p("Dial → first echoed byte, median over the directions each strategy won (their own medians), in round trips of the path (measured by pings on the session) and in ms; range in brackets.\n\n")
	p("| strategy (dialler's relay link) | directions | round trips | ms | one stream, Mbit/s |\n|---|---|---|---|---|\n")
	for _, s := range r.ByStrategy() {
		p("| %s | %d | **%.1f** [%.1f–%.1f] | %.0f [%.0f–%.0f] | %.0f |\n", s.Label, s.Directions,
			s.RTTs, s.RTTsMin, s.RTTsMax, s.MS, s.MSMin, s.MSMax, s.Mbps)
	}

	p("\n#### Every direction\n\n")
	p("| dialer → listener | connected | won | best possible | connect median / worst (ms) | path RTT (ms) | connect (RTTs) | Mbit/s | |\n")
	p("|---|---|---|---|---|---|---|---|---|\n")
	for _, d := range r.Directions {
		flag := flagMark(d)
		won := d.Strategy
		if len(d.Strategies) > 1 {
			won = strategiesText(d)
		}
		if won == "" {
			won = "✗"
		}
		if d.Strategy == Relay {
			if links := relayLinks(d); links != "" {
				won += " (" + links + ")"
			}
		}
		if m := modes(d); m != "" {
			won += " [" + m + "]"
		}
		best := d.Best
		if d.Fallback != "" {
			best += " (else " + d.Fallback + ")"
		}
		if r.IPv6 && d.Connected > 0 {
			won += fmt.Sprintf(", IPv6 %d/%d", d.Connected-notIPv6(&d), d.Connected)
		}
		if d.BestIPv6 {
			best += " (IPv6)"
		}
		p("| %s → %s | %d/%d | %s | %s | %s / %s | %s | %s | %s | %s |\n", d.Dialer, d.Listener, d.Connected, len(d.Attempts),
			won, best, num(d.ConnectMedianMS, 0), num(d.ConnectWorstMS, 0), num(d.RTTMS, 1), num(d.ConnectRTTs, 1), num(d.Mbps, 0), flag)
	}

	p("\n#### Worse than possible\n\n")
	flagged := r.Flagged()
	if len(flagged) == 0 {
		p("None: every direction connected with the best strategy possible for it.\n")
	}
	for _, d := range flagged {
		what := "failure or forwarded path"
		switch {
		case d.Severity == SeverityRung:
			what = "another peer-to-peer rung"
		case d.BestIPv6 && notIPv6(&d) > 0 && d.Connected == len(d.Attempts) && !forwarded(d):
			what = "an IPv4 path where IPv6 was best"
		}
		best := d.Best
		if d.BestIPv6 {
			best += " over IPv6"
		}
		p("- **%s → %s** (%s): %s. Best possible: %s (%s).\n", d.Dialer, d.Listener, what, d.Reason, best, d.BestWhy)
	}
	if fellBack(r.Directions) > 0 {
		p("\n#### Fell back where the best path is found by chance only (◇, not flagged)\n\n")
		for _, d := range r.Directions {
			if !d.Worse && d.FellBack > 0 {
				p("- **%s → %s**: %s. Best possible: %s (%s).\n", d.Dialer, d.Listener, d.Reason, d.Best, d.BestWhy)
			}
		}
	}
	return b.String()
}

// topology describes the run's links and addresses in words.
func (r *Result) topology() string {
	var s string
	switch {
	case r.DelayMS == 0 && r.ServerDelayMS == 0:
		s = "no delay on any link"
	case r.DelayMS == 0:
		s = "no delay on the access links"
	default:
		s = fmt.Sprintf("%s one-way delay on every access link (peer-to-peer round trip %s)", fmtMS(r.DelayMS), fmtMS(4*r.DelayMS))
	}
	if r.ServerDelayMS > 0 {
		s += fmt.Sprintf(", %s one-way on the server's link (peer-to-server round trip %s)",
			fmtMS(r.ServerDelayMS), fmtMS(2*(r.DelayMS+r.ServerDelayMS)))
	} else if r.DelayMS > 0 {
		s += fmt.Sprintf(", the server's link not delayed (peer-to-server round trip %s)", fmtMS(2*r.DelayMS))
	}
	if r.IPv6 {
		s += ", dual-stack sites (global IPv6 behind stateful firewalls)"
	}
	return s
}

// inRTTs: connect times are stated in round trips of the path. Not when
// the path has no delay of its own to speak of (zero delay) or the server
// is much further than the peer (far server): there they are in ms.
func (r *Result) inRTTs() bool { return r.DelayMS >= 10 && r.ServerDelayMS == 0 }

// forwarded reports whether some attempt of d was forwarded.
func forwarded(d Direction) bool {
	for s := range d.Strategies {
		if Forwarded(s) {
			return true
		}
	}
	return false
}

// gridCell is one cell of the Markdown grid.
func (r *Result) gridCell(d Direction, ok bool) string {
	if !ok {
		return ""
	}
	if d.Connected == 0 {
		return "✗"
	}
	s := d.Strategy
	if len(d.Strategies) > 1 || d.Connected < len(d.Attempts) {
		s = "~" + s
	}
	if r.inRTTs() {
		s = fmt.Sprintf("%s %.1f", s, d.ConnectRTTs)
	} else {
		s = fmt.Sprintf("%s %.0f ms", s, d.ConnectMedianMS)
	}
	if m := flagMark(d); m != "" {
		s += " " + m
	}
	return s
}

// flagMark marks a direction worse than possible: ⚠ for a failure or a
// forwarded path, △ for another peer-to-peer rung; and ◇ one that is not,
// but fell back where the best path is found by chance only.
func flagMark(d Direction) string {
	switch {
	case !d.Worse && d.FellBack > 0:
		return "◇"
	case !d.Worse:
		return ""
	case d.Severity == SeverityRung:
		return "△"
	}
	return "⚠"
}

// modes counts how the attempts' strategies made their paths, by the
// first words of their details ("port prediction 3/3", "birthday 2/3");
// "" when no attempt's strategy said more.
func modes(d Direction) string {
	count := map[string]int{}
	for _, a := range d.Attempts {
		if m, _, ok := strings.Cut(a.Detail, ":"); ok && a.OK {
			count[m]++
		}
	}
	var parts []string
	for m, n := range count {
		parts = append(parts, fmt.Sprintf("%s %d/%d", m, n, len(d.Attempts)))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// fellBack counts the attempts that fell back where Best is found by
// chance only.
func fellBack(ds []Direction) int {
	n := 0
	for _, d := range ds {
		n += d.FellBack
	}
	return n
}

func strategiesText(d Direction) string {
	var parts []string
	for s, n := range d.Strategies {
		parts = append(parts, fmt.Sprintf("%s %d", s, n))
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	return strings.Join(parts, ", ")
}

// relayLinks lists the dialler's relay link transports of a direction.
func relayLinks(d Direction) string {
	var links []string
	for _, a := range d.Attempts {
		if a.Link != "" && !slices.Contains(links, a.Link) {
			links = append(links, a.Link)
		}
	}
	return strings.Join(links, "/")
}

func num(f float64, prec int) string {
	if f == 0 {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, f)
}

func fmtMS(f float64) string { return fmt.Sprintf("%g ms", f) }

func fmtSize(n int) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d B", n)
}
