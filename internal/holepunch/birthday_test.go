package holepunch

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
)

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(ents)
}

// birthdayRung is a rung on a loopback socket whose helper sockets are
// loopback sockets too.
func birthdayRung(t *testing.T, limits Limits) *Rung {
	t.Helper()
	h := &rung.Host{Socket: loopSock(t), Logger: slog.New(slog.NewTextHandler(tlog{t}, nil)), Context: context.Background(), Go: func(f func()) { go f() },
		ListenPacket: func(network, _ string) (net.PacketConn, error) { return net.ListenPacket(network, "127.0.0.1:0") }}
	r := NewRung(h, 0, limits)
	t.Cleanup(r.Close)
	return r
}

// TestBirthdayWideBounds: one wide attempt opens exactly
// DefaultBirthdaySockets helper sockets (and file descriptors) and sends
// one primer from each; a second attempt meanwhile is refused
// (ErrBirthdayBusy); the first authenticated ping of the attempt wins,
// gets a pong, and every other socket closes at once; when the race is
// over and the winner closed, the process has the file descriptors it
// had before, and the node may run another attempt.
func TestBirthdayWideBounds(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	r := birthdayRung(t, Limits{BirthdaySockets: 10 * MaxBirthdaySockets}) // capped
	probe := loopSock(t)
	pm := NewManager(probe, nil)
	defer pm.Close()
	key := NewKey()
	before := openFDs(t)
	// The primers go to a port nothing listens on: on loopback they would
	// not expire (TTL 2), and the probe side would validate them.
	sink := netip.MustParseAddrPort("127.0.0.1:9")
	w, err := r.startWide(context.Background(), 9, key, RoleListener, sink)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	during := openFDs(t)
	st := r.Birthday()
	t.Logf("fds: %d before, %d during; %+v", before, during, st)
	if during-before != MaxBirthdaySockets || st.Open != MaxBirthdaySockets || st.Sockets != MaxBirthdaySockets {
		t.Fatalf("%d new fds, stats %+v: want exactly %d sockets", during-before, st, MaxBirthdaySockets)
	}
	if st.Packets != MaxBirthdaySockets {
		t.Fatalf("%d packets sent while priming, want one primer per socket (%d)", st.Packets, MaxBirthdaySockets)
	}
	if _, err := r.startWide(context.Background(), 10, key, RoleListener, sink); !errors.Is(err, ErrBirthdayBusy) {
		t.Fatalf("second attempt: %v, want ErrBirthdayBusy", err)
	}
	// The probe side pings one of the sockets (as a random probe that
	// hit it would).
	w.mu.Lock()
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), w.conns[17].LocalAddr().(*net.UDPAddr).AddrPort().Port())
	w.mu.Unlock()
	at, err := pm.Start(Params{Attempt: 9, Key: key, Role: RoleDialer, Remote: []netip.AddrPort{target}, Budget: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer at.Close()
	var win wideWin
	select {
	case win = <-w.Won():
	case <-time.After(5 * time.Second):
		t.Fatal("no winner")
	}
	if win.sock != 17 || win.peer != probe.LocalAddr() {
		t.Fatalf("winner socket %d from %s, want 17 from %s", win.sock, win.peer, probe.LocalAddr())
	}
	waitValidated(t, at, target)
	if !at.Confirmed(target) {
		t.Fatal("the winner's pong did not confirm the pair")
	}
	if got := openFDs(t) - before; got != 1 {
		t.Fatalf("%d fds left after the win, want 1 (the winner)", got)
	}
	w.Close()
	r.closeWinner(win.conn)
	if got := openFDs(t); got != before {
		t.Fatalf("%d fds after the race, want %d", got, before)
	}
	if st := r.Birthday(); st.Open != 0 || st.Hits != 1 || st.Packets > MaxBirthdaySockets+birthdayPongs {
		t.Fatalf("stats after the race %+v", st)
	}
	w2, err := r.startWide(context.Background(), 11, key, RoleListener, sink)
	if err != nil {
		t.Fatalf("after the race: %v", err)
	}
	w2.Close()
	if got := openFDs(t); got != before {
		t.Fatalf("%d fds after an attempt with no winner, want %d", got, before)
	}
}

// TestBirthdayWindow: without a probe, the wide side's sockets all close
// BirthdayWindow after priming, by themselves.
func TestBirthdayWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 3 s")
	}
	r := birthdayRung(t, Limits{BirthdaySockets: 32})
	before := openFDs(t)
	w, err := r.startWide(context.Background(), 9, NewKey(), RoleListener, netip.MustParseAddrPort("127.0.0.1:9"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got := openFDs(t) - before; got != 32 {
		t.Fatalf("%d new fds, want 32", got)
	}
	select {
	case <-w.Over():
	case <-time.After(BirthdayWindow + time.Second):
		t.Fatalf("the race is not over %v after priming", BirthdayWindow+time.Second)
	}
	if got := openFDs(t); got != before || r.Birthday().Open != 0 {
		t.Fatalf("%d fds %v after priming, want %d", got, BirthdayWindow, before)
	}
}

// TestBirthdayProbeBounds: the probe side sends exactly the probes the
// limits allow (at most MaxBirthdayProbes and BirthdayPacketBudget minus
// the attempt's budget), each to a distinct port of the peer's IP, and
// stops; a flood of configured probes is capped.
func TestBirthdayProbeBounds(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	r := birthdayRung(t, Limits{BirthdayProbes: 100000})
	if n := r.birthdayProbes(); n != BirthdayPacketBudget-DefaultAttemptPackets {
		t.Fatalf("probes %d, want %d", n, BirthdayPacketBudget-DefaultAttemptPackets)
	}
	at, err := r.m.Start(Params{Attempt: 3, Key: NewKey(), Role: RoleDialer, Budget: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer at.Close()
	var sent atomic.Int64
	released := make(chan struct{})
	// 192.0.2.1 (TEST-NET-1): nothing answers.
	at.Probe(netip.MustParseAddr("192.0.2.1"), r.birthdayProbes(), 10*time.Microsecond, 0, &sent, func() { close(released) })
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("probes did not end")
	}
	at.mu.Lock()
	distinct := len(at.probed)
	at.mu.Unlock()
	if at.Probes() != r.birthdayProbes() || int(sent.Load()) != at.Probes() || distinct != at.Probes() {
		t.Fatalf("%d probes (%d counted) to %d distinct ports, want %d", at.Probes(), sent.Load(), distinct, r.birthdayProbes())
	}
}

// TestBirthdayPatience: a dial that runs the birthday mode asks the
// forwarding rungs to wait until its probes are out (about 0.9 s on a
// short path), and no other dial asks anything: not a cone pair, not a
// move, not a peer the server did not observe, not with the mode off,
// not while the node's one slot is taken, and not when the peer's answer
// does not say it runs its part (its mode off, its slot taken, an older
// node): no probe would cross, and the relay would wait for nothing.
func TestBirthdayPatience(t *testing.T) {
	ms := time.Millisecond
	random := &candidate.PortAllocation{Kind: candidate.AllocRandom}
	obs := netip.MustParseAddrPort("192.0.2.1:4000")
	vr := candidate.PeerInfo{Mapping: candidate.MappingVaries, Ports: random, Observed: obs, Birthday: true}
	eim := candidate.PeerInfo{Mapping: candidate.MappingIndependent, Observed: obs, Birthday: true}
	silentVR, silentEIM := vr, eim
	silentVR.Birthday, silentEIM.Birthday = false, false
	window := birthdayPrimeTime + DefaultBirthdayProbes*BirthdayProbeInterval + birthdaySlack
	on := birthdayRung(t, Limits{})
	off := birthdayRung(t, Limits{BirthdaySockets: -1})
	few := birthdayRung(t, Limits{BirthdayProbes: 100})
	move := eim
	move.Move = true
	unobserved := vr
	unobserved.Observed = netip.AddrPort{}
	for _, tc := range []struct {
		name          string
		r             *Rung
		local, remote candidate.PeerInfo
		want          time.Duration
	}{
		{"probe side", on, eim, vr, 3*20*ms + window},
		{"wide side", on, vr, eim, 3*20*ms + window},
		{"probe side, 100 probes", few, eim, vr, 3*20*ms + window - (DefaultBirthdayProbes-100)*BirthdayProbeInterval},
		{"cones", on, eim, eim, 0},
		{"two random symmetric", on, vr, vr, 0},
		{"mode off, probe", off, eim, vr, 0},
		{"mode off, wide", off, vr, eim, 0},
		{"move", on, vr, move, 0},
		{"unobserved peer", on, eim, unobserved, 0},
		{"peer runs no part, probe side", on, eim, silentVR, 0},
		{"peer runs no part, wide side", on, vr, silentEIM, 0},
	} {
		if got := tc.r.Patience(&rung.Attempt{Local: tc.local, Remote: tc.remote}, 20*ms); got != tc.want {
			t.Errorf("%s: Patience %v, want %v", tc.name, got, tc.want)
		}
	}
	release, err := on.acquireBirthday()
	if err != nil {
		t.Fatal(err)
	}
	if got := on.Patience(&rung.Attempt{Local: eim, Remote: vr}, 20*ms); got != 0 {
		t.Errorf("slot taken: Patience %v, want 0", got)
	}
	release()
}

// TestBirthdayAnswer: a listener's answer says it runs its part of the
// birthday mode (BirthdayRuns, candidate.PeerInfo.Birthday) exactly when
// it does: when it probes a random symmetric dialler, not with its mode
// off, not for a cone dialler, not while its one slot is taken by another
// dialler's attempt.
func TestBirthdayAnswer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		limits  Limits
		dialler string
		busy    bool
		want    bool
	}{
		{"probes", Limits{}, candidate.MappingVaries, false, true},
		{"mode off", Limits{BirthdaySockets: -1}, candidate.MappingVaries, false, false},
		{"probes off", Limits{BirthdayProbes: -1}, candidate.MappingVaries, false, false},
		{"cone dialler", Limits{}, candidate.MappingIndependent, false, false},
		{"slot taken", Limits{}, candidate.MappingVaries, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			h := &rung.Host{Socket: loopSock(t), Logger: slog.New(slog.NewTextHandler(tlog{t}, nil)), Context: ctx, Local: true,
				Go:   func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() },
				Self: func() (string, *candidate.PortAllocation) { return candidate.MappingIndependent, nil },
			}
			r := NewRung(h, time.Minute, tc.limits)
			defer func() { cancel(); r.Close(); wg.Wait() }()
			if tc.busy {
				release, err := r.acquireBirthday()
				if err != nil {
					t.Fatal(err)
				}
				defer release()
			}
			k, _ := identity.GenerateKey()
			offer := introduction(k.ID(), 7)
			offer.Mapping = tc.dialler
			offer.Ports = &candidate.PortAllocation{Kind: candidate.AllocRandom}
			offer.Observed = netip.MustParseAddrPort("192.0.2.1:4000") // TEST-NET-1: nothing answers
			offer.Candidates = append(offer.Candidates, candidate.Candidate{Addr: offer.Observed, Kind: candidate.Reflexive})
			r.Introduced(offer)
			if got := r.BirthdayRuns(offer.Attempt); got != tc.want {
				t.Fatalf("BirthdayRuns %v, want %v", got, tc.want)
			}
			if r.BirthdayRuns(offer.Attempt + 2) {
				t.Fatal("BirthdayRuns true for an attempt the node was not introduced to")
			}
		})
	}
}

// TestProbesDue: the probe pace follows the clock; a late wake-up sends
// what is due, in bursts of at most probeBurst, never more than n.
func TestProbesDue(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		elapsed       time.Duration
		n, sent, want int
	}{
		{0, 700, 0, 1},                    // the first at once
		{ms / 2, 700, 1, 2},               // an early wake-up still sends one
		{3 * ms, 700, 3, 4},               // on time
		{20 * ms, 700, 4, 4 + probeBurst}, // late: a burst
		{20 * ms, 700, 16, 21},            // catching up
		{time.Second, 700, 695, 700},      // never past n
		{time.Second, 700, 700, 700},      // done
		{0, 5, 0, 5},                      // no pace: all due (in bursts)
	} {
		pace := ms
		if tc.n == 5 {
			pace = 0
		}
		if got := probesDue(tc.elapsed, pace, tc.n, tc.sent); got != tc.want {
			t.Errorf("probesDue(%v, %v, %d, %d) = %d, want %d", tc.elapsed, pace, tc.n, tc.sent, got, tc.want)
		}
	}
}

// TestBirthdayRole: the roles follow from the introduction alone.
func TestBirthdayRole(t *testing.T) {
	random := &candidate.PortAllocation{Kind: candidate.AllocRandom}
	seq := &candidate.PortAllocation{Kind: candidate.AllocSequential, Step: 1, Last: 4000}
	vr := candidate.PeerInfo{Mapping: candidate.MappingVaries, Ports: random}
	vs := candidate.PeerInfo{Mapping: candidate.MappingVaries, Ports: seq}
	eim := candidate.PeerInfo{Mapping: candidate.MappingIndependent}
	for _, tc := range []struct {
		local, remote candidate.PeerInfo
		want          int
	}{
		{vr, eim, birthdayWide}, {eim, vr, birthdayProbe}, {vr, vr, birthdayNone},
		{vs, eim, birthdayNone}, {eim, vs, birthdayNone}, {eim, eim, birthdayNone}, {vr, candidate.PeerInfo{}, birthdayNone},
	} {
		if got := birthdayRole(tc.local, tc.remote); got != tc.want {
			t.Errorf("birthdayRole(%s %s, %s %s) = %d, want %d", tc.local.Mapping, tc.local.Ports, tc.remote.Mapping, tc.remote.Ports, got, tc.want)
		}
	}
}

// tlog routes logs to t.Log.
type tlog struct{ t *testing.T }

func (l tlog) Write(b []byte) (int, error) { l.t.Log(string(b)); return len(b), nil }

// TestBirthdayFlood: introductions from 40 diallers at once, each making
// this (random symmetric) node the wide side, open at most one attempt's
// sockets (the node's one slot), and none are left when the node closes;
// as the probe side, the same flood sends at most one attempt's probes.
func TestBirthdayFlood(t *testing.T) {
	for _, tc := range []struct {
		name          string
		self, dialler string
	}{{"wide", candidate.MappingVaries, candidate.MappingIndependent}, {"probe", candidate.MappingIndependent, candidate.MappingVaries}} {
		t.Run(tc.name, func(t *testing.T) {
			before := openFDs(t)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			h := &rung.Host{Socket: loopSock(t), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Context: ctx, Local: true,
				Go: func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() },
				ListenPacket: func(network, _ string) (net.PacketConn, error) {
					return net.ListenPacket(network, "127.0.0.1:0")
				},
				Self: func() (string, *candidate.PortAllocation) {
					return tc.self, &candidate.PortAllocation{Kind: candidate.AllocRandom}
				},
			}
			r := NewRung(h, time.Minute, Limits{})
			for i := range 40 {
				k, _ := identity.GenerateKey()
				offer := introduction(k.ID(), uint64(i+1))
				offer.Mapping = tc.dialler
				offer.Ports = &candidate.PortAllocation{Kind: candidate.AllocRandom}
				// 192.0.2.1 (TEST-NET-1): nothing answers.
				offer.Observed = netip.MustParseAddrPort("192.0.2.1:4000") // the server's word
				offer.Candidates = append(offer.Candidates, candidate.Candidate{Addr: offer.Observed, Kind: candidate.Reflexive})
				r.Introduced(offer)
			}
			st := r.Birthday()
			if st.Sockets > MaxBirthdaySockets || st.Open > MaxBirthdaySockets || openFDs(t)-before > MaxBirthdaySockets+8 {
				t.Fatalf("after 40 introductions: %+v, %d new fds; want one attempt's sockets at most", st, openFDs(t)-before)
			}
			time.Sleep(time.Second) // the probes of one attempt are over (700 at 1 ms)
			st = r.Birthday()
			t.Logf("%s: %+v", tc.name, st)
			if tc.name == "probe" && (st.Packets == 0 || st.Packets > int64(BirthdayPacketBudget-DefaultAttemptPackets)) {
				t.Fatalf("%d probes after 40 introductions, want one attempt's (%d at most)", st.Packets, BirthdayPacketBudget-DefaultAttemptPackets)
			}
			if tc.name == "wide" && st.Sockets != MaxBirthdaySockets {
				t.Fatalf("%d sockets opened, want one attempt's %d", st.Sockets, MaxBirthdaySockets)
			}
			cancel()
			r.Close()
			wg.Wait()
			if st := r.Birthday(); st.Open != 0 {
				t.Fatalf("%d helper sockets open after the node closed", st.Open)
			}
			if got := openFDs(t); got > before+1 { // the loop socket closes at cleanup
				t.Fatalf("%d fds after the node closed, want %d", got, before+1)
			}
		})
	}
}

// TestBirthdayTarget: the birthday mode aims only at the peer's address
// as the server observed it, never at a reflexive candidate the peer
// wrote itself (a hostile dialler claiming a random symmetric NAT would
// otherwise aim this node's 700 probes at a third party, or at its own
// network), and not at all without the server's word.
func TestBirthdayTarget(t *testing.T) {
	r := birthdayRung(t, Limits{})
	lie := candidate.Candidate{Addr: netip.MustParseAddrPort("198.51.100.9:53"), Kind: candidate.Reflexive}
	observed := netip.MustParseAddrPort("192.0.2.1:4000")
	for _, tc := range []struct {
		name string
		p    candidate.PeerInfo
		want netip.AddrPort
	}{
		{"lie first, server's word", candidate.PeerInfo{Observed: observed, Candidates: []candidate.Candidate{lie, {Addr: observed, Kind: candidate.Reflexive}}}, observed},
		{"lie only", candidate.PeerInfo{Candidates: []candidate.Candidate{lie}}, netip.AddrPort{}},
		{"loopback observed", candidate.PeerInfo{Observed: netip.MustParseAddrPort("127.0.0.1:4000")}, netip.AddrPort{}},
		{"mapped observed", candidate.PeerInfo{Observed: netip.MustParseAddrPort("[::ffff:192.0.2.1]:4000")}, observed},
	} {
		if got := r.birthdayTarget(tc.p); got != tc.want {
			t.Errorf("%s: target %v, want %v", tc.name, got, tc.want)
		}
	}
}
