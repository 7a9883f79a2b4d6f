package e2e_test

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/stream"
)

// natUDPTimeout is the UDP mapping timeout common in home NATs that
// keepalives must beat (RFC 4787 asks for 2 min; many routers use 30 s).
const natUDPTimeout = 30 * time.Second

// The lab proves keepalives against that timeout scaled down tenfold: the
// routers forget an idle UDP mapping after 3 s, the sessions keep alive
// every 1 s (the default's ratio, 10 s against 30 s), and the session sits
// idle for 10 s, more than three mapping lifetimes.
const (
	kaNATTimeout = 3 * time.Second
	kaPeriod     = time.Second
	kaIdle       = 10 * time.Second
	// kaPunchLinger bounds the listener's punch packets, which also keep
	// the mappings open while they last: they must stop well before the
	// idle period ends, so that only keepalives are left to hold the path.
	kaPunchLinger = 2 * time.Second
	// kaTransfer bounds each transfer after the idle period.
	kaTransfer = 5 * time.Second
)

// TestDefaultKeepAliveBelowNATTimeout: a zero Config keeps NAT mappings of
// the common 30 s timeout alive: reach sessions send keepalives, more than
// once per 30 s, and negative disables them.
func TestDefaultKeepAliveBelowNATTimeout(t *testing.T) {
	if stream.DefaultKeepAlivePeriod <= 0 || stream.DefaultKeepAlivePeriod >= natUDPTimeout {
		t.Errorf("DefaultKeepAlivePeriod %v, want in (0, %v)", stream.DefaultKeepAlivePeriod, natUDPTimeout)
	}
	// What a zero reach.Config hands to quic-go.
	qc := stream.QUICConfig(reach.Config{}.Session)
	if qc.KeepAlivePeriod != stream.DefaultKeepAlivePeriod {
		t.Errorf("zero Config: quic-go KeepAlivePeriod %v, want %v", qc.KeepAlivePeriod, stream.DefaultKeepAlivePeriod)
	}
	// quic-go pings after min(KeepAlivePeriod, MaxIdleTimeout/2) of quiet.
	if p := min(qc.KeepAlivePeriod, qc.MaxIdleTimeout/2); p >= natUDPTimeout {
		t.Errorf("effective keepalive %v, want below %v", p, natUDPTimeout)
	}
	if p := stream.QUICConfig(stream.Config{KeepAlivePeriod: -1}).KeepAlivePeriod; p != 0 {
		t.Errorf("KeepAlivePeriod -1: quic-go KeepAlivePeriod %v, want 0 (disabled)", p)
	}
}

// TestLabKeepAlive: two peers behind port-restricted NATs whose UDP
// mappings expire after 3 s connect by hole punching and then send nothing
// for 10 s. With keepalives every 1 s the same session carries data both
// ways afterwards (it did not die and no new session was made). The
// control, with keepalives disabled and everything else equal, loses the
// path: the first transfer after the idle period times out. So the
// keepalives, and nothing else, held the mappings.
func TestLabKeepAlive(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	host := func(name string) *natlab.Site {
		rt, err := s.AddRouter(ctx, natlab.RouterConfig{Name: name + "r", NAT: natlab.PortRestricted, UDPTimeout: kaNATTimeout})
		if err != nil {
			t.Fatal(err)
		}
		h, err := rt.AddHost(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return &natlab.Site{Kind: natlab.Kind(natlab.PortRestricted), Host: h, Router: rt}
	}
	cases := []struct {
		name      string
		keepAlive time.Duration
		a, b      *natlab.Site
	}{
		{"keepalive-1s", kaPeriod, host("kaa"), host("kab")},
		{"control-disabled", -1, host("nka"), host("nkb")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // both sit idle at the same time
			cfg := reach.Config{
				PunchLinger: kaPunchLinger,
				Session:     stream.Config{KeepAlivePeriod: tc.keepAlive, MaxIdleTimeout: 20 * time.Second},
			}
			na := s.Node(t, tc.a.Host, cfg)
			nb := s.Node(t, tc.b.Host, cfg)
			reachlab.Echo(t, na)
			reachlab.Echo(t, nb)
			dctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			sess, err := na.DialSession(dctx, nb.ID())
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			if sess.Strategy() != reach.StrategyHolepunch {
				t.Fatalf("strategy %s, want holepunch", sess.Strategy())
			}
			if err := transfer(sess); err != nil {
				t.Fatalf("before the idle period: %v", err)
			}
			// Hole punching dials every validated address at once; the
			// dialler closes the sessions that lost, and the listener
			// learns of it one packet later.
			var bs []*reach.Session
			if !reachlab.WaitFor(5*time.Second, func() bool { bs = nb.Sessions(); return len(bs) == 1 }) {
				t.Fatalf("listener has %d sessions, want 1", len(bs))
			}
			bsess := bs[0]

			ka := "disabled"
			if tc.keepAlive > 0 {
				ka = tc.keepAlive.String()
			}
			t.Logf("session %v up; idle for %v (NAT UDP timeout %v, keepalive %s)", sess, kaIdle, kaNATTimeout, ka)
			// The idle period itself is what is tested: mappings expire
			// unless keepalives refresh them.
			time.Sleep(kaIdle)

			// Each NAT keeps the session's flow (its mapping, and the
			// filter's permission for the other peer) only while something
			// refreshes it.
			cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
			aMapped := hasFlow(tc.a.Router.Conntrack(cctx), sess.RemoteAddr())
			bMapped := hasFlow(tc.b.Router.Conntrack(cctx), bsess.RemoteAddr())
			ccancel()
			t.Logf("after the idle period: dialler's NAT has the flow: %v, listener's NAT: %v", aMapped, bMapped)
			if want := tc.keepAlive > 0; aMapped != want || bMapped != want {
				t.Errorf("NATs have the session's flow: dialler's %v, listener's %v; want %v", aMapped, bMapped, want)
			}

			if err := sess.Context().Err(); err != nil {
				// MaxIdleTimeout (20 s) is longer than the idle period: a
				// dead session here is a failure in either case.
				t.Fatalf("session closed during the idle period: %v", context.Cause(sess.Context()))
			}
			err = transfer(sess)
			if tc.keepAlive < 0 {
				// The control: without keepalives the mappings expired, the
				// dialler's packets die at the listener's NAT.
				if err == nil {
					t.Fatalf("transfer after %v idle without keepalives succeeded: the NAT mappings did not expire, so the test proves nothing", kaIdle)
				}
				t.Logf("control: transfer after the idle period failed as expected: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("dialler -> listener after the idle period: %v", err)
			}
			if err := transfer(bsess); err != nil {
				t.Fatalf("listener -> dialler after the idle period: %v", err)
			}
			if as := na.Sessions(); len(as) != 1 || as[0] != sess {
				t.Errorf("dialler's sessions %v, want only %v", as, sess)
			}
			if bs := nb.Sessions(); len(bs) != 1 || bs[0] != bsess {
				t.Errorf("listener's sessions %v, want only %v", bs, bsess)
			}
			t.Logf("same session %v after the idle period, data moved both ways", sess)
		})
	}
}

// hasFlow reports whether a router's conntrack listing has a UDP flow from
// its LAN to remote: the mapping through which remote reaches the LAN host.
func hasFlow(conntrack string, remote netip.AddrPort) bool {
	for _, line := range strings.Split(conntrack, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "udp" {
			continue
		}
		// Original tuple first, then the reply tuple.
		var dsts, dports []string
		for _, x := range f {
			if v, ok := strings.CutPrefix(x, "dst="); ok {
				dsts = append(dsts, v)
			}
			if v, ok := strings.CutPrefix(x, "dport="); ok {
				dports = append(dports, v)
			}
		}
		if len(dsts) == 2 && len(dports) == 2 && dsts[0] == remote.Addr().String() && dports[0] == strconv.Itoa(int(remote.Port())) {
			return true
		}
	}
	return false
}

// transfer round-trips 256 KiB on a new stream of sess through the peer's
// echo, within kaTransfer.
func transfer(sess *reach.Session) error {
	ctx, cancel := context.WithTimeout(context.Background(), kaTransfer)
	defer cancel()
	return reachlab.RoundTrip(ctx, sess, 256<<10)
}
