package reachlab

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// Scenario is the lab most end-to-end tests start from: a NAT lab
// (natlab.NewT: closed when the test ends, dumped when it fails) with
// reach's server on the public host "srv". Sites for the peers are added
// with Site or Pair, nodes with Node.
type Scenario struct {
	*natlab.Lab
	// Srv is the server's host on the internet segment.
	Srv *natlab.Host
	// Server is the rendezvous server (and STUN) on Srv.
	Server *rendezvous.RunningServer
	// Relay is the relay next to it; nil unless the scenario has one.
	Relay *relay.Server
	// servers are the connect strings nodes get.
	servers []string
	pairs   int
}

// ServerConfig says what runs on the scenario's server host.
type ServerConfig struct {
	// Relay runs the relay next to the rendezvous server, with TLS on
	// TCP 443 (StartRelayServer); without it the server has no relay
	// (StartServer).
	Relay bool
	// RelayConfig configures the relay when Relay is set.
	RelayConfig relay.ServerConfig
	// IPv6 makes the server listen on all its addresses, IPv4 and IPv6
	// (one dual-stack socket, as `reach server` does by default), and
	// gives every node both of its connect strings, the IPv4 one first:
	// what an operator hands out for a dual-stack server when the lab has
	// no DNS name to give. Zero: the server listens on its IPv4 address
	// only.
	IPv6 bool
	// DisableFlights runs the server without first flights
	// (rendezvous.ServerConfig.DisableFlights), as a server older than
	// them; without Relay only.
	DisableFlights bool
	// Registry joins the server to a fleet (rendezvous.ServerConfig
	// .Registry); with Relay only. Nil: the in-memory registry.
	Registry rendezvous.Registry
	// Park lets the server park idle registrations
	// (rendezvous.ServerConfig.Park). Zero: off.
	Park rendezvous.ParkConfig
}

// NewScenario builds the lab and starts the server (skipping the test
// when the lab cannot run here, see natlab.Require).
func NewScenario(t testing.TB, cfg ServerConfig) *Scenario {
	t.Helper()
	s := &Scenario{Lab: natlab.NewT(t)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	if s.Srv, err = s.AddPublicHost(ctx, "srv"); err != nil {
		t.Fatal(err)
	}
	listen := netip.AddrPortFrom(s.Srv.Addr(), rendezvous.DefaultPort)
	if cfg.IPv6 {
		listen = netip.AddrPortFrom(netip.IPv6Unspecified(), rendezvous.DefaultPort)
	}
	if cfg.Relay {
		s.Server, s.Relay = startRelayServer(t, s.Srv, cfg.RelayConfig, listen, cfg.DisableFlights, cfg.Registry, cfg.Park)
	} else {
		s.Server, _ = startServer(t, s.Srv, listen, cfg.DisableFlights, cfg.Park)
	}
	sa := s.Server.ServerAddr()
	sa.Host = s.Srv.Addr().String()
	s.servers = []string{sa.String()}
	if cfg.IPv6 {
		sa.Host = s.Srv.Addr6().String()
		s.servers = append(s.servers, sa.String())
	}
	return s
}

// ConnectString is the server's connect string (its IPv4 address), for
// Config.Servers.
func (s *Scenario) ConnectString() string { return s.servers[0] }

// ConnectStrings are the connect strings every node gets: the server's
// IPv4 address, and with ServerConfig.IPv6 its IPv6 address after it.
func (s *Scenario) ConnectStrings() []string { return append([]string(nil), s.servers...) }

// Site adds a site of kind k named name (a public host, or a host behind
// a router of that kind).
func (s *Scenario) Site(t testing.TB, name string, k natlab.Kind) *natlab.Site {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	site, err := s.AddSite(ctx, name, k)
	if err != nil {
		t.Fatalf("site %s (%s): %v", name, k, err)
	}
	return site
}

// Pair adds two sites, one of kind a and one of kind b, each behind its
// own router: the two peers of a test, named p<N>a and p<N>b.
func (s *Scenario) Pair(t testing.TB, a, b natlab.Kind) (*natlab.Site, *natlab.Site) {
	t.Helper()
	s.pairs++
	return s.Site(t, fmt.Sprintf("p%da", s.pairs), a), s.Site(t, fmt.Sprintf("p%db", s.pairs), b)
}

// Node starts a node on h (NewNode) registered with the scenario's
// server (ConnectStrings), unless cfg names servers of its own.
func (s *Scenario) Node(t testing.TB, h *natlab.Host, cfg reach.Config) *reach.Node {
	t.Helper()
	if len(cfg.Servers) == 0 {
		cfg.Servers = s.ConnectStrings()
	}
	return NewNode(t, h, cfg)
}

// SiteWith adds a site as cfg says (natlab.SiteConfig: kind, firewall
// variant, an ISP hop).
func (s *Scenario) SiteWith(t testing.TB, name string, cfg natlab.SiteConfig) *natlab.Site {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	site, err := s.AddSiteWith(ctx, name, cfg)
	if err != nil {
		t.Fatalf("site %s (%+v): %v", name, cfg, err)
	}
	return site
}

// AddServer starts another server with a relay (cfg.Relay is implied) on
// a new public host named name, such as a second server of a fleet
// (cfg.Registry), and returns it, its relay and its connect string.
func (s *Scenario) AddServer(t testing.TB, name string, cfg ServerConfig) (*rendezvous.RunningServer, *relay.Server, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := s.AddPublicHost(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	rs, rl := startRelayServer(t, h, cfg.RelayConfig, netip.AddrPortFrom(h.Addr(), rendezvous.DefaultPort), cfg.DisableFlights, cfg.Registry, cfg.Park)
	sa := rs.ServerAddr()
	sa.Host = h.Addr().String()
	return rs, rl, sa.String()
}
