package e2e_test

import (
	"context"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/relay"
)

// BenchmarkLabRelayStart: the first 4 MiB of a fresh relayed session, as
// the matrix measures it (fresh nodes for every iteration, so fresh relay
// links; 20 ms one-way delay on each site's access link, 82 ms round
// trip), from a UDP-blocked site to another (both peers on TLS links:
// "tls-tls"), to a proxy-only site (the receiver's TLS link through squid:
// "tls-proxy") and to a symmetric NAT (the receiver on a UDP link:
// "tls-udp"); and the other way round for the mixed pairs, the sender
// on a UDP link (symmetric NAT) and the receiver on a TLS link
// ("udp-tls") or behind the proxy ("udp-proxy"): there the relay's TCP
// send to the receiver is the fresh leg that queued the sender's bursts
// (the sender now opens a streams-only link for a relayed stream).
//
// Both peers on byte-stream links run TLS+yamux over a relayed stream
// (stream%: the share of sessions that did); the -quic variants turn
// relayed streams off (Config.DisableRelayStreams) for QUIC over relayed
// packets, as before.
//
// It reports the median throughput, the median Dial → session time
// (dial-ms), slow%: the share of sessions under 20 Mbit/s, and
// early-exit%: the share of
// sessions whose QUIC congestion window ended below 256 KB with no packet
// lost. quic-go's hybrid slow start leaves slow start when the smallest
// of the first 8 round-trip samples of a round is 10 ms (min RTT/8,
// clamped to 4..16 ms) above the session's min RTT. A TLS link's TCP
// connection starts with a 10-segment window and grows only with what it
// carries, so in the session's second and third round trips its two
// fresh TCP legs queue QUIC's packets for 15-35 ms (seen in qlog: latest
// RTT 98-118 ms against 84), and in some sessions slow start ends at
// about 66 packets without a loss; the window then grows by about a
// packet per round trip (Cubic with no earlier maximum) and the 4 MiB
// move at about 8 Mbit/s instead of 45-50. docs/benchmarks.md has the
// figures.
//
//	go test -run '^$' -bench BenchmarkLabRelayStart -benchtime 20x ./lab/e2e
func BenchmarkLabRelayStart(b *testing.B) {
	const size = 4 << 20
	s := reachlab.NewScenario(b, reachlab.ServerConfig{Relay: true, RelayConfig: relay.ServerConfig{Logger: quietLogger(b)}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ua := s.Site(b, "rsta", natlab.Kind(natlab.UDPBlocked))
	ub := s.Site(b, "rstb", natlab.Kind(natlab.UDPBlocked))
	sym := s.Site(b, "rstc", natlab.Kind(natlab.Symmetric))
	po := s.Site(b, "rstd", natlab.Kind(natlab.ProxyOnly))
	sq, err := po.Router.StartSquid(ctx)
	if err != nil {
		b.Fatal(err)
	}
	proxyURL, err := url.Parse(sq.URL())
	if err != nil {
		b.Fatal(err)
	}
	for _, site := range []*natlab.Site{ua, ub, sym, po} {
		if err := site.Router.Impair(ctx, natlab.Impairment{Delay: 20 * time.Millisecond}); err != nil {
			b.Fatal(err)
		}
	}
	cfg := reach.Config{Servers: []string{s.ConnectString()}, Logger: quietLogger(b), DisablePortMapping: true, UpgradeInterval: -1}
	viaProxy := cfg
	viaProxy.Proxy = proxyURL
	quicOnly := cfg
	quicOnly.DisableRelayStreams = true
	quicProxy := viaProxy
	quicProxy.DisableRelayStreams = true
	for _, p := range []struct {
		name       string
		a, bh      *natlab.Host
		acfg, bcfg reach.Config
	}{
		{"tls-tls", ua.Host, ub.Host, cfg, cfg},
		{"tls-proxy", ua.Host, po.Host, cfg, viaProxy},
		{"tls-udp", ua.Host, sym.Host, cfg, cfg},
		{"udp-tls", sym.Host, ua.Host, cfg, cfg},
		{"udp-proxy", sym.Host, po.Host, cfg, viaProxy},
		{"tls-tls-quic", ua.Host, ub.Host, quicOnly, quicOnly},
		{"tls-proxy-quic", ua.Host, po.Host, quicOnly, quicProxy},
		{"udp-tls-quic", sym.Host, ua.Host, quicOnly, quicOnly},
		{"udp-proxy-quic", sym.Host, po.Host, quicOnly, quicProxy},
	} {
		b.Run(p.name, func(b *testing.B) {
			var mbps, dialMS []float64
			early, slow, streams := 0, 0, 0
			for range b.N {
				na := reachlab.NewNode(b, p.a, p.acfg)
				nb := reachlab.NewNode(b, p.bh, p.bcfg)
				got := make(chan copyResult, 1)
				go func() {
					st, err := nb.Accept(ctx)
					if err != nil {
						return
					}
					got <- drain(st)
				}()
				dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
				d0 := time.Now()
				sess, err := na.DialSession(dctx, nb.ID())
				dialMS = append(dialMS, float64(time.Since(d0).Milliseconds()))
				dcancel()
				if err != nil {
					b.Fatal(err)
				}
				if sess.Strategy() != reach.StrategyRelay {
					b.Fatalf("strategy %s, want relay", sess.Strategy())
				}
				t0 := time.Now()
				copyN(b, sess, got, size)
				mbps = append(mbps, size*8/time.Since(t0).Seconds()/1e6)
				if mbps[len(mbps)-1] < 20 {
					slow++
				}
				if qc := sess.QUIC(); qc == nil {
					streams++
				} else {
					cs := qc.ConnectionStats()
					if cs.PacketsLost == 0 && cs.CongestionWindow < 256<<10 {
						early++
					}
				}
				sess.Close()
				na.Close()
				nb.Close()
			}
			slices.Sort(mbps)
			slices.Sort(dialMS)
			b.ReportMetric(mbps[len(mbps)/2], "Mbit/s")
			b.ReportMetric(dialMS[len(dialMS)/2], "dial-ms")
			b.ReportMetric(100*float64(early)/float64(b.N), "early-exit%")
			b.ReportMetric(100*float64(slow)/float64(b.N), "slow%")
			b.ReportMetric(100*float64(streams)/float64(b.N), "stream%")
			b.Logf("%s: Mbit/s per session %.0f", p.name, mbps)
		})
	}
}
