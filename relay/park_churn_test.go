package relay_test

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
)

// TestTLSParkChurn: parked links that are woken and, at the same moment,
// closed by their nodes or replaced by a newer link of the same key
// (their ERROR replaced while the watcher may be waking them) all end:
// no link is left linked or parked, and no goroutine (read loop,
// watcher) outlives them. Under -race this also checks that no two read
// loops read one connection.
func TestTLSParkChurn(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	n := 300
	if raceEnabled {
		n = 100
	}
	rs, rl := startParkServer(t, relay.ServerConfig{})
	sa := rs.ServerAddr()
	var got atomic.Int64
	dial := func(k *identity.Key) relay.Link {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		l, err := relay.TLSDialer{DialTCP: (&net.Dialer{}).DialContext}.DialLink(ctx, relay.LinkParams{
			Server: sa, Key: k, Handler: countPkts{&got}, Logger: quiet()})
		if err != nil {
			t.Error(err)
			return nil
		}
		return l
	}
	keys := make([]*identity.Key, n)
	links := make([]relay.Link, n)
	for i := range n {
		keys[i] = newKey(t)
		if links[i] = dial(keys[i]); links[i] == nil {
			t.FailNow()
		}
	}
	waitParked(t, rl, n)
	var wg sync.WaitGroup
	newer := make([]relay.Link, n)
	pkt := make([]byte, 500)
	for i := range n {
		wg.Go(func() {
			links[i].Send(keys[i^1].ID(), pkt) // wakes its link and its partner's
			switch i % 3 {
			case 0:
				links[i].Close()
			case 1:
				newer[i] = dial(keys[i]) // replaces the old link
			}
		})
	}
	wg.Wait()
	for i, l := range newer {
		if i%3 == 1 && l == nil {
			t.FailNow()
		}
	}
	// The old links of replaced keys end (ErrReplaced); the rest idle and
	// park again.
	want := n - (n+2)/3
	waitParked(t, rl, want)
	if c := rl.Metrics().Clients["tls"]; c != want {
		t.Fatalf("%d tls links, want %d", c, want)
	}
	for i := range n {
		links[i].Close()
		if newer[i] != nil {
			newer[i].Close()
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m := rl.Metrics()
		if m.Parked == 0 && m.Clients["tls"] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after close: %d parked, %d tls links", m.Parked, m.Clients["tls"])
		}
	}
	rs.Close()
	rl.Wait()
}

// TestTLSParkTrickle: a parked link whose node sends bytes that make no
// frame (a TLS record trickled a byte at a time) is still ended at
// IdleTimeout after its last frame: a wake-up is not a frame.
func TestTLSParkTrickle(t *testing.T) {
	const idle = 2 * time.Second
	rs, rl := startParkServer(t, relay.ServerConfig{IdleTimeout: idle})
	tc := silentLink(t, rs.ServerAddr())
	linked := time.Now()
	waitParked(t, rl, 1)
	raw := tc.NetConn()
	raw.Write([]byte{0x17, 0x03, 0x03, 0x40, 0x00}) // an application data record of 16 KB
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		tc.SetReadDeadline(time.Now().Add(3 * idle))
		io.Copy(io.Discard, tc)
	}()
	for tick := time.NewTicker(150 * time.Millisecond); ; {
		select {
		case <-ended:
			took := time.Since(linked)
			if took > 2*idle || rl.Metrics().Woken == 0 {
				t.Fatalf("ended after %v (IdleTimeout %v), %d wake-ups", took, idle, rl.Metrics().Woken)
			}
			t.Logf("a link trickling a record ended %v after its last frame (IdleTimeout %v), %d wake-ups",
				took.Round(time.Millisecond), idle, rl.Metrics().Woken)
			return
		case <-tick.C:
			raw.Write([]byte{0})
		}
		if time.Since(linked) > 3*idle {
			t.Fatalf("still linked %v after its last frame (IdleTimeout %v): %d wake-ups", time.Since(linked), idle, rl.Metrics().Woken)
		}
	}
}
