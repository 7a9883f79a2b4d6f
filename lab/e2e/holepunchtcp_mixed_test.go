package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabHolepunchTCPMixed: the matrix's mixed-variant cells. A site
// behind a linux-host router behind its provider's access router (the
// firewall variant whose router answers what it does not forward)
// punches TCP with a site behind a home router that is itself on the
// internet (no provider hop in the lab). In these pairs the two sides'
// primers end at different places: the home side's primer-TTL SYN reaches
// the server, so its primers die at the linux-host side's provider, as far
// away as the peer (their ICMP errors come back after about a round trip
// to the peer), the linux-host side's at its own provider. Two
// topologies: the matrix's (20 ms one way on every access link, the
// server's link not delayed: the server lies on the peers' path, so the
// primer's ICMP error and the dialler's SYN come back within milliseconds
// of each other) and the server far away (60 ms each way on its link, no
// access delay: the ICMP comes long before the SYN). Each cell dials from
// the linux-host side and from the home side (half the dials each); every
// dial must win holepunch-tcp and echo 64 KiB intact.
// REACH_LAB_DIALS sets the dials per cell (5; 20 for the figures in
// docs/architecture.md). REACH_TCPDUMP=DIR captures every router's
// traffic there (one pcap per router and cell).
func TestLabHolepunchTCPMixed(t *testing.T) {
	for _, topo := range []struct {
		name      string
		serverRTT time.Duration
		access    time.Duration // one way, on every site's access link
	}{{"access-20ms", 0, 20 * time.Millisecond}, {"far-server", 120 * time.Millisecond, 0}} {
		t.Run(topo.name, func(t *testing.T) {
			s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
			if topo.serverRTT > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := s.Srv.Impair(ctx, natlab.Impairment{Delay: topo.serverRTT / 2}); err != nil {
					t.Fatal(err)
				}
			}
			mixedCells(t, s, topo.access)
		})
	}
}

// mixedCells runs TestLabHolepunchTCPMixed's cells in s, with access
// one-way delay on every site's access link.
func mixedCells(t *testing.T, s *reachlab.Scenario, access time.Duration) {
	blocked := natlab.Kind(natlab.UDPBlockedTCPOpen)
	n := dialsPerPair()
	var table []string
	type cell struct{ linux, home natlab.Kind }
	cells := []cell{
		{blocked, natlab.Kind(natlab.FullCone)},
		{blocked, natlab.Kind(natlab.RestrictedCone)},
		{blocked, natlab.Kind(natlab.PortRestricted)},
		{blocked, natlab.KindDouble},
		{blocked, blocked},
		{natlab.Kind(natlab.FullCone), blocked},
		{natlab.Kind(natlab.RestrictedCone), blocked},
		{natlab.Kind(natlab.PortRestricted), blocked},
		{natlab.KindDouble, blocked},
	}
	for i, c := range cells {
		name := fmt.Sprintf("%s/linux-host<->%s/home", c.linux, c.home)
		t.Run(name, func(t *testing.T) {
			a := s.SiteWith(t, fmt.Sprintf("xl%d", i), natlab.SiteConfig{Kind: c.linux, Firewall: natlab.LinuxHost, ISP: true})
			b := s.SiteWith(t, fmt.Sprintf("xh%d", i), natlab.SiteConfig{Kind: c.home, Firewall: natlab.Home})
			for _, site := range []*natlab.Site{a, b} {
				if access > 0 {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					err := site.Router.Host.Impair(ctx, natlab.Impairment{Delay: access})
					cancel()
					if err != nil {
						t.Fatal(err)
					}
				}
				if dir := os.Getenv("REACH_TCPDUMP"); dir != "" {
					pcap := filepath.Join(dir, fmt.Sprintf("%s-cell%d-%s.pcap", strings.ReplaceAll(t.Name(), "/", "_")[:40], i, site.Router.Host.Name()))
					if _, _, err := site.Router.Host.Start(context.Background(), "tcpdump", "-i", "any", "-U", "-w", pcap, "tcp or icmp"); err != nil {
						t.Fatal(err)
					}
				}
			}
			ok, worst := punchCell(t, s, a.Host, b.Host, n, reach.StrategyHolepunchTCP)
			line := fmt.Sprintf("%-55s %d/%d holepunch-tcp, slowest %v", name, ok, n, worst.Round(time.Millisecond))
			table = append(table, line)
			t.Log(line)
		})
	}
	t.Logf("mixed cells:\n%s", strings.Join(table, "\n"))
}
