package e2e_test

import (
	"context"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/stream"
)

// BenchmarkLabMoved: one stream's throughput on a session that started
// on the relay and moved to the hole-punched path (1200-byte packets, the
// size every path carries), against a session born on that path (path
// MTU discovery), between the same two hosts behind port-restricted NATs,
// interleaved in each iteration. Metrics: MB/s of each and moved/direct.
// The server flies no first flights, so that the moved session is born on
// the relay (a first flight would win on the hole-punched path's word and
// move to the relay only after 0.5 s).
//
//	go test -run '^$' -bench BenchmarkLabMoved -benchtime 3x -count 5 ./lab/e2e
func BenchmarkLabMoved(b *testing.B) {
	s := reachlab.NewScenario(b, reachlab.ServerConfig{Relay: true, DisableFlights: true, RelayConfig: relay.ServerConfig{Logger: quietLogger(b)}})
	sa, sb := s.Pair(b, natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.PortRestricted))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	moved := make(chan reach.PathEvent, 16)
	cfg := reach.Config{Servers: []string{s.ConnectString()}, Logger: quietLogger(b), DisablePortMapping: true}
	cfgA := cfg
	cfgA.OnPathEvent = func(e reach.PathEvent) {
		if e.Kind == reach.PathMoved {
			select {
			case moved <- e:
			default:
			}
		}
	}

	// The moved session: dialled with the direct path cut, then mended.
	if err := sa.Router.Block(ctx, sb.Router.WAN()); err != nil {
		b.Fatal(err)
	}
	na := reachlab.NewNode(b, sa.Host, cfgA)
	nb := reachlab.NewNode(b, sb.Host, cfg)
	mv, err := na.DialSession(ctx, nb.ID())
	if err != nil {
		b.Fatal(err)
	}
	if mv.Strategy() != reach.StrategyRelay {
		b.Fatalf("strategy %s, want relay", mv.Strategy())
	}
	if err := sa.Router.Unblock(ctx); err != nil {
		b.Fatal(err)
	}
	select {
	case e := <-moved:
		b.Logf("moved to %s at %v", e.Strategy, e.Path)
	case <-time.After(15 * time.Second):
		b.Fatal("the relayed session did not move")
	}

	// The session born direct, between two more nodes on the same hosts.
	nc := reachlab.NewNode(b, sa.Host, cfg)
	nd := reachlab.NewNode(b, sb.Host, cfg)
	dr, err := nc.DialSession(ctx, nd.ID())
	if err != nil {
		b.Fatal(err)
	}
	if dr.Strategy() != reach.StrategyHolepunch {
		b.Fatalf("direct session: strategy %s", dr.Strategy())
	}

	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	sink := func(n *reach.Node) <-chan copyResult {
		got := make(chan copyResult, 1)
		go func() {
			for {
				st, err := n.Accept(runCtx)
				if err != nil {
					return
				}
				got <- drain(st)
			}
		}()
		return got
	}
	gotB, gotD := sink(nb), sink(nd)
	open := func(sess *stream.Session) func(context.Context) (halfStream, error) {
		return func(ctx context.Context) (halfStream, error) { return sess.OpenStream(ctx) }
	}
	var tMoved, tDirect time.Duration
	b.ResetTimer()
	for range b.N {
		tMoved += copyOnce(b, open(mv), gotB)
		tDirect += copyOnce(b, open(dr), gotD)
	}
	b.StopTimer()
	mb := float64(labBenchBytes) * float64(b.N) / 1e6
	b.ReportMetric(mb/tMoved.Seconds(), "moved-MB/s")
	b.ReportMetric(mb/tDirect.Seconds(), "direct-MB/s")
	b.ReportMetric(tDirect.Seconds()/tMoved.Seconds(), "moved/direct")
	if mv.Strategy() != reach.StrategyHolepunch {
		b.Fatalf("the moved session is on %s now", mv.Strategy())
	}
}
