package matrix

import (
	"bytes"
	"encoding/json"
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

func TestKinds(t *testing.T) {
	ks := Kinds()
	if len(ks) != len(natlab.Kinds())+1+len(linuxHostBases())+1 || ks[len(ks)-1] != SymmetricUPnP {
		t.Fatalf("Kinds() = %v", ks)
	}
	if SymmetricUPnP.Base() != natlab.Kind(natlab.Symmetric) || !SymmetricUPnP.UPnP() || Kind(natlab.Open).UPnP() {
		t.Error("Base/UPnP of the kinds")
	}
	lpr := LinuxHost(natlab.Kind(natlab.PortRestricted))
	if lpr != "port-restricted/linux-host" || lpr.Base() != natlab.Kind(natlab.PortRestricted) || lpr.Firewall() != natlab.LinuxHost || lpr.UPnP() {
		t.Errorf("%q: base %q, firewall %q", lpr, lpr.Base(), lpr.Firewall())
	}
	if SymmetricUPnP.Firewall() != natlab.Home || Kind(natlab.Open).Firewall() != natlab.Home {
		t.Error("a kind without the suffix is not the home variant")
	}
	// Every router kind a hole can be punched from has its linux-host
	// variant, right after it.
	for _, b := range []natlab.Kind{natlab.Kind(natlab.FullCone), natlab.Kind(natlab.RestrictedCone), natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.Symmetric), natlab.Kind(natlab.SymmetricSeq), natlab.KindDouble} {
		if i := kindIndex(Kind(b)); i+1 >= len(ks) || ks[i+1] != LinuxHost(b) {
			t.Errorf("no linux-host variant after %s in %v", b, ks)
		}
	}
	// The sequential symmetric NAT (issue 18) right after the random one.
	if i := kindIndex(Kind(natlab.Symmetric)); i+2 >= len(ks) || ks[i+2] != SymmetricSeq || SymmetricSeq.Base() != natlab.Kind(natlab.SymmetricSeq) {
		t.Errorf("symmetric-seq not after symmetric/linux-host in %v", ks)
	}
	if _, err := ParseKind("open/linux-host"); err == nil {
		t.Error("ParseKind accepted a linux-host open host")
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
	if got := Directions(FullPairs()); got != n*n {
		t.Errorf("%d directions in the full matrix, want %d", got, n*n)
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
	full17 := []string{Direct, DirectTCP, UPnP, Holepunch, HolepunchTCP, Supernode, Relay}
	tcpOpen := k(natlab.UDPBlockedTCPOpen)
	seq, lseq := SymmetricSeq, LinuxHost(natlab.Kind(natlab.SymmetricSeq))
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
		{pr, sym, withSN, Holepunch}, // birthday; Fallback below
		{sym, dbl, base, Holepunch},
		{sym, SymmetricUPnP, base, UPnP},
		{SymmetricUPnP, sym, base, Holepunch},
		{SymmetricUPnP, SymmetricUPnP, base, UPnP},
		{blocked, SymmetricUPnP, withSN, Relay},
		// Sequential symmetric (issue 18): port prediction against any
		// side with a fixed mapping but a double NAT; two symmetric
		// peers are forwarded, whatever their allocation.
		{seq, pr, withSN, Holepunch},
		{pr, seq, base, Holepunch},
		{full, seq, withSN, Holepunch},
		{seq, restr, withSN, Holepunch},
		{lseq, LinuxHost(natlab.Kind(natlab.PortRestricted)), withSN, Holepunch},
		{LinuxHost(natlab.Kind(natlab.FullCone)), lseq, withSN, Holepunch},
		{open, seq, withSN, Holepunch},
		{seq, open, withSN, Direct},
		{seq, SymmetricUPnP, withSN, UPnP},
		{seq, dbl, withSN, Supernode},
		{LinuxHost(natlab.KindDouble), lseq, base, Relay},
		{seq, seq, withSN, Supernode},
		{seq, sym, withSN, Supernode},
		{LinuxHost(natlab.Kind(natlab.Symmetric)), lseq, base, Relay},
		// linux-host variants: the same best as the home variant.
		{LinuxHost(natlab.Kind(natlab.PortRestricted)), LinuxHost(natlab.Kind(natlab.PortRestricted)), withSN, Holepunch},
		{LinuxHost(natlab.Kind(natlab.RestrictedCone)), LinuxHost(natlab.Kind(natlab.Symmetric)), withSN, Holepunch},
		{LinuxHost(natlab.Kind(natlab.FullCone)), LinuxHost(natlab.Kind(natlab.Symmetric)), withSN, Holepunch},
		{LinuxHost(natlab.KindDouble), pr, withSN, Holepunch},
		{LinuxHost(natlab.Kind(natlab.Symmetric)), pr, withSN, Holepunch},
		{LinuxHost(natlab.Kind(natlab.Symmetric)), LinuxHost(natlab.KindDouble), base, Holepunch},
		{sym, LinuxHost(natlab.Kind(natlab.FullCone)), base, Holepunch},
		{LinuxHost(natlab.Kind(natlab.PortRestricted)), open, base, Direct},
		// udp-blocked-tcp-open: the TCP rungs, where their ladder has them.
		{tcpOpen, open, full17, DirectTCP},
		{open, tcpOpen, full17, DirectTCP},
		{tcpOpen, pr, full17, HolepunchTCP},
		{full, tcpOpen, full17, HolepunchTCP},
		{tcpOpen, tcpOpen, full17, HolepunchTCP},
		{LinuxHost(natlab.Kind(natlab.UDPBlockedTCPOpen)), LinuxHost(natlab.Kind(natlab.PortRestricted)), full17, HolepunchTCP},
		{tcpOpen, dbl, full17, HolepunchTCP},
		{tcpOpen, sym, full17, Relay},
		{tcpOpen, seq, full17, Relay}, // its TCP ports vary too, and holepunch-tcp does not predict
		// The gateway of symmetric+upnp maps the TCP listener too.
		{tcpOpen, SymmetricUPnP, full17, DirectTCP},
		{SymmetricUPnP, tcpOpen, full17, DirectTCP},
		{tcpOpen, blocked, full17, Relay},
		{proxy, tcpOpen, full17, Relay},
		{tcpOpen, pr, withSN, Relay}, // no TCP rungs in that ladder
	} {
		got, why := Best(tc.dialer, tc.listener, tc.ladder)
		if got != tc.want || why == "" {
			t.Errorf("Best(%s -> %s, %v) = %s (%s), want %s", tc.dialer, tc.listener, tc.ladder, got, why, tc.want)
		}
	}
	// The birthday cells: holepunch is best, and a miss may fall back to
	// the forwarder without being flagged; nowhere else is there a
	// fallback.
	for _, tc := range []struct {
		dialer, listener Kind
		ladder           []string
		want, fallback   string
	}{
		{sym, pr, withSN, Holepunch, Supernode},
		{pr, sym, base, Holepunch, Relay},
		{dbl, sym, withSN, Holepunch, Supernode},
		{LinuxHost(natlab.Kind(natlab.Symmetric)), LinuxHost(natlab.Kind(natlab.PortRestricted)), withSN, Holepunch, Supernode},
		{sym, restr, withSN, Holepunch, ""}, // the checks find it: no chance involved
		{sym, sym, withSN, Supernode, ""},
		{seq, pr, withSN, Holepunch, ""}, // prediction is not left to chance
		{seq, dbl, withSN, Supernode, ""},
		{pr, sym, full17, Holepunch, Supernode},
	} {
		e := Expect(tc.dialer, tc.listener, tc.ladder)
		if e.Strategy != tc.want || e.Fallback != tc.fallback || e.Why == "" {
			t.Errorf("Expect(%s -> %s, %v) = %+v, want %s with fallback %q", tc.dialer, tc.listener, tc.ladder, e, tc.want, tc.fallback)
		}
	}
	for _, d := range Kinds() {
		for _, l := range Kinds() {
			if e := Expect(d, l, withSN); e.Fallback != "" && (d.Base() != natlab.Kind(natlab.Symmetric) && l.Base() != natlab.Kind(natlab.Symmetric) || !Forwarded(e.Fallback)) {
				t.Errorf("Expect(%s -> %s) has fallback %q", d, l, e.Fallback)
			}
		}
	}
	// Every direction with a linux-host side has the best of the same
	// direction between home variants.
	home := func(k Kind) Kind {
		if k.Firewall() == natlab.LinuxHost {
			return Kind(k.Base())
		}
		return k
	}
	for _, d := range Kinds() {
		for _, l := range Kinds() {
			got, _ := Best(d, l, withSN)
			if want, _ := Best(home(d), home(l), withSN); got != want {
				t.Errorf("Best(%s -> %s) = %s, but %s between the home variants", d, l, got, want)
			}
		}
	}
}

// TestBestDualStack: with IPv6 on both sides every pair with UDP goes
// direct, symmetric against port-restricted included; without UDP the
// relay stays the only way.
func TestBestDualStack(t *testing.T) {
	withSN := []string{Direct, UPnP, Holepunch, Supernode, Relay}
	sym, lpr := Kind(natlab.Symmetric), LinuxHost(natlab.Kind(natlab.PortRestricted))
	for _, tc := range []struct {
		dialer, listener Kind
		want             string
	}{
		{sym, lpr, Direct},
		{sym, sym, Direct},
		{lpr, Kind(natlab.Open), Direct},
		{Kind(natlab.UDPBlocked), sym, Relay},
	} {
		if got, why := BestDualStack(tc.dialer, tc.listener, withSN); got != tc.want || why == "" {
			t.Errorf("BestDualStack(%s -> %s) = %s (%s), want %s", tc.dialer, tc.listener, got, why, tc.want)
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
	// A birthday cell: holepunch is best, found by chance only; a miss
	// that went to the supernode is allowed (counted, marked ◇, not
	// flagged); the relay there is another forwarder (△); a failure
	// stays a failure.
	bday := Direction{Dialer: Kind(natlab.Symmetric), Listener: Kind(natlab.PortRestricted), Best: Holepunch, Fallback: Supernode, Attempts: []Attempt{
		{OK: true, Strategy: Holepunch, Detail: "birthday: the peer's NAT allocates ports at random; 120 probes sent, its port 4242 answered", ConnectMS: 300, RTTMS: 80},
		{OK: true, Strategy: Supernode, ConnectMS: 700, RTTMS: 80},
		{OK: true, Strategy: Holepunch, Detail: "birthday: our NAT allocates ports at random; 256 of our mappings primed, the peer's probe reached port 4242", ConnectMS: 320, RTTMS: 80},
	}}
	summarise(&bday)
	if bday.Worse || bday.FellBack != 1 || flagMark(bday) != "◇" || !strings.Contains(bday.Reason, "fell back to supernode in 1 of 3") {
		t.Errorf("birthday cell with a miss: worse=%v fell back %d mark %q reason %q", bday.Worse, bday.FellBack, flagMark(bday), bday.Reason)
	}
	if m := modes(bday); m != "birthday 2/3" {
		t.Errorf("modes %q, want birthday 2/3", m)
	}
	// Three misses of three: rarely chance, so flagged.
	allMiss := bday
	allMiss.Attempts = []Attempt{bday.Attempts[1], bday.Attempts[1], bday.Attempts[1]}
	summarise(&allMiss)
	if !allMiss.Worse || allMiss.Severity != SeverityPath || !strings.Contains(allMiss.Reason, "every one of 3") {
		t.Errorf("a birthday cell that always fell back: worse=%v severity %q reason %q", allMiss.Worse, allMiss.Severity, allMiss.Reason)
	}
	// One miss of one dial (the CI's short run) says nothing.
	allMiss.Attempts = allMiss.Attempts[:1]
	summarise(&allMiss)
	if allMiss.Worse || allMiss.FellBack != 1 {
		t.Errorf("one miss in one dial flagged: %q", allMiss.Reason)
	}
	bday.Attempts[1].Strategy = Relay
	summarise(&bday)
	if !bday.Worse || bday.Severity != SeverityRung || bday.FellBack != 0 {
		t.Errorf("relay where the supernode is the fallback: worse=%v severity %q fell back %d", bday.Worse, bday.Severity, bday.FellBack)
	}
	bday.Attempts[1] = Attempt{Err: "timeout"}
	summarise(&bday)
	if !bday.Worse || bday.Severity != SeverityPath {
		t.Errorf("failure in a birthday cell: worse=%v severity %q", bday.Worse, bday.Severity)
	}
	// Without a fallback (port prediction is not left to chance) the
	// supernode is a forwarded path where holepunch was possible.
	pred := Direction{Best: Holepunch, Attempts: []Attempt{{OK: true, Strategy: Supernode, ConnectMS: 700, RTTMS: 80}}}
	summarise(&pred)
	if !pred.Worse || pred.Severity != SeverityPath || pred.FellBack != 0 {
		t.Errorf("supernode where prediction is best: worse=%v severity %q", pred.Worse, pred.Severity)
	}
	// Dual-stack: direct over IPv4 (an open listener's v4 address) where
	// IPv6 was possible is another path, flagged as such; over IPv6 it is
	// not flagged.
	v6 := Direction{Best: Direct, BestIPv6: true, Attempts: []Attempt{
		{OK: true, Strategy: Direct, Path: "[2001:db8:1::a]:4000", ConnectMS: 250, RTTMS: 80},
		{OK: true, Strategy: Direct, Path: "203.0.113.12:4000", ConnectMS: 250, RTTMS: 80},
	}}
	summarise(&v6)
	if !v6.Worse || v6.Severity != SeverityPath || !strings.Contains(v6.Reason, "not over IPv6 in 1 of 2") {
		t.Errorf("IPv4 path in a dual-stack direction: worse=%v severity %q reason %q", v6.Worse, v6.Severity, v6.Reason)
	}
	v6.Attempts[1].Path = "[2001:db8:1::a]:4001"
	summarise(&v6)
	if v6.Worse {
		t.Errorf("IPv6 paths flagged: %q", v6.Reason)
	}
}

func sampleResult() *Result {
	r := &Result{Started: time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC), Duration: "5m0s", DelayMS: 20, Runs: 1, Size: 4 << 20,
		Ladder: []string{Direct, UPnP, Holepunch, Relay}, GoVersion: "go1.26", Kinds: Kinds()}
	for _, p := range FullPairs() {
		for _, dl := range [][2]Kind{{p.A, p.B}, {p.B, p.A}} {
			d := Direction{Dialer: dl[0], Listener: dl[1]}
			e := Expect(d.Dialer, d.Listener, r.Ladder)
			d.Best, d.BestWhy, d.Fallback = e.Strategy, e.Why, e.Fallback
			a := Attempt{OK: true, Strategy: d.Best, ConnectMS: 250, RTTMS: 80, Mbps: 50}
			switch {
			case d.Dialer == Kind(natlab.Symmetric) && d.Listener == Kind(natlab.PortRestricted):
				a = Attempt{OK: true, Strategy: d.Fallback, ConnectMS: 700, RTTMS: 80, Mbps: 50} // a birthday miss
			case d.Dialer == SymmetricSeq && d.Listener == Kind(natlab.PortRestricted):
				a.Detail = "port prediction: our NAT allocates ports sequential +1; the peer punched our next ports"
			}
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
	for _, want := range []string{"| **symmetric+upnp** |", "| holepunch |", "| relay |", "proxy-only → open", "no proxy", "flagged: **1**",
		"| symmetric → port-restricted | 1/1 | relay | holepunch (else relay) |", "◇", "fell back to relay in 1 of 1",
		"| symmetric-seq → port-restricted | 1/1 | holepunch [port prediction 1/1] |"} {
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
		t.Errorf("PNG width %d, want %d for %d kinds", w, 2*hmMargin+hmLabelW+n*hmCellW, n)
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

func TestParsePairs(t *testing.T) {
	got, err := ParsePairs("udp-blocked:proxy-only, open:open")
	if err != nil {
		t.Fatal(err)
	}
	want := []Pair{{"udp-blocked", "proxy-only"}, {"open", "open"}}
	if !slices.Equal(got, want) {
		t.Fatalf("ParsePairs = %v, want %v", got, want)
	}
	if _, err := ParsePairs("open:bogus"); !errors.Is(err, ErrUnknownKind) {
		t.Fatalf("unknown kind: %v, want ErrUnknownKind", err)
	}
	if _, err := ParsePairs("open"); err == nil {
		t.Fatal("a pair without a colon was accepted")
	}
}

// TestChanceMissesAcrossRun: a run with too few dials per direction to
// flag a birthday cell on its own (one or two) still flags its birthday
// cells when every one of their dials, MinChanceDials or more in all,
// fell back: the birthday mode did not hit once, which is not chance. A
// single hit anywhere in the run flags none.
func TestChanceMissesAcrossRun(t *testing.T) {
	miss := Attempt{OK: true, Strategy: Supernode, ConnectMS: 700, RTTMS: 80}
	hit := Attempt{OK: true, Strategy: Holepunch, Detail: "birthday: ...", ConnectMS: 300, RTTMS: 80}
	cell := func(as ...Attempt) Direction {
		d := Direction{Dialer: Kind(natlab.Symmetric), Listener: Kind(natlab.PortRestricted), Best: Holepunch, Fallback: Supernode, Attempts: as}
		summarise(&d)
		return d
	}
	other := Direction{Best: Direct, Attempts: []Attempt{{OK: true, Strategy: Direct, ConnectMS: 100, RTTMS: 80}}}
	summarise(&other)
	ds := []Direction{cell(miss), cell(miss, miss), other}
	for _, d := range ds {
		if d.Worse {
			t.Fatalf("a cell of one or two misses flagged on its own: %q", d.Reason)
		}
	}
	flagChanceMisses(ds)
	for i, d := range ds[:2] {
		if !d.Worse || d.Severity != SeverityPath || !strings.Contains(d.Reason, "every one of the run's 3") {
			t.Errorf("cell %d: worse=%v severity %q reason %q, want flagged", i, d.Worse, d.Severity, d.Reason)
		}
	}
	if ds[2].Worse {
		t.Errorf("a direction without a fallback flagged: %q", ds[2].Reason)
	}
	ds = []Direction{cell(miss), cell(miss, hit), cell(miss)}
	flagChanceMisses(ds)
	for i, d := range ds {
		if d.Worse {
			t.Errorf("cell %d flagged although the run hit once: %q", i, d.Reason)
		}
	}
	ds = []Direction{cell(miss), cell(miss)}
	flagChanceMisses(ds)
	if ds[0].Worse || ds[1].Worse {
		t.Error("two misses in all flagged (fewer than MinChanceDials)")
	}
}
