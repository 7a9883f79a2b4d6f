package matrix

import (
	"bytes"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

func TestKinds(t *testing.T) {
	ks := Kinds()
	if len(ks) != len(natlab.Kinds())+1 || ks[len(ks)-1] != SymmetricUPnP {
		t.Fatalf("Kinds() = %v", ks)
	}
	if SymmetricUPnP.Base() != natlab.Kind(natlab.Symmetric) || !SymmetricUPnP.UPnP() || Kind(natlab.Open).UPnP() {
		t.Error("Base/UPnP of the kinds")
	}
	for _, k := range ks {
		if got, err := ParseKind(string(k)); err != nil || got != k {
			t.Errorf("ParseKind(%q) = %q, %v", k, got, err)
		}
	}
	if _, err := ParseKind("cone"); err == nil {
		t.Error("ParseKind accepted an unknown kind")
	}
	n := len(ks)
	if got := len(FullPairs()); got != n*(n+1)/2 {
		t.Errorf("%d full pairs, want %d", got, n*(n+1)/2)
	}
	for _, p := range ShortPairs() {
		if kindIndex(p.A) == len(ks) || kindIndex(p.B) == len(ks) {
			t.Errorf("short pair %v has an unknown kind", p)
		}
	}
}

// TestBest pins the physically possible strategy of the cells the brief
// names, with and without a supernode rung.
func TestBest(t *testing.T) {
	k := func(n natlab.NAT) Kind { return Kind(n) }
	open, full, restr, pr, sym, dbl := Kind(natlab.Open), k(natlab.FullCone), k(natlab.RestrictedCone), k(natlab.PortRestricted), k(natlab.Symmetric), Kind(natlab.KindDouble)
	blocked, proxy := k(natlab.UDPBlocked), k(natlab.ProxyOnly)
	base := []string{Direct, UPnP, Holepunch, Relay}
	withSN := []string{Direct, UPnP, Holepunch, Supernode, Relay}
	for _, tc := range []struct {
		dialer, listener Kind
		ladder           []string
		want             string
	}{
		{sym, open, base, Direct},
		{blocked, open, base, Relay},
		{open, proxy, base, Relay},
		{open, sym, base, Holepunch},
		{open, pr, base, Holepunch},
		{full, pr, base, Holepunch},
		{sym, full, base, Holepunch},
		{restr, sym, base, Holepunch},
		{dbl, dbl, base, Holepunch},
		{sym, sym, base, Relay},
		{sym, sym, withSN, Supernode},
		{pr, sym, withSN, Supernode},
		{sym, dbl, base, Relay},
		{sym, SymmetricUPnP, base, UPnP},
		{SymmetricUPnP, sym, base, Holepunch},
		{SymmetricUPnP, SymmetricUPnP, base, UPnP},
		{blocked, SymmetricUPnP, withSN, Relay},
	} {
		got, why := Best(tc.dialer, tc.listener, tc.ladder)
		if got != tc.want || why == "" {
			t.Errorf("Best(%s -> %s, %v) = %s (%s), want %s", tc.dialer, tc.listener, tc.ladder, got, why, tc.want)
		}
	}
}

// TestSummarise: medians, the worse-than-possible flag and its reason.
func TestSummarise(t *testing.T) {
	d := Direction{Dialer: Kind(natlab.PortRestricted), Listener: Kind(natlab.Open), Best: Direct, Attempts: []Attempt{
		{OK: true, Strategy: Direct, ConnectMS: 250, RTTMS: 80, Mbps: 50},
		{OK: true, Strategy: Relay, ConnectMS: 1100, RTTMS: 82, Mbps: 40},
		{OK: true, Strategy: Direct, ConnectMS: 260, RTTMS: 81, Mbps: 52},
	}}
	summarise(&d)
	if d.Connected != 3 || d.Strategy != Direct || d.ConnectMedianMS != 260 || d.ConnectWorstMS != 1100 || d.RTTMS != 81 || d.Mbps != 50 {
		t.Errorf("summary %+v", d)
	}
	if d.ConnectRTTs != 3.2 {
		t.Errorf("connect %v RTTs, want 3.2", d.ConnectRTTs)
	}
	if !d.Worse || !strings.Contains(d.Reason, "relay in 1 of 3") {
		t.Errorf("worse=%v reason %q", d.Worse, d.Reason)
	}
	ok := Direction{Best: Relay, Attempts: []Attempt{{OK: true, Strategy: Relay, ConnectMS: 700, RTTMS: 80}}}
	summarise(&ok)
	if ok.Worse || ok.Reason != "" {
		t.Errorf("relay where relay is best flagged: %q", ok.Reason)
	}
	failed := Direction{Best: Holepunch, Attempts: []Attempt{{Err: "boom"}}}
	summarise(&failed)
	if !failed.Worse || failed.Strategy != "" || !strings.Contains(failed.Reason, "boom") {
		t.Errorf("failed direction: %+v", failed)
	}
}

func sampleResult() *Result {
	r := &Result{Started: time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC), Duration: "5m0s", DelayMS: 20, Runs: 1, Size: 4 << 20,
		Ladder: []string{Direct, UPnP, Holepunch, Relay}, GoVersion: "go1.26", Kinds: Kinds()}
	for _, p := range FullPairs() {
		for _, dl := range [][2]Kind{{p.A, p.B}, {p.B, p.A}} {
			d := Direction{Dialer: dl[0], Listener: dl[1]}
			d.Best, d.BestWhy = Best(d.Dialer, d.Listener, r.Ladder)
			a := Attempt{OK: true, Strategy: d.Best, ConnectMS: 250, RTTMS: 80, Mbps: 50}
			if d.Dialer == Kind(natlab.ProxyOnly) && d.Listener == Kind(natlab.Open) {
				a = Attempt{Err: "no proxy"}
			}
			d.Attempts = []Attempt{a}
			summarise(&d)
			r.Directions = append(r.Directions, d)
			if p.A == p.B {
				break
			}
		}
	}
	return r
}

// TestRender: the Markdown has the grid, the per-strategy table, every
// direction and the flagged one; the JSON round-trips; the PNG decodes at
// the size the layout gives; WriteFiles writes all three.
func TestRender(t *testing.T) {
	r := sampleResult()
	md := r.Markdown()
	for _, want := range []string{"| **symmetric+upnp** |", "| holepunch |", "| relay |", "proxy-only → open", "no proxy", "flagged: **1**"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if n := strings.Count(md, "→ "); n < len(r.Directions) {
		t.Errorf("markdown lists %d directions, want %d", n, len(r.Directions))
	}
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var back Result
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || len(back.Directions) != len(r.Directions) {
		t.Fatalf("JSON round trip: %v, %d directions", err, len(back.Directions))
	}
	buf.Reset()
	if err := r.WritePNG(&buf); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	n := len(r.Kinds)
	if w := img.Bounds().Dx(); w != 2*hmMargin+hmLabelW+n*hmCellW {
		t.Errorf("PNG width %d", w)
	}
	dir := t.TempDir()
	if err := r.WriteFiles(filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{MarkdownFile, JSONFile, PNGFile} {
		if st, err := os.Stat(filepath.Join(dir, "out", f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}
