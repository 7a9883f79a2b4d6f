package e2e_test

import (
	"context"
	"crypto/tls"
	"net/netip"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/stream"
)

// labBareTCPPort is the port of the bare TLS listener on the open host.
const labBareTCPPort = 41001

// BenchmarkLabTCPThroughput: one stream's throughput over reach's TCP
// paths (TLS 1.3 + yamux, issue 17) against bare TLS 1.3 over TCP between
// the same two hosts, in one run. reach-direct-tcp and bare-tls go from a
// host behind udp-blocked-tcp-open to a public host (reach must win by
// direct-tcp; bare TLS dials the public host's own listener, a new
// connection per iteration, as reach opens a new stream); paired-tcp
// interleaves the two and reports reach/bare. reach-holepunch-tcp runs
// between a host behind udp-blocked-tcp-open and one behind a
// port-restricted NAT (holepunch-tcp must win): the path no bare
// connection can take without the punch, reported alone. No link
// impairment: this measures what yamux and the session cost on top of
// TLS over the kernel's TCP.
//
//	go test -run '^$' -bench 'BenchmarkLabTCPThroughput' -count 5 -benchtime 3x ./lab/e2e
func BenchmarkLabTCPThroughput(b *testing.B) {
	s := reachlab.NewScenario(b, reachlab.ServerConfig{Relay: true})
	cs := s.ConnectString()
	blocked := natlab.Kind(natlab.UDPBlockedTCPOpen)
	ta := s.Site(b, "tta", blocked)
	to := s.Site(b, "tto", natlab.Open)
	ha := s.Site(b, "tha", blocked)
	hb := s.Site(b, "thb", natlab.Kind(natlab.PortRestricted))

	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	reachOpen := func(sess *stream.Session, nb *reach.Node) (func(context.Context) (halfStream, error), <-chan copyResult) {
		got := make(chan copyResult, 1)
		go func() {
			for {
				st, err := nb.Accept(runCtx)
				if err != nil {
					return
				}
				got <- drain(st)
			}
		}()
		return func(ctx context.Context) (halfStream, error) {
			st, err := sess.OpenStream(ctx)
			if err != nil {
				return nil, err
			}
			return st, nil
		}, got
	}

	sess, nb := reachSession(b, cs, ta.Host, to.Host, reach.StrategyDirectTCP)
	if sess.Transport() != stream.TransportTCP {
		b.Fatalf("direct-tcp session over %s", sess.Transport())
	}
	openReach, got := reachOpen(sess, nb)
	openBare, bgot := bareTLS(b, runCtx, ta.Host, to.Host)

	b.Run("reach-direct-tcp", func(b *testing.B) { benchCopy(b, openReach, got) })
	b.Run("bare-tls", func(b *testing.B) { benchCopy(b, openBare, bgot) })
	b.Run("paired-tcp", func(b *testing.B) { benchPaired(b, openReach, got, openBare, bgot) })

	hsess, hnb := reachSession(b, cs, ha.Host, hb.Host, reach.StrategyHolepunchTCP)
	openPunched, pgot := reachOpen(hsess, hnb)
	b.Run("reach-holepunch-tcp", func(b *testing.B) { benchCopy(b, openPunched, pgot) })
}

// bareTLS listens with TLS 1.3 (pinned keys, as reach's sessions) on the
// public host server and returns how client opens a new connection to it
// (its write side closed with CloseWrite, the TLS close_notify) and the
// channel that reports what each accepted connection carried.
func bareTLS(b *testing.B, runCtx context.Context, client, server *natlab.Host) (func(context.Context) (halfStream, error), <-chan copyResult) {
	b.Helper()
	ck, sk := benchKey(b), benchKey(b)
	stls, err := identity.ServerTLSConfig(sk, stream.ALPN)
	if err != nil {
		b.Fatal(err)
	}
	ctls, _, err := identity.ClientTLSConfig(ck, sk.ID(), stream.ALPN)
	if err != nil {
		b.Fatal(err)
	}
	addr := netip.AddrPortFrom(server.Addr(), labBareTCPPort)
	ln, err := server.ListenTCP(addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	got := make(chan copyResult, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, stls)
				hctx, cancel := context.WithTimeout(runCtx, 10*time.Second)
				defer cancel()
				if err := tc.HandshakeContext(hctx); err != nil {
					c.Close()
					got <- copyResult{err: err}
					return
				}
				got <- drain(tc)
			}()
		}
	}()
	return func(ctx context.Context) (halfStream, error) {
		c, err := client.DialTCP(addr, 10*time.Second)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(c, ctls)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}, got
}
