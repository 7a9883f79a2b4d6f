// Package reachlab puts reach servers and nodes on NAT lab hosts, for the
// end-to-end tests and benchmarks: every socket a node or server opens is
// created inside its host's namespace, so no packet leaves the lab. It
// also holds what those tests share: a scenario (a lab with a server host
// and peers' sites, Scenario) and the echo check (Echo on the listener,
// CheckEcho or RoundTrip on the dialler: random bytes out, their SHA-256
// back).
package reachlab

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// StartServer runs a rendezvous server on host h at port 4950 (UDP and
// TCP) of its IPv4 address until the test ends and returns its connect
// string.
func StartServer(t testing.TB, h *natlab.Host) (*rendezvous.RunningServer, string) {
	return startServer(t, h, netip.AddrPortFrom(h.Addr(), rendezvous.DefaultPort), false, rendezvous.ParkConfig{})
}

// startServer is StartServer on listen, without first flights if
// noFlights, parking registrations as park says.
func startServer(t testing.TB, h *natlab.Host, listen netip.AddrPort, noFlights bool, park rendezvous.ParkConfig) (*rendezvous.RunningServer, string) {
	t.Helper()
	var rs *rendezvous.RunningServer
	err := h.Run(func() error {
		var err error
		rs, err = rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{Logger: natlab.TestLogger(t).With("server", h.Name()), DisableFlights: noFlights, Park: park}, listen)
		return err
	})
	if err != nil {
		t.Fatalf("server on %s: %v", h.Name(), err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs, rs.ConnectString()
}

// HostConfig fills the Config hooks that must run inside h's namespace:
// TCP dials, helper UDP sockets (the port mapper's) and interface
// enumeration.
func HostConfig(h *natlab.Host, cfg reach.Config) reach.Config {
	cfg.DialTCP = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := h.Run(func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	cfg.RunInNetwork = h.Run
	cfg.ListenPacket = func(network, addr string) (net.PacketConn, error) {
		var c net.PacketConn
		err := h.Run(func() error {
			var err error
			c, err = net.ListenPacket(network, addr)
			return err
		})
		return c, err
	}
	cfg.InterfaceAddrs = func() ([]net.Addr, error) {
		var addrs []net.Addr
		err := h.Run(func() error {
			var err error
			addrs, err = net.InterfaceAddrs()
			return err
		})
		return addrs, err
	}
	return cfg
}

// NewNode starts a node on host h (closed when the test ends).
func NewNode(t testing.TB, h *natlab.Host, cfg reach.Config) *reach.Node {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = natlab.TestLogger(t).With("host", h.Name())
	}
	cfg = HostConfig(h, cfg)
	var n *reach.Node
	err := h.Run(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		var err error
		n, err = reach.New(ctx, cfg)
		return err
	})
	if err != nil {
		t.Fatalf("node on %s: %v", h.Name(), err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// StartRelayServer runs what `reach server` runs on h: rendezvous, STUN
// and the relay, on UDP and TCP 4950 and TLS on TCP 443 of its IPv4
// address, until the test ends.
func StartRelayServer(t testing.TB, h *natlab.Host, rcfg relay.ServerConfig) (*rendezvous.RunningServer, *relay.Server) {
	return startRelayServer(t, h, rcfg, netip.AddrPortFrom(h.Addr(), rendezvous.DefaultPort), false, nil, rendezvous.ParkConfig{})
}

// startRelayServer is StartRelayServer on listen, without first flights
// if noFlights, parking registrations as park says.
func startRelayServer(t testing.TB, h *natlab.Host, rcfg relay.ServerConfig, listen netip.AddrPort, noFlights bool, reg rendezvous.Registry, park rendezvous.ParkConfig) (*rendezvous.RunningServer, *relay.Server) {
	t.Helper()
	log := rcfg.Logger // a benchmark's quiet logger serves both
	if log == nil {
		log = natlab.TestLogger(t)
		rcfg.Logger = log.With("relay", h.Name())
	}
	rl := relay.NewServer(rcfg)
	var rs *rendezvous.RunningServer
	err := h.Run(func() error {
		var err error
		rs, err = rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
			Logger:         log.With("server", h.Name()),
			Protocols:      map[string]rendezvous.Protocol{relay.ALPN: rl},
			TLSPort:        443,
			DisableFlights: noFlights,
			Registry:       reg,
			Park:           park,
		}, listen)
		return err
	})
	if err != nil {
		t.Fatalf("server on %s: %v", h.Name(), err)
	}
	t.Cleanup(func() { rs.Close() })
	if !rs.TLSAddr().IsValid() || rs.ServerAddr().TCPPort != 443 {
		t.Fatalf("server did not bind TLS on 443: %v %s", rs.TLSAddr(), rs.ConnectString())
	}
	return rs, rl
}
