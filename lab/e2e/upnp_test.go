package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/upnp"
)

// waitMapped waits until n's port mapper has an external address.
func waitMapped(t *testing.T, n *reach.Node, limit time.Duration) upnp.Status {
	t.Helper()
	if !reachlab.WaitFor(limit, func() bool { return n.Status().PortMapping.External.IsValid() }) {
		t.Fatalf("no port mapping after %v: %+v", limit, n.Status().PortMapping)
	}
	return n.Status().PortMapping
}

// gatewayHas reports whether miniupnpd has a UDP mapping of ext.
func gatewayHas(ctx context.Context, t *testing.T, m *natlab.Miniupnpd, ext uint16) bool {
	t.Helper()
	return gatewayHasProto(ctx, t, m, "udp", ext)
}

// gatewayHasProto reports whether miniupnpd has a mapping of ext for proto
// ("udp" or "tcp").
func gatewayHasProto(ctx context.Context, t *testing.T, m *natlab.Miniupnpd, proto string, ext uint16) bool {
	t.Helper()
	maps, err := m.Mappings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range maps {
		if p.Proto == proto && p.External == ext {
			return true
		}
	}
	return false
}

// TestLabUPnP: a listener behind a symmetric NAT whose gateway runs
// miniupnpd maps its port, and a peer behind another symmetric NAT (a pair
// hole punching cannot connect without prediction) reaches it with the
// upnp strategy; 1 MiB moves both ways intact. With both protocols, with
// NAT-PMP only (the node restricted to NAT-PMP; miniupnpd's NAT-PMP port
// also speaks PCP) and with UPnP only. When the listener closes, the
// mapping is gone from miniupnpd.
func TestLabUPnP(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after the lab and the nodes are gone
	l := reachlab.NewScenario(t, reachlab.ServerConfig{})
	cs := l.ConnectString()
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()
	dsite := l.Site(t, "dial", natlab.Kind(natlab.Symmetric))
	dialer := reachlab.NewNode(t, dsite.Host, reach.Config{Servers: []string{cs}})
	table := "\n"
	for i, tc := range []struct {
		name   string
		gw     natlab.UPnPConfig
		protos []upnp.Protocol
		want   upnp.Protocol
	}{
		{"upnp+natpmp", natlab.UPnPConfig{UPnP: true, NATPMP: true}, nil, upnp.PCP},
		{"natpmp-only", natlab.UPnPConfig{NATPMP: true}, []upnp.Protocol{upnp.NATPMP}, upnp.NATPMP},
		{"upnp-only", natlab.UPnPConfig{UPnP: true}, nil, upnp.UPnP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, mu, err := l.AddUPnPRouter(ctx, natlab.RouterConfig{Name: fmt.Sprintf("gw%d", i), NAT: natlab.Symmetric}, tc.gw)
			if err != nil {
				t.Fatal(err)
			}
			h, _ := rt.AddHost(ctx, fmt.Sprintf("lis%d", i))
			start := time.Now()
			ln := reachlab.NewNode(t, h, reach.Config{Servers: []string{cs}, PortMapping: upnp.Config{Protocols: tc.protos}})
			reachlab.Echo(t, ln)
			st := waitMapped(t, ln, 5*time.Second)
			mapped := time.Since(start)
			if st.Protocol != tc.want || st.External.Addr() != rt.WAN() {
				t.Errorf("mapping %s %s, want %s on %s", st.Protocol, st.External, tc.want, rt.WAN())
			}
			sess, el := dialEcho(t, ctx, dialer, ln, 1<<20)
			table += fmt.Sprintf("%-12s %-8s mapped %-20s in %-6v  dial: %-9s %-20s %v\n", tc.name, st.Protocol, st.External,
				mapped.Round(time.Millisecond), sess.Strategy(), sess.RemoteAddr(), el.Round(time.Millisecond))
			if sess.Strategy() != reach.StrategyUPnP {
				t.Errorf("strategy %s, want upnp", sess.Strategy())
			}
			if sess.RemoteAddr().String() != st.External.String() {
				t.Errorf("path %s, want the mapped %s", sess.RemoteAddr(), st.External)
			}
			sess.CloseWithError(0, "done")
			if !gatewayHas(ctx, t, mu, st.External.Port()) {
				t.Errorf("miniupnpd has no mapping for %d while the node runs", st.External.Port())
			}
			ln.Close()
			if gatewayHas(ctx, t, mu, st.External.Port()) {
				t.Errorf("mapping %d still on miniupnpd after Close", st.External.Port())
			}
		})
	}
	// Where hole punching works too (both sides port-restricted), the
	// mapped address still wins: the upnp rung dials at once with a head
	// start of upnp.HeadStart, holepunch needs a check round trip first.
	t.Run("cone-pair", func(t *testing.T) {
		rt, _, err := l.AddUPnPRouter(ctx, natlab.RouterConfig{Name: "gwcone", NAT: natlab.PortRestricted}, natlab.UPnPConfig{})
		if err != nil {
			t.Fatal(err)
		}
		h, _ := rt.AddHost(ctx, "liscone")
		ln := reachlab.NewNode(t, h, reach.Config{Servers: []string{cs}})
		reachlab.Echo(t, ln)
		st := waitMapped(t, ln, 5*time.Second)
		csite := l.Site(t, "dcone", natlab.Kind(natlab.PortRestricted))
		d := reachlab.NewNode(t, csite.Host, reach.Config{Servers: []string{cs}})
		sess, el := dialEcho(t, ctx, d, ln, 64<<10)
		sess.CloseWithError(0, "done")
		ctl := reachlab.NewNode(t, csite.Host, reach.Config{Servers: []string{cs}, Strategies: []string{reach.StrategyDirect, reach.StrategyHolepunch}})
		sess2, el2 := dialEcho(t, ctx, ctl, ln, 64<<10)
		sess2.CloseWithError(0, "done")
		table += fmt.Sprintf("%-12s %-8s mapped %-20s            dial: %-9s %-20s %v (without the upnp rung: %s %v)\n", "cone-pair", st.Protocol, st.External,
			sess.Strategy(), sess.RemoteAddr(), el.Round(time.Millisecond), sess2.Strategy(), el2.Round(time.Millisecond))
		if sess.Strategy() != reach.StrategyUPnP {
			t.Errorf("strategy %s, want upnp (holepunch took the credit)", sess.Strategy())
		}
		if sess2.Strategy() != reach.StrategyHolepunch {
			t.Errorf("control: strategy %s, want holepunch", sess2.Strategy())
		}
	})
	t.Log(table)
}

// TestLabUPnPRestart: miniupnpd restarts while the listener runs (a new
// SOAP port, every mapping lost). The listener notices at its next check
// and maps again within checkInterval + 5s, and a new dial from a peer
// behind a symmetric NAT succeeds over upnp.
func TestLabUPnPRestart(t *testing.T) {
	l := reachlab.NewScenario(t, reachlab.ServerConfig{})
	cs := l.ConnectString()
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()
	dsite := l.Site(t, "dial", natlab.Kind(natlab.Symmetric))
	rt, mu, err := l.AddUPnPRouter(ctx, natlab.RouterConfig{Name: "gw", NAT: natlab.Symmetric}, natlab.UPnPConfig{UPnP: true})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := rt.AddHost(ctx, "lis")
	const check = time.Second
	ln := reachlab.NewNode(t, h, reach.Config{Servers: []string{cs}, PortMapping: upnp.Config{CheckInterval: check}})
	dialer := reachlab.NewNode(t, dsite.Host, reach.Config{Servers: []string{cs}})
	reachlab.Echo(t, ln)
	st := waitMapped(t, ln, 5*time.Second)
	sess, _ := dialEcho(t, ctx, dialer, ln, 64<<10)
	if sess.Strategy() != reach.StrategyUPnP {
		t.Fatalf("before the restart: strategy %s, want upnp", sess.Strategy())
	}
	sess.CloseWithError(0, "done")

	oldHTTP := mu.HTTPPort()
	restarted := time.Now()
	if err := mu.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if gatewayHas(ctx, t, mu, st.External.Port()) {
		t.Fatal("restart kept the mapping")
	}
	remapped := func() bool {
		st2 := ln.Status().PortMapping
		return st2.Maps > st.Maps && st2.External.IsValid() && gatewayHas(ctx, t, mu, st2.External.Port())
	}
	if !reachlab.WaitFor(time.Until(restarted.Add(check+5*time.Second)), remapped) {
		t.Fatalf("not mapped again within %v: %+v", check+5*time.Second, ln.Status().PortMapping)
	}
	t.Logf("mapped again %v after the restart (check every %v): %s, SOAP port %d -> %d",
		time.Since(restarted).Round(time.Millisecond), check, ln.Status().PortMapping.External, oldHTTP, mu.HTTPPort())
	sess2, el := dialEcho(t, ctx, dialer, ln, 64<<10)
	t.Logf("dial after the restart: %s via %s in %v", sess2.Strategy(), sess2.RemoteAddr(), el.Round(time.Millisecond))
	if sess2.Strategy() != reach.StrategyUPnP {
		t.Errorf("after the restart: strategy %s, want upnp", sess2.Strategy())
	}
}

// TestLabUPnPNone: behind a gateway without port mapping, and behind a
// double NAT whose home router runs miniupnpd (it refuses to map on its
// private WAN address), the node advertises no mapping, its upnp rung
// fails at once (upnp.ErrNoMapping), and the dial takes no longer than
// the same dial without the upnp rung, within moveOnBound.
func TestLabUPnPNone(t *testing.T) {
	const moveOnBound = 250 * time.Millisecond
	l := reachlab.NewScenario(t, reachlab.ServerConfig{})
	cs := l.ConnectString()
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()
	dsite := l.Site(t, "dial", natlab.Kind(natlab.PortRestricted))
	plain, _ := l.AddRouter(ctx, natlab.RouterConfig{Name: "plain", NAT: natlab.PortRestricted})
	hp, _ := plain.AddHost(ctx, "lisplain")
	home, _, err := l.AddDoubleNAT(ctx, "dbl", natlab.PortRestricted, natlab.PortRestricted)
	if err != nil {
		t.Fatal(err)
	}
	mu, err := home.StartMiniupnpd(ctx, natlab.UPnPConfig{})
	if err != nil {
		t.Fatal(err)
	}
	hd, _ := home.AddHost(ctx, "lisdbl")
	noUPnP := []string{reach.StrategyDirect, reach.StrategyHolepunch}
	for _, tc := range []struct {
		name string
		h    *natlab.Host
		want error
	}{{"no-gateway", hp, upnp.ErrNoGateway}, {"double-nat", hd, upnp.ErrPrivateExternal}} {
		t.Run(tc.name, func(t *testing.T) {
			ln := reachlab.NewNode(t, tc.h, reach.Config{Servers: []string{cs}})
			reachlab.Echo(t, ln)
			with := reachlab.NewNode(t, dsite.Host, reach.Config{Servers: []string{cs}})
			without := reachlab.NewNode(t, dsite.Host, reach.Config{Servers: []string{cs}, Strategies: noUPnP})
			// Let the mapper reach its verdict (at most the 2s discovery).
			reachlab.WaitFor(5*time.Second, func() bool { return ln.Status().PortMapping.Err != nil })
			st := ln.Status().PortMapping
			t.Logf("%s: port mapping: protocol %q external %v: %v", tc.name, st.Protocol, st.External, st.Err)
			if st.External.IsValid() || !errors.Is(st.Err, tc.want) {
				t.Fatalf("status %+v: want no mapping and %v", st, tc.want)
			}
			s1, el1 := dialEcho(t, ctx, with, ln, 64<<10)
			s1.CloseWithError(0, "done")
			s2, el2 := dialEcho(t, ctx, without, ln, 64<<10)
			s2.CloseWithError(0, "done")
			t.Logf("%s: dial with the upnp rung: %s in %v; without: %s in %v", tc.name, s1.Strategy(), el1.Round(time.Millisecond), s2.Strategy(), el2.Round(time.Millisecond))
			if s1.Strategy() != reach.StrategyHolepunch {
				t.Errorf("strategy %s, want holepunch", s1.Strategy())
			}
			if el1 > el2+moveOnBound {
				t.Errorf("the upnp rung delayed the dial: %v vs %v (bound +%v)", el1, el2, moveOnBound)
			}
		})
	}
	if maps, _ := mu.Mappings(ctx); len(maps) != 0 {
		t.Errorf("mappings on the double-NAT gateway: %v", maps)
	}
}
