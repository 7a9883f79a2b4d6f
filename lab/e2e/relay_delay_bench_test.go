package e2e_test

import (
	"context"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/relay"
)

// BenchmarkLabRelayDelayed: one stream's throughput, 16 MiB per
// iteration, with 20 ms one-way delay on every peer's access link (the
// matrix's main variant; the server near), through the relay on UDP links
// (two symmetric NATs), on TLS links (two peers in a UDP-blocked network)
// and directly (two open hosts), in one lab. Where the relay's cost is
// hidden by the delay, what is left is how the relayed path reacts to a
// long round trip: two TCP legs under a QUIC session, say.
//
//	go test -run '^$' -bench BenchmarkLabRelayDelayed -benchtime 2x ./lab/e2e
func BenchmarkLabRelayDelayed(b *testing.B) {
	const size = 16 << 20
	s := reachlab.NewScenario(b, reachlab.ServerConfig{Relay: true, RelayConfig: relay.ServerConfig{Logger: quietLogger(b), PeerRate: -1, TotalRate: -1}})
	rl := s.Relay
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	syma, symb := s.Site(b, "dsa", natlab.Kind(natlab.Symmetric)), s.Site(b, "dsb", natlab.Kind(natlab.Symmetric))
	corp := s.Site(b, "dcorp", natlab.Kind(natlab.UDPBlocked))
	hd, err := corp.Router.AddHost(ctx, "dcorpd")
	if err != nil {
		b.Fatal(err)
	}
	oa, ob := s.Site(b, "doa", natlab.Open).Host, s.Site(b, "dob", natlab.Open).Host
	for _, h := range []*natlab.Host{syma.Host, symb.Host, corp.Host, hd, oa, ob} {
		if err := h.Impair(ctx, natlab.Impairment{Delay: 20 * time.Millisecond}); err != nil {
			b.Fatal(err)
		}
	}
	cfg := reach.Config{Servers: []string{s.ConnectString()}, Logger: quietLogger(b), DisablePortMapping: true, UpgradeInterval: -1}
	direct := cfg
	direct.Strategies = []string{reach.StrategyDirect}
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	got := make(chan copyResult, 1)
	for _, p := range []struct {
		name      string
		a, bh     *natlab.Host
		cfg       reach.Config
		strategy  string
		transport string
	}{
		{"udp-link", syma.Host, symb.Host, cfg, reach.StrategyRelay, "udp"},
		{"tls-tls", corp.Host, hd, cfg, reach.StrategyRelay, "tls"},
		{"direct", oa, ob, direct, reach.StrategyDirect, ""},
	} {
		na := reachlab.NewNode(b, p.a, p.cfg)
		nb := reachlab.NewNode(b, p.bh, p.cfg)
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
		if sess.Strategy() != p.strategy || p.transport != "" && na.Status().RelayTransport != p.transport {
			b.Fatalf("%s: strategy %s over %q", p.name, sess.Strategy(), na.Status().RelayTransport)
		}
		b.Run(p.name, func(b *testing.B) {
			b.SetBytes(size)
			for range b.N {
				copyN(b, sess, got, size)
			}
			if p.transport != "" {
				logRelayStats(b, sess, rl)
			}
		})
	}
}
