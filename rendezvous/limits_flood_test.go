package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSpoofedSourceFloodBounded: 1,500 distinct sources (127.1.x.y) each
// send one QUIC Initial and one STUN request and never answer, as a flood
// with spoofed source addresses does. Without limits every Initial gets a
// handshake (about 19 KiB and several goroutines for the handshake
// timeout); now past RetryHandshakes in progress each must prove its
// address with a Retry first, so handshake state stays bounded, and the
// token buckets stay within MaxSources per limit. An honest peer
// registers meanwhile (through the Retry).
func TestSpoofedSourceFloodBounded(t *testing.T) {
	const sources = 1500
	const maxSources = 512
	rs := startTestServer(t, ServerConfig{
		HandshakeTimeout: 20 * time.Second, // the whole flood is in progress at the end
		Limits:           testLimits(LimitConfig{MaxSources: maxSources}),
	})
	server := rs.UDPAddr()
	before := heapInUse()
	start := time.Now()

	socks := make([]*net.UDPConn, sources)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range sources {
		ip := fmt.Sprintf("127.1.%d.%d", i/250, i%250+1)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			uc := spoofedInitial(t, ip, server)
			uc.WriteToUDPAddrPort(bindingRequest(t), server)
			socks[i] = uc
		})
		if i == sources/2 {
			wg.Go(func() {
				honest := startClient(t, "honest", mustKey(t), []ServerAddr{rs.ServerAddr()}, transportOn(t, "127.0.0.9"))
				if honest.Current().IsZero() {
					t.Error("honest peer not registered")
				}
			})
		}
	}
	wg.Wait()
	time.Sleep(300 * time.Millisecond) // the server reads what is queued
	took := time.Since(start)
	grew := int64(heapInUse()) - int64(before)
	st := rs.Stats()
	for _, uc := range socks {
		uc.Close()
	}
	t.Logf("%d spoofed sources in %v: handshakes in progress %d (peak %d), %d Retries, %d refused, %d STUN answered, %d buckets; heap grew %.1f MiB",
		sources, took.Round(time.Millisecond), st.Handshakes, st.PeakHandshakes, st.Retries, st.ConnsRefused, st.STUNRequests, st.Sources, float64(grew)/(1<<20))
	if limit := DefaultRetryHandshakes + 2; st.PeakHandshakes > limit {
		t.Errorf("peak of %d handshakes in progress, want at most %d", st.PeakHandshakes, limit)
	}
	if st.Sources > 6*maxSources {
		t.Errorf("%d buckets, want at most %d (MaxSources per limit)", st.Sources, 6*maxSources)
	}
	const heapBound = 8 << 20
	if grew > heapBound {
		t.Errorf("heap grew %.1f MiB under the flood, bound %d MiB", float64(grew)/(1<<20), heapBound>>20)
	}
}

// TestLimitsFloodHonestServed: the load test of issue 15 for the server.
// For 3 s one hostile address (127.0.0.2) registers fresh identities over
// QUIC, one of its peers asks for introductions, and it sends STUN
// requests, each at full speed, while another (127.0.0.3) opens QUIC
// handshakes it never finishes; meanwhile 20 honest peers, each on its
// own address, register, ask STUN once and are introduced to two peers.
// Every honest operation succeeds; the hostile excess is refused or
// dropped and counted. Connection and registration rates are scaled down
// (a handshake costs the test's CPU too much to go past the defaults).
func TestLimitsFloodHonestServed(t *testing.T) {
	const honestN = 20
	const flood = 3 * time.Second
	lim := LimitConfig{
		Conns:         Rate{PerSecond: 20, Burst: 40},
		Registrations: Rate{PerSecond: 10, Burst: 20},
	}
	rs := startTestServer(t, ServerConfig{Limits: testLimits(lim)})
	sa := rs.ServerAddr()
	servers := []ServerAddr{sa}
	udp := rs.UDPAddr()
	before := heapInUse()

	// The target's own queue (ClientConfig.IncomingQueue) must hold the
	// honest peers' 20 introductions arriving at once beside the hostile
	// one's share: that queue is the node's, not the server's.
	target := startClient(t, "target", mustKey(t), servers, transportOn(t, "127.0.0.10"),
		func(c *ClientConfig) { c.IncomingQueue = 64 })
	answerAll(t, target)
	hk := startClient(t, "hostile", mustKey(t), servers, transportOn(t, "127.0.0.2"))

	ctx, cancel := context.WithTimeout(context.Background(), flood)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	var regOK, regLimited, regOther atomic.Int64
	regTr := transportOn(t, "127.0.0.2")
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				rctx, rcancel := context.WithTimeout(ctx, time.Second)
				err := rawRegister(rctx, t, regTr, mustKey(t), sa)
				rcancel()
				switch {
				case err == nil:
					regOK.Add(1)
				case errors.Is(err, ErrRateLimited):
					regLimited.Add(1)
				default:
					regOther.Add(1) // refused or retried handshakes, or the flood's end
				}
			}
		})
	}
	var introOK, introLimited, introOther atomic.Int64
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil {
				_, err := hk.Connect(ctx, target.cfg.Key.ID(), PeerInfo{})
				switch {
				case err == nil:
					introOK.Add(1)
				case errors.Is(err, ErrRateLimited):
					introLimited.Add(1)
				default:
					introOther.Add(1)
				}
			}
		})
	}
	var stunSent, stunAnswered int
	wg.Go(func() { stunSent, stunAnswered = stunFlood(ctx, t, "127.0.0.2", udp) })
	var initials atomic.Int64
	// Four at a time: each Initial waits 30 ms for an answer, so one
	// sender alone stays under the connection rate on a slow machine
	// (59 Initials in 3.3 s under -race, fewer than Conns lets through).
	for range 4 {
		wg.Go(func() {
			var socks []*net.UDPConn
			for ctx.Err() == nil {
				socks = append(socks, spoofedInitial(t, "127.0.0.3", udp))
				initials.Add(1)
			}
			for _, uc := range socks {
				uc.Close()
			}
		})
	}

	// The honest peers, while the flood goes on.
	time.Sleep(300 * time.Millisecond)
	honest := make([]*Client, honestN)
	var hwg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	fail := func(f string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(f, args...))
		mu.Unlock()
	}
	for i := range honestN {
		hwg.Go(func() {
			ip := fmt.Sprintf("127.0.0.%d", 20+i)
			c := newTestClient(t, fmt.Sprintf("honest%d", i), mustKey(t), servers, transportOn(t, ip))
			if err := c.Start(testCtx(t, 10*time.Second)); err != nil {
				fail("honest%d: register: %v", i, err)
				return
			}
			answerAll(t, c)
			honest[i] = c
			if err := stunOnce(t, ip, udp); err != nil {
				fail("honest%d: STUN: %v", i, err)
			}
		})
	}
	hwg.Wait()
	for i := range honestN {
		if honest[i] == nil {
			continue
		}
		hwg.Go(func() {
			for _, to := range []*Client{target, honest[(i+1)%honestN]} {
				if to == nil {
					continue
				}
				if _, err := honest[i].Connect(testCtx(t, 10*time.Second), to.cfg.Key.ID(), PeerInfo{}); err != nil {
					fail("honest%d: introduction: %v", i, err)
				}
			}
		})
	}
	hwg.Wait()
	honestDone := time.Since(start)
	wg.Wait()
	took := time.Since(start).Seconds()
	grew := int64(heapInUse()) - int64(before)
	st := rs.Stats()

	t.Logf("flood of %.1f s (honest done after %v)", took, honestDone.Round(time.Millisecond))
	t.Logf("registrations (fresh IDs, one address): %d registered, %d rate-limited, %d refused at the handshake; server: %d limited, %d connections refused, %d Retries",
		regOK.Load(), regLimited.Load(), regOther.Load(), st.RegistrationsLimited, st.ConnsRefused, st.Retries)
	t.Logf("introductions (one peer ID): %d answered, %d rate-limited, %d other; server: %d limited", introOK.Load(), introLimited.Load(), introOther.Load(), st.IntrosLimited)
	t.Logf("STUN (one address): %d sent, %d answered; server: %d dropped over the limit", stunSent, stunAnswered, st.STUNLimited)
	t.Logf("handshakes (never finished, one address): %d Initials, peak %d in progress", initials.Load(), st.PeakHandshakes)
	t.Logf("heap grew %.1f MiB; %d buckets", float64(grew)/(1<<20), st.Sources)

	for _, f := range failures {
		t.Error(f)
	}
	c := lim.withDefaults()
	slack := func(r Rate) int64 { return int64(float64(r.Burst) + r.PerSecond*took + 2) }
	// Some must be rate-limited when more were asked than the limit lets
	// through (under -race on a loaded machine the flood may not get
	// there: 12 to 31 registrations in 3.3 s, bound 54).
	if got, bound := regOK.Load(), slack(c.Registrations); got > bound || got+regLimited.Load() > bound && regLimited.Load() == 0 {
		t.Errorf("hostile registrations: %d registered (bound %d), %d rate-limited (want some)", got, bound, regLimited.Load())
	}
	if got, bound := introOK.Load(), slack(c.PeerIntros); got > bound || got+introLimited.Load() > bound && introLimited.Load() == 0 {
		t.Errorf("hostile introductions: %d answered (bound %d), %d rate-limited (want some)", got, bound, introLimited.Load())
	}
	if bound := slack(c.STUN); int64(stunAnswered) > bound || st.STUNLimited == 0 {
		t.Errorf("hostile STUN: %d answered (bound %d), %d dropped (want some)", stunAnswered, bound, st.STUNLimited)
	}
	if st.PeakHandshakes > c.HandshakesPerSource+honestN+8 {
		t.Errorf("peak of %d handshakes in progress, want at most %d", st.PeakHandshakes, c.HandshakesPerSource+honestN+8)
	}
	if st.Retries+st.ConnsRefused == 0 {
		t.Error("the handshake flood was neither retried nor refused")
	}
	const heapBound = 32 << 20
	if grew > heapBound {
		t.Errorf("heap grew %.1f MiB, bound %d MiB", float64(grew)/(1<<20), heapBound>>20)
	}
}
