package e2e_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/stream"
	"github.com/reachp2p/reach/upnp"
)

// TestLabUPnPTCP: a listener behind a symmetric NAT whose gateway runs
// miniupnpd maps its TCP listener as well as its UDP socket, and a peer
// behind udp-blocked-tcp-open (no UDP at all; a TCP punch cannot cross a
// symmetric NAT) reaches it over direct-tcp at the mapped address instead
// of the relay; 1 MiB moves both ways intact. Over PCP, NAT-PMP and UPnP
// IGD (each names TCP its own way). When the listener closes, the TCP
// mapping is gone from miniupnpd. Control: without port mapping the pair
// is relayed.
func TestLabUPnPTCP(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	l := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	cs := l.ConnectString()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dsite := l.Site(t, "tdial", natlab.Kind(natlab.UDPBlockedTCPOpen))
	dialer := reachlab.NewNode(t, dsite.Host, reach.Config{Servers: []string{cs}})
	table := "\n"
	for i, tc := range []struct {
		name   string
		gw     natlab.UPnPConfig
		protos []upnp.Protocol
		want   upnp.Protocol
	}{
		{"pcp", natlab.UPnPConfig{UPnP: true, NATPMP: true}, nil, upnp.PCP},
		{"natpmp-only", natlab.UPnPConfig{NATPMP: true}, []upnp.Protocol{upnp.NATPMP}, upnp.NATPMP},
		{"upnp-only", natlab.UPnPConfig{UPnP: true}, nil, upnp.UPnP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, mu, err := l.AddUPnPRouter(ctx, natlab.RouterConfig{Name: fmt.Sprintf("tgw%d", i), NAT: natlab.Symmetric}, tc.gw)
			if err != nil {
				t.Fatal(err)
			}
			h, _ := rt.AddHost(ctx, fmt.Sprintf("tlis%d", i))
			ln := reachlab.NewNode(t, h, reach.Config{Servers: []string{cs}, PortMapping: upnp.Config{Protocols: tc.protos}})
			reachlab.Echo(t, ln)
			if !reachlab.WaitFor(5*time.Second, func() bool { return ln.Status().TCPPortMapping.External.IsValid() }) {
				t.Fatalf("no TCP port mapping after 5s: %+v", ln.Status().TCPPortMapping)
			}
			st := ln.Status().TCPPortMapping
			if st.Protocol != tc.want || st.External.Addr() != rt.WAN() {
				t.Errorf("TCP mapping %s %s, want %s on %s", st.Protocol, st.External, tc.want, rt.WAN())
			}
			if lp := ln.Status().TCPListener; lp.IsValid() && st.Internal.Port() != lp.Port() {
				t.Errorf("TCP mapping forwards to port %d, the listener is on %d", st.Internal.Port(), lp.Port())
			}
			sess, el := dialEcho(t, ctx, dialer, ln, 1<<20)
			table += fmt.Sprintf("%-12s %-8s mapped %-20s dial: %-10s %-4s %-20s %v\n", tc.name, st.Protocol, st.External,
				sess.Strategy(), sess.Transport(), sess.RemoteAddr(), el.Round(time.Millisecond))
			if sess.Strategy() != reach.StrategyDirectTCP || sess.Transport() != stream.TransportTCP {
				t.Errorf("strategy %s over %s, want direct-tcp over tcp", sess.Strategy(), sess.Transport())
			}
			if sess.RemoteAddr() != st.External {
				t.Errorf("path %s, want the mapped %s", sess.RemoteAddr(), st.External)
			}
			sess.CloseWithError(0, "done")
			if !gatewayHasProto(ctx, t, mu, "tcp", st.External.Port()) {
				t.Errorf("miniupnpd has no TCP mapping for %d while the node runs", st.External.Port())
			}
			ln.Close()
			if gatewayHasProto(ctx, t, mu, "tcp", st.External.Port()) {
				t.Errorf("TCP mapping %d still on miniupnpd after Close", st.External.Port())
			}
		})
	}
	// Control: the same gateway with the listener's port mapping off
	// leaves the pair to the relay.
	t.Run("control", func(t *testing.T) {
		rt, _, err := l.AddUPnPRouter(ctx, natlab.RouterConfig{Name: "tgwoff", NAT: natlab.Symmetric}, natlab.UPnPConfig{UPnP: true, NATPMP: true})
		if err != nil {
			t.Fatal(err)
		}
		h, _ := rt.AddHost(ctx, "tlisoff")
		ln := reachlab.NewNode(t, h, reach.Config{Servers: []string{cs}, DisablePortMapping: true})
		reachlab.Echo(t, ln)
		sess, el := dialEcho(t, ctx, dialer, ln, 64<<10)
		table += fmt.Sprintf("%-12s %-8s %-27s dial: %-10s %-4s %-20s %v\n", "control", "off", "", sess.Strategy(), sess.Transport(), sess.RemoteAddr(), el.Round(time.Millisecond))
		if sess.Strategy() != reach.StrategyRelay {
			t.Errorf("without the mapping: strategy %s, want relay", sess.Strategy())
		}
		sess.CloseWithError(0, "done")
	})
	t.Log(table)
}
