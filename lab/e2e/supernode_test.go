package e2e_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/supernode"
)

// supernodePayload is what the supernode lab tests move each way: 100 MiB,
// as issue 6 asks. BenchmarkLabSupernode moves 100 MiB per
// iteration through a supernode, the hosted relay and a direct path.
const supernodePayload = 100 << 20

// startVolunteer starts a node on h that volunteers with cfg and waits
// for its server's verdict (admitted or not).
func startVolunteer(t testing.TB, h *natlab.Host, cs string, cfg supernode.Config) (*reach.Node, rendezvous.VolunteerStatus, error) {
	t.Helper()
	cfg.Enable = true
	n := reachlab.NewNode(t, h, reach.Config{Servers: []string{cs}, DisablePortMapping: true, Supernode: cfg,
		Logger: natlab.TestLogger(t).With("volunteer", h.Name())})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := n.WaitSupernode(ctx)
	return n, st, err
}

// supernodeLab is a scenario with an open volunteer and two peers behind
// symmetric NATs (no UPnP).
type supernodeLab struct {
	*reachlab.Scenario
	vol        *reach.Node
	volHost    *natlab.Host
	syma, symb *natlab.Site
	ignore     goleak.Option // goroutines once the volunteer is admitted
}

func newSupernodeLab(t *testing.T, withRelay bool, vcfg supernode.Config) *supernodeLab {
	t.Helper()
	s := &supernodeLab{Scenario: reachlab.NewScenario(t, reachlab.ServerConfig{Relay: withRelay})}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vh, err := s.AddPublicHost(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	s.syma = s.Site(t, "syma", natlab.Kind(natlab.Symmetric))
	s.symb = s.Site(t, "symb", natlab.Kind(natlab.Symmetric))
	vol, st, err := startVolunteer(t, vh, s.ConnectString(), vcfg)
	if err != nil {
		t.Fatalf("open volunteer not admitted: %v", err)
	}
	s.ignore = goleak.IgnoreCurrent()
	t.Logf("volunteer %s admitted at %v", vol.ID().Short(), st.Observed)
	s.vol, s.volHost = vol, vh
	return s
}

// peerConfig is the config of the peers in these tests: no UPnP, no
// background upgrade attempts (symmetric to symmetric has no direct path).
func (s *supernodeLab) peerConfig() reach.Config {
	return reach.Config{Servers: []string{s.ConnectString()}, DisablePortMapping: true, UpgradeInterval: -1}
}

// snDialEcho dials from a to b (which runs reachlab.Echo) and moves size
// bytes each way on a stream, within 30 s.
func snDialEcho(t *testing.T, a, b *reach.Node, size int) *reach.Session {
	t.Helper()
	// A bound against a hang, not a speed test: 100 MiB each way through
	// a volunteer takes about 10 s on a quiet machine and three times that
	// on a loaded one (benchmarks measure the speed).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return checkEcho(t, ctx, a, b, size)
}

// checkServes checks that the volunteer's status lists peers and at least
// bytes forwarded.
func checkServes(t *testing.T, vol *reach.Node, bytes uint64, peers ...identity.PeerID) {
	t.Helper()
	st := vol.Status().Supernode
	t.Logf("volunteer status: admitted=%v observed=%v sessions=%d bytes=%d drops=%d peers=%d", st.Admitted, st.Observed, st.Sessions, st.Bytes, st.Drops, len(st.Peers))
	if !st.Volunteering || !st.Admitted || st.Sessions < 1 || st.Bytes < bytes {
		t.Errorf("volunteer status %+v: want admitted, serving, at least %d bytes", st, bytes)
	}
	for _, p := range peers {
		if !slices.ContainsFunc(st.Peers, func(ps relay.PeerStats) bool { return ps.Peer == p && ps.Bytes > 0 }) {
			t.Errorf("volunteer status does not show it forwards for %s", p.Short())
		}
	}
}

// TestLabSupernodeSymmetric: two peers behind symmetric NATs, no UPnP, the
// server's relay off, a volunteer on an open host: they connect with the
// supernode rung, and data moves intact both ways through the volunteer,
// whose status shows whom it serves and how much.
func TestLabSupernodeSymmetric(t *testing.T) {
	s := newSupernodeLab(t, false, supernode.Config{})
	na := reachlab.NewNode(t, s.syma.Host, s.peerConfig())
	nb := reachlab.NewNode(t, s.symb.Host, s.peerConfig())
	reachlab.Echo(t, nb)
	sess := snDialEcho(t, na, nb, supernodePayload)
	if sess.Strategy() != reach.StrategySupernode {
		t.Fatalf("strategy %q, want supernode", sess.Strategy())
	}
	checkServes(t, s.vol, 2*supernodePayload, na.ID(), nb.ID())
	if u := na.Status().Supernode.Using; len(u) != 1 || u[0] != s.vol.ID() {
		t.Errorf("dialler uses volunteers %v, want the one", u)
	}
}

// TestLabSupernodeBeforeRelay: the same with the server's relay on: the
// supernode still wins (it is earlier in the ladder).
func TestLabSupernodeBeforeRelay(t *testing.T) {
	s := newSupernodeLab(t, true, supernode.Config{})
	na := reachlab.NewNode(t, s.syma.Host, s.peerConfig())
	nb := reachlab.NewNode(t, s.symb.Host, s.peerConfig())
	reachlab.Echo(t, nb)
	sess := snDialEcho(t, na, nb, 4<<20)
	if sess.Strategy() != reach.StrategySupernode {
		t.Fatalf("strategy %q, want supernode (before relay)", sess.Strategy())
	}
	checkServes(t, s.vol, 8<<20, na.ID(), nb.ID())
}

// TestLabSupernodeAdmission: a volunteer behind a port-restricted NAT
// (not reachable from outside) is not admitted: the server's dial-back
// from another port fails although the volunteer's registration opened its
// NAT towards the server's own port. A volunteer behind a full-cone NAT
// (reachable) is admitted. The server lists only that one.
func TestLabSupernodeAdmission(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{})
	rs, cs := s.Server, s.ConnectString()
	pr := s.Site(t, "prc", natlab.Kind(natlab.PortRestricted))
	fc := s.Site(t, "fcone", natlab.Kind(natlab.FullCone))
	start := time.Now()
	_, st, err := startVolunteer(t, pr.Host, cs, supernode.Config{})
	t.Logf("port-restricted volunteer after %v: admitted=%v err=%v", time.Since(start).Round(time.Millisecond), st.Admitted, err)
	var ve *rendezvous.VolunteerError
	if !errors.Is(err, rendezvous.ErrNotAdmitted) || !errors.As(err, &ve) || ve.Code != "unreachable" {
		t.Fatalf("port-restricted volunteer: %v, want not admitted (unreachable)", err)
	}
	fv, st, err := startVolunteer(t, fc.Host, cs, supernode.Config{})
	if err != nil || !st.Admitted {
		t.Fatalf("full-cone volunteer not admitted: %v", err)
	}
	if v := rs.Volunteers(); len(v) != 1 || v[0] != fv.ID() {
		t.Fatalf("server lists volunteers %v, want only the full-cone one", v)
	}
}

// TestLabSupernodeFull: the volunteer admits one pair; the next pair's
// supernode rung is refused at once (ErrVolunteerFull) and it connects
// through the hosted relay, while the first pair goes on.
func TestLabSupernodeFull(t *testing.T) {
	s := newSupernodeLab(t, true, supernode.Config{MaxSessions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	na := reachlab.NewNode(t, s.syma.Host, s.peerConfig())
	nb := reachlab.NewNode(t, s.symb.Host, s.peerConfig())
	reachlab.Echo(t, nb)
	first := snDialEcho(t, na, nb, 1<<20)
	if first.Strategy() != reach.StrategySupernode {
		t.Fatalf("first pair: strategy %q, want supernode", first.Strategy())
	}
	hc, err := s.syma.Router.AddHost(ctx, "symc")
	if err != nil {
		t.Fatal(err)
	}
	hd, err := s.symb.Router.AddHost(ctx, "symd")
	if err != nil {
		t.Fatal(err)
	}
	nc := reachlab.NewNode(t, hc, s.peerConfig())
	nd := reachlab.NewNode(t, hd, s.peerConfig())
	reachlab.Echo(t, nd)
	second := snDialEcho(t, nc, nd, 1<<20)
	if second.Strategy() != reach.StrategyRelay {
		t.Fatalf("second pair: strategy %q, want relay", second.Strategy())
	}
	if _, err := first.Ping(ctx); err != nil {
		t.Fatalf("first pair after the second was refused: %v", err)
	}
	if st := s.vol.Status().Supernode; st.Sessions != 1 {
		t.Errorf("volunteer serves %d pairs, want 1", st.Sessions)
	}
}

// TestLabSupernodeKilled: the volunteer vanishes mid-transfer (its host
// drops all but one in a million packets, the most natlab's loss takes, as
// after a crash or a cable pull; then the process ends). Both nodes notice
// within the links' idle timeout (5 s), ready the hosted relay as the
// session's path instead (Host.Rescue) and report PathMoved to relay with
// supernode.ErrVolunteerGone; the transfer goes on over the relay without
// breaking, and every byte written arrives. A new dial then reaches the
// peer through the hosted relay (the dead volunteer skipped at once).
func TestLabSupernodeKilled(t *testing.T) {
	const moveBound = 20 * time.Second
	s := newSupernodeLab(t, true, supernode.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	eva, evb := newEvents(), newEvents()
	ca, cb := s.peerConfig(), s.peerConfig()
	ca.OnPathEvent, cb.OnPathEvent = eva.add, evb.add
	na := reachlab.NewNode(t, s.syma.Host, ca)
	nb := reachlab.NewNode(t, s.symb.Host, cb)
	sess, err := na.DialSession(ctx, nb.ID())
	if err != nil {
		t.Fatal(err)
	}
	if sess.Strategy() != reach.StrategySupernode {
		t.Fatalf("strategy %q, want supernode", sess.Strategy())
	}
	// A writes until told to stop; B counts what it reads and hashes it.
	type readResult struct {
		n   int64
		sum [32]byte
		err error
	}
	got := make(chan readResult, 1)
	go func() {
		st, err := nb.Accept(ctx)
		if err != nil {
			got <- readResult{err: err}
			return
		}
		h := sha256.New()
		k, err := io.Copy(h, st)
		var r readResult
		r.n, r.err = k, err
		copy(r.sum[:], h.Sum(nil))
		got <- r
	}()
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	var n atomic.Int64
	var stop atomic.Bool
	wh := sha256.New()
	go func() {
		buf := make([]byte, 64<<10)
		for i := 0; !stop.Load(); i++ {
			for j := range buf {
				buf[j] = byte(i + j)
			}
			k, err := st.Write(buf)
			wh.Write(buf[:k])
			n.Add(int64(k))
			if err != nil {
				sent <- err
				return
			}
		}
		sent <- st.CloseWrite()
	}()
	// Mid-transfer: once some MiB are through the volunteer.
	reachlab.MustWaitFor(t, 10*time.Second, "4 MiB through the volunteer", func() bool { return n.Load() >= 4<<20 })
	killed := time.Now()
	if err := s.volHost.Impair(ctx, natlab.Impairment{Loss: 0.999999}); err != nil {
		t.Fatal(err)
	}
	at := n.Load()
	t.Logf("volunteer blackholed after %d MiB", at>>20)
	for name, ev := range map[string]*events{"dialler": eva, "listener": evb} {
		e := ev.wait(t, reach.PathMoved, moveBound)
		t.Logf("%s: moved to %s %v after the volunteer vanished (%v)", name, e.Strategy, time.Since(killed).Round(time.Millisecond), e.Err)
		if e.Strategy != reach.StrategyRelay || !errors.Is(e.Err, supernode.ErrVolunteerGone) {
			t.Errorf("%s: moved to %q because %v, want relay because supernode.ErrVolunteerGone", name, e.Strategy, e.Err)
		}
	}
	reachlab.MustWaitFor(t, moveBound, "4 MiB more over the relay", func() bool { return n.Load() >= at+4<<20 })
	stop.Store(true)
	if err := <-sent; err != nil {
		t.Fatalf("writer: %v", err)
	}
	var want [32]byte
	copy(want[:], wh.Sum(nil))
	select {
	case r := <-got:
		if r.err != nil || r.n != n.Load() || r.sum != want {
			t.Fatalf("listener read %d of %d bytes (intact: %v): %v", r.n, n.Load(), r.sum == want, r.err)
		}
		t.Logf("%d MiB arrived intact, %d MiB of them after the move", r.n>>20, (r.n-at)>>20)
	case <-time.After(moveBound):
		t.Fatal("the listener did not finish reading")
	}
	if sess.Strategy() != reach.StrategyRelay {
		t.Errorf("session strategy after the move: %q, want relay", sess.Strategy())
	}
	// The process ends (its host back on the network, so that the server
	// hears it leave and the leak check below need not wait for timeouts).
	if err := s.volHost.Impair(ctx, natlab.Impairment{}); err != nil {
		t.Fatal(err)
	}
	s.vol.Close()
	start := time.Now()
	reachlab.Echo(t, nb)
	again := snDialEcho(t, na, nb, 4<<20)
	t.Logf("redial: %s after the loss, %v to connect and move 4 MiB each way", again.Strategy(), time.Since(start).Round(time.Millisecond))
	if again.Strategy() != reach.StrategyRelay {
		t.Fatalf("redial: strategy %q, want relay", again.Strategy())
	}
	// Nothing the volunteer or the peers' links to it started outlives
	// the nodes.
	na.Close()
	nb.Close()
	// (The hosted relay's sweeper starts with its first link and lives
	// as long as the server.)
	if err := goleak.Find(s.ignore, goleak.IgnoreTopFunction("github.com/reachp2p/reach/relay.(*Server).sweep")); err != nil {
		t.Errorf("goroutines left after closing the nodes: %v", err)
	}
}

// BenchmarkLabSupernode: one stream's throughput, 100 MiB per iteration,
// in one lab and one run, through
//
//   - supernode: two peers behind symmetric NATs, through a volunteer on
//     an open host (its node's socket, relay.Server forwarding);
//
//   - relay: two other peers behind the same symmetric NATs, without the
//     supernode rung, through the hosted relay of the server;
//
//   - direct: two peers on open hosts, directly.
//
//   - paired: the three again, interleaved, each divided by the same
//     iteration's direct figure (benchPairedPaths; -benchtime 8x or more).
//
//     go test -run '^$' -bench BenchmarkLabSupernode -benchtime 2x ./lab/e2e
func BenchmarkLabSupernode(b *testing.B) {
	// The relay's bandwidth limits are off: this measures forwarding.
	s := reachlab.NewScenario(b, reachlab.ServerConfig{Relay: true, RelayConfig: relay.ServerConfig{Logger: quietLogger(b), PeerRate: -1, TotalRate: -1}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, rl := s.ConnectString(), s.Relay
	vh := s.Site(b, "vol", natlab.Open).Host
	syma, symb := s.Site(b, "bsa", natlab.Kind(natlab.Symmetric)), s.Site(b, "bsb", natlab.Kind(natlab.Symmetric))
	hc, err := syma.Router.AddHost(ctx, "bsc")
	if err != nil {
		b.Fatal(err)
	}
	hd, err := symb.Router.AddHost(ctx, "bsd")
	if err != nil {
		b.Fatal(err)
	}
	oa, ob := s.Site(b, "boa", natlab.Open).Host, s.Site(b, "bob", natlab.Open).Host
	cfg := reach.Config{Servers: []string{cs}, Logger: quietLogger(b), DisablePortMapping: true, UpgradeInterval: -1}
	vcfg := cfg
	vcfg.Supernode = supernode.Config{Enable: true}
	vol := reachlab.NewNode(b, vh, vcfg)
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	if _, err := vol.WaitSupernode(wctx); err != nil {
		b.Fatal(err)
	}
	wcancel()
	noSN := cfg
	noSN.Strategies = []string{reach.StrategyDirect, reach.StrategyUPnP, reach.StrategyHolepunch, reach.StrategyRelay}
	direct := cfg
	direct.Strategies = []string{reach.StrategyDirect}
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	var paths []pairedPath
	for _, p := range []struct {
		name  string
		a, bh *natlab.Host
		cfg   reach.Config
		want  string
	}{
		{"supernode", syma.Host, symb.Host, cfg, reach.StrategySupernode},
		{"relay", hc, hd, noSN, reach.StrategyRelay},
		{"direct", oa, ob, direct, reach.StrategyDirect},
	} {
		na := reachlab.NewNode(b, p.a, p.cfg)
		nb := reachlab.NewNode(b, p.bh, p.cfg)
		got := make(chan copyResult, 1)
		go func() {
			for {
				st, err := nb.Accept(runCtx)
				if err != nil {
					return
				}
				got <- drain(st)
			}
		}()
		dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Second)
		sess, err := na.DialSession(dctx, nb.ID())
		dcancel()
		if err != nil {
			b.Fatal(err)
		}
		if sess.Strategy() != p.want {
			b.Fatalf("%s: strategy %s", p.name, sess.Strategy())
		}
		paths = append(paths, pairedPath{p.name, sess, got})
		b.Run(p.name, func(b *testing.B) {
			b.SetBytes(relayBenchBytes)
			for range b.N {
				copyN(b, sess, got, relayBenchBytes)
			}
			switch p.want {
			case reach.StrategyRelay:
				logRelayStats(b, sess, rl)
			case reach.StrategySupernode:
				logRelayStats(b, sess, nil)
				st := vol.Status().Supernode
				b.Logf("volunteer: forwarded %d bytes, dropped %d packets", st.Bytes, st.Drops)
			}
		})
	}
	b.Run("paired", func(b *testing.B) { benchPairedPaths(b, paths) })
}
