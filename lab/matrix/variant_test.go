package matrix

import (
	"bytes"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

// TestVariants: the four variants, their kinds and short pairs, and
// --variants parsing.
func TestVariants(t *testing.T) {
	vs := Variants()
	var names []string
	for _, v := range vs {
		names = append(names, v.Name)
		for _, p := range append(v.Pairs(), v.Short...) {
			if err := v.Config(Config{}, false).withDefaults().check(); err != nil {
				t.Errorf("%s: %v", v.Name, err)
			}
			if !slices.Contains(v.Kinds, p.A) || !slices.Contains(v.Kinds, p.B) {
				t.Errorf("%s: pair %v outside the variant's kinds", v.Name, p)
			}
		}
	}
	if !slices.Equal(names, []string{VariantMain, VariantZeroDelay, VariantFarServer, VariantIPv6}) {
		t.Fatalf("variants %v", names)
	}
	lpr := LinuxHost(natlab.Kind(natlab.PortRestricted))
	zero := vs[1]
	if zero.Delay >= 0 || zero.ServerDelay != 0 || !slices.Contains(zero.Short, Pair{lpr, lpr}) {
		t.Errorf("zero-delay: delay %v, server %v, short %v (the CI needs linux-host port-restricted with itself)", zero.Delay, zero.ServerDelay, zero.Short)
	}
	if far := vs[2]; far.ServerDelay != 60*time.Millisecond || far.Delay <= 0 || far.Delay > 5*time.Millisecond {
		t.Errorf("far-server: server %v, access links %v", far.ServerDelay, far.Delay)
	}
	if !vs[3].IPv6 || vs[0].IPv6 {
		t.Error("only the ipv6 variant is dual-stack")
	}
	if len(vs[0].Kinds) != len(Kinds()) {
		t.Errorf("main has %d kinds, want all %d", len(vs[0].Kinds), len(Kinds()))
	}
	// zero-delay and far-server: every kind with UDP but the sequential
	// symmetric NATs (main has them; TestLabPredict measures the others).
	for _, v := range vs[1:3] {
		for _, k := range Kinds() {
			seq := k.Base() == natlab.Kind(natlab.SymmetricSeq)
			if in := slices.Contains(v.Kinds, k); !k.noUDP() && in == seq {
				t.Errorf("%s: %s in the kinds %v, want %v", v.Name, k, in, !seq)
			}
		}
	}
	got, err := ParseVariants("ipv6, main")
	if err != nil || len(got) != 2 || got[0].Name != VariantMain || got[1].Name != VariantIPv6 {
		t.Errorf("ParseVariants(ipv6, main) = %v, %v", got, err)
	}
	if got, err := ParseVariants("all"); err != nil || len(got) != len(vs) {
		t.Errorf("ParseVariants(all) = %d variants, %v", len(got), err)
	}
	if _, err := ParseVariants("main,far"); !errors.Is(err, ErrUnknownVariant) {
		t.Errorf("ParseVariants(main,far): %v", err)
	}
	c := vs[2].Config(Config{Runs: 2}, true)
	if c.Variant != VariantFarServer || c.Runs != 2 || c.ServerDelay != 60*time.Millisecond || len(c.Pairs) != len(vs[2].Short) {
		t.Errorf("far-server short config %+v", c)
	}
	// The IPv6 run refuses kinds it cannot build.
	bad := Config{IPv6: true, Pairs: []Pair{{Kind(natlab.KindDouble), Kind(natlab.Open)}}}
	if err := bad.check(); !errors.Is(err, ErrKindUnsupported) {
		t.Errorf("double NAT with IPv6: %v", err)
	}
}

// sampleVariant is a result of v as if every direction had won its best
// strategy (over IPv6 where that is best), but for the one direction
// fail, which failed.
func sampleVariant(v Variant, fail [2]Kind) *Result {
	r := &Result{Variant: v.Name, Started: time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC), Duration: "5m0s",
		DelayMS: ms(max(v.Delay, 0)), ServerDelayMS: ms(v.ServerDelay), IPv6: v.IPv6, Runs: 1, Size: 4 << 20,
		Ladder: []string{Direct, UPnP, Holepunch, Supernode, Relay}, GoVersion: "go1.26", Kinds: v.Kinds}
	for _, p := range v.Pairs() {
		for _, dl := range [][2]Kind{{p.A, p.B}, {p.B, p.A}} {
			d := Direction{Dialer: dl[0], Listener: dl[1]}
			if v.IPv6 {
				d.Best, d.BestWhy = BestDualStack(d.Dialer, d.Listener, r.Ladder)
				d.BestIPv6 = true
			} else {
				d.Best, d.BestWhy = Best(d.Dialer, d.Listener, r.Ladder)
			}
			a := Attempt{OK: true, Strategy: d.Best, Path: "203.0.113.12:4000", ConnectMS: 250, RTTMS: 80, Mbps: 50}
			if v.IPv6 {
				a.Path = "[2001:db8:1::a]:4000"
			}
			if dl == fail {
				a = Attempt{Err: "no path"}
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

// TestRenderReport: a report of every variant renders a summary row and
// a section per variant, zero-delay and far-server times in ms, one
// heatmap file per variant, and reads back from its JSON; a single
// Result's JSON (the format before variants) reads as a report too.
func TestRenderReport(t *testing.T) {
	lpr := LinuxHost(natlab.Kind(natlab.PortRestricted))
	rep := &Report{Started: time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC), Duration: "30m0s", Commit: "abc1234"}
	for _, v := range Variants() {
		rep.Variants = append(rep.Variants, sampleVariant(v, [2]Kind{lpr, Kind(natlab.Symmetric)}))
	}
	// In the ipv6 variant, open -> open went over IPv4.
	v4 := &rep.Variants[3].Directions[0]
	v4.Attempts[0].Path = "203.0.113.12:4000"
	summarise(v4)
	md := rep.Markdown()
	for _, want := range []string{
		"Variants: **4**", "flagged: **5**", // lpr -> symmetric failed in each variant, open -> open over IPv4
		"- **open → open** (an IPv4 path where IPv6 was best): a path not over IPv6 in 1 of 1",
		"| [zero-delay](#zero-delay) | no delay on any link |",
		"60 ms one-way on the server's link",
		"### far-server\n", "### ipv6\n", "dual-stack sites",
		"| **port-restricted/linux-host** |", "holepunch 250 ms", // zero-delay grid in ms
		"holepunch 3.1", // main grid in round trips
		"direct (IPv6)", "IPv6 1/1",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if rep.Flagged() != 5 {
		t.Errorf("%d flagged, want 5", rep.Flagged())
	}
	dir := t.TempDir()
	if err := rep.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{MarkdownFile, JSONFile, "matrix.png", "matrix-zero-delay.png", "matrix-far-server.png", "matrix-ipv6.png"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".png") {
			img, err := png.Decode(bytes.NewReader(b))
			if err != nil || img.Bounds().Dx() < hmMinW {
				t.Errorf("%s: %v", f, err)
			}
		}
	}
	f, err := os.Open(filepath.Join(dir, JSONFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	back, err := ReadReport(f)
	if err != nil || len(back.Variants) != 4 || back.Markdown() != md {
		t.Fatalf("report JSON round trip: %v, %d variants", err, len(back.Variants))
	}
	var old bytes.Buffer
	if err := rep.Variants[0].WriteJSON(&old); err != nil {
		t.Fatal(err)
	}
	one, err := ReadReport(&old)
	if err != nil || len(one.Variants) != 1 || len(one.Variants[0].Directions) != len(rep.Variants[0].Directions) {
		t.Errorf("a single result as a report: %v", err)
	}
	if _, err := ReadReport(strings.NewReader(`{"started":"2026-12-01T03:00:00Z"}`)); err == nil {
		t.Error("an empty report read without error")
	}
}
