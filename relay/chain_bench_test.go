package relay_test

import (
	"context"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// BenchmarkRelayChain measures the choice of issue 16 for relayed
// sessions across a fleet's servers: both peers on one relay (what reach
// does: the listener links to the dialler's relay) against the peers on
// two relays with the servers forwarding between them (the alternative,
// not built). The forwarding is emulated by a bridge process that holds a
// link to each relay, as the dialler's peer on one and as the dialler on
// the other, and passes every packet on: the packets cross both relays
// and one more hop, as server-to-server forwarding would make them. One
// stream, 32 MiB per iteration each way at once, over TLS links; reported
// as MB/s each way, the session's round trip, and the CPU the whole
// process spent per MiB carried (peers, relays and bridge).
//
//	go test -run '^$' -bench BenchmarkRelayChain -count 5 ./relay
func BenchmarkRelayChain(b *testing.B) {
	rs1, _ := startServer(b, relay.ServerConfig{})
	rs3, _ := startServer(b, relay.ServerConfig{})
	s1, s3 := rs1.ServerAddr(), rs3.ServerAddr()
	ka, kc := chainKey(b), chainKey(b)

	b.Run("one-relay", func(b *testing.B) {
		a := chainClient(b, ka, s1, nil)
		c := chainClient(b, kc, s1, nil)
		chainRun(b, a, c, ka, kc)
	})
	b.Run("two-relays-forwarding", func(b *testing.B) {
		a := chainClient(b, ka, s1, nil)
		c := chainClient(b, kc, s3, nil)
		// The bridge: C's stand-in on relay 1, A's on relay 3.
		var toA, toC relay.Link
		ready := make(chan struct{})
		onto1 := chainClient(b, kc, s1, func(from identity.PeerID, pkt []byte) {
			<-ready
			toC.Send(kc.ID(), pkt)
		})
		onto3 := chainClient(b, ka, s3, func(from identity.PeerID, pkt []byte) {
			<-ready
			toA.Send(ka.ID(), pkt)
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		if toA, err = onto1.Connect(ctx, s1); err != nil {
			b.Fatal(err)
		}
		if toC, err = onto3.Connect(ctx, s3); err != nil {
			b.Fatal(err)
		}
		close(ready)
		chainRun(b, a, c, ka, kc)
	})
}

func chainKey(b *testing.B) *identity.Key {
	k, err := identity.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	return k
}

// chainClient links k to the relay at sa over TLS; deliver, if set,
// takes what it receives (else its PacketConn does).
func chainClient(b *testing.B, k *identity.Key, sa rendezvous.ServerAddr, deliver func(identity.PeerID, []byte)) *relay.Client {
	b.Helper()
	c, err := relay.NewClient(relay.ClientConfig{Key: k, Dialers: []relay.LinkDialer{relay.TLSDialer{}}, Deliver: deliver, Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, sa); err != nil {
		b.Fatal(err)
	}
	return c
}

// chainRun opens a session from a (key ka) to c (key kc) on their relayed
// packet connections and moves 32 MiB each way per iteration on one
// stream that c echoes.
func chainRun(b *testing.B, a, c *relay.Client, ka, kc *identity.Key) {
	b.Helper()
	cfg := relay.SessionConfig(stream.Config{})
	tra, trc := &quic.Transport{Conn: a.PacketConn()}, &quic.Transport{Conn: c.PacketConn()}
	b.Cleanup(func() { tra.Close(); trc.Close() })
	ln, err := stream.Listen(trc, kc, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		sess, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		for {
			st, err := sess.AcceptStream(ctx)
			if err != nil {
				return
			}
			go func() { io.Copy(st, st); st.Close() }()
		}
	}()
	sess, err := stream.DialAddr(ctx, tra, relay.Addr{Peer: kc.ID()}, ka, kc.ID(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer sess.CloseWithError(0, "")
	var rtt time.Duration
	for range 5 {
		d, err := sess.Ping(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if rtt == 0 || d < rtt {
			rtt = d
		}
	}
	const size = 32 << 20
	b.SetBytes(size)
	b.ResetTimer()
	cpu0 := processCPU()
	for b.Loop() {
		st, err := sess.OpenStream(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := roundTrip(st, size); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(rtt.Microseconds()), "rtt-µs")
	// The whole process: both peers' QUIC, the relays, the bridge.
	b.ReportMetric((processCPU()-cpu0).Seconds()*1e3/float64(b.N)/(2*size>>20), "cpu-ms/MiB")
}

// processCPU is the CPU time (user and system) the process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
