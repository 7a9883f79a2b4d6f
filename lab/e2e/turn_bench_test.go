package e2e_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/stream"
)

// turnBenchBytes is what one transfer of BenchmarkLabRelayVsTURN moves.
const turnBenchBytes = 32 << 20

// BenchmarkLabRelayVsTURN: one stream's throughput between two peers
// behind symmetric NATs, through our relay (UDP links) and through coturn
// (UDP allocations) on the same server host, in one run. Each iteration
// moves turnBenchBytes through each, alternately (so load from elsewhere
// on the machine hits both alike); it reports the median of each in MB/s
// and relay/turn, the ratio of the medians.
//
//	go test -run '^$' -bench BenchmarkLabRelayVsTURN -benchtime 5x ./lab/e2e
func BenchmarkLabRelayVsTURN(b *testing.B) {
	s := reachlab.NewScenario(b, reachlab.ServerConfig{Relay: true, RelayConfig: relay.ServerConfig{Logger: quietLogger(b), PeerRate: -1, TotalRate: -1}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rs := s.Server
	ct, err := s.Srv.StartCoturn(ctx, natlab.CoturnConfig{Users: map[string]string{"alice": "wonderland"}})
	if err != nil {
		b.Fatal(err)
	}
	syma, symb := s.Site(b, "vsa", natlab.Kind(natlab.Symmetric)), s.Site(b, "vsb", natlab.Kind(natlab.Symmetric))
	base := reach.Config{Servers: []string{rs.ConnectString()}, Logger: quietLogger(b), DisablePortMapping: true, UpgradeInterval: -1}
	pair := func(cfg reach.Config, want string) (*stream.Session, <-chan copyResult) {
		na := reachlab.NewNode(b, syma.Host, cfg)
		nb := reachlab.NewNode(b, symb.Host, cfg)
		got := make(chan copyResult, 1)
		go func() {
			for {
				st, err := nb.Accept(context.Background())
				if err != nil {
					return
				}
				got <- drain(st)
			}
		}()
		if want == reach.StrategyTURN {
			reachlab.MustWaitFor(b, 5*time.Second, "TURN allocations", func() bool { return na.Status().TURN.IsValid() && nb.Status().TURN.IsValid() })
		}
		sess, err := na.DialSession(ctx, nb.ID())
		if err != nil {
			b.Fatal(err)
		}
		if sess.Strategy() != want {
			b.Fatalf("strategy %s, want %s", sess.Strategy(), want)
		}
		return sess, got
	}
	rcfg := base
	rcfg.Strategies = []string{reach.StrategyRelay}
	rsess, rgot := pair(rcfg, reach.StrategyRelay)
	tcfg := base
	tcfg.Strategies = []string{reach.StrategyTURN}
	tcfg.TURN = []reach.TURNServer{{URL: "turn:" + ct.Addr().String(), Username: "alice", Password: "wonderland"}}
	tsess, tgot := pair(tcfg, reach.StrategyTURN)

	var relayMBs, turnMBs []float64
	mbps := func(d time.Duration) float64 { return float64(turnBenchBytes) / d.Seconds() / 1e6 }
	b.SetBytes(2 * turnBenchBytes)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		copyN(b, rsess, rgot, turnBenchBytes)
		relayMBs = append(relayMBs, mbps(time.Since(start)))
		start = time.Now()
		copyN(b, tsess, tgot, turnBenchBytes)
		turnMBs = append(turnMBs, mbps(time.Since(start)))
	}
	b.StopTimer()
	rm, tm := median(relayMBs), median(turnMBs)
	b.Logf("relay MB/s %.1f, turn MB/s %.1f (medians of %d): relay/turn %.2f", rm, tm, b.N, rm/tm)
	b.ReportMetric(rm, "relay-MB/s")
	b.ReportMetric(tm, "turn-MB/s")
	b.ReportMetric(rm/tm, "relay/turn")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
