//go:build linux

package mdns

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

// TestLabResolveAndFlood: in the lab (two hosts on one LAN segment, the
// multicast stays in their namespaces), Resolve on one host finds the
// other's responder, its port and LAN address; then a flood of 2,000
// queries in about a second gets at most ResponseBurst answers plus
// ResponseRate a second, and the responder still answers after it.
func TestLabResolveAndFlood(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rt, err := l.AddRouter(ctx, natlab.RouterConfig{Name: "mdns"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := rt.AddHost(ctx, "mdnsa")
	if err != nil {
		t.Fatal(err)
	}
	b, err := rt.AddHost(ctx, "mdnsb")
	if err != nil {
		t.Fatal(err)
	}
	me := peerID(t)
	var r *Responder
	if err := a.Run(func() (err error) {
		r, err = Listen(me, 4900, func() []netip.Addr { return []netip.Addr{a.Addr()} }, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	want := netip.AddrPortFrom(a.Addr(), 4900)
	resolve := func() {
		t.Helper()
		var got []netip.AddrPort
		err := b.Run(func() (err error) {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			got, err = Resolve(rctx, me)
			return err
		})
		if err != nil || len(got) != 1 || got[0] != want {
			t.Fatalf("Resolve: %v, %v; want [%v]", got, err, want)
		}
	}
	start := time.Now()
	resolve()
	t.Logf("resolved in %v", time.Since(start))

	// The flood: one-shot queries from b, answered by unicast to it.
	var c *net.UDPConn
	if err := b.Run(func() (err error) {
		c, err = net.ListenUDP("udp4", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q, err := query(Name(me))
	if err != nil {
		t.Fatal(err)
	}
	// Let the bucket refill after the first Resolve.
	time.Sleep(ResponseBurst / ResponseRate * time.Second)
	answers := make(chan int, 1)
	go func() {
		n := 0
		buf := make([]byte, 9000)
		for {
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
				answers <- n
				return
			}
			n++
		}
	}()
	floodStart := time.Now()
	for range 2000 {
		c.WriteToUDPAddrPort(q, Group)
		time.Sleep(500 * time.Microsecond)
	}
	elapsed := time.Since(floodStart)
	n := <-answers
	bound := ResponseBurst + int(ResponseRate*(elapsed.Seconds()+1)) // a second of slack: queries still queued when the flood ended
	t.Logf("2000 queries in %v: %d answers (bound %d)", elapsed.Round(time.Millisecond), n, bound)
	if n == 0 || n > bound {
		t.Errorf("%d answers to the flood, want 1 to %d", n, bound)
	}
	time.Sleep(time.Second)
	resolve()
}
