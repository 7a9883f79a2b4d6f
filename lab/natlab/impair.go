// Link impairment: delay, loss and a bandwidth limit on a host's access
// link or a router's WAN link.
//
// Programs the lab uses here: ip, nft and tc (iproute2, nftables), already
// required by the lab. Offloads are turned off with SIOCETHTOOL ioctls, so
// the ethtool program is NOT needed (it is handy for looking:
// `ip netns exec NS ethtool -k eth0`).

package natlab

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
)

// ErrBadImpairment: an Impairment field is out of range.
var ErrBadImpairment = errors.New("natlab: invalid impairment")

// Impairment degrades one direction of a link. The zero value is a perfect
// link (no delay, no loss, no limit).
//
// What each part is made of (this kernel has no netem, fq or nft queue):
//
//   - Loss: nftables, a "netdev" table on the host's interface (eth0, or a
//     router's wan) with an egress chain (up) and an ingress chain (down):
//     "numgen random mod 1000000 < N drop" for IPv4 and IPv6 packets. ARP
//     and IPv6 neighbour/router discovery are exempt, so the share lost is
//     the share the transports see and address resolution never stalls a
//     test for a second.
//   - Rate: a tbf qdisc on the egress of each end of the link: the host's
//     interface (up) and the bridge port in the other namespace (down).
//     Burst: 2 ms at the rate, at least 4 full frames. Queue: 50 ms at
//     the rate, at least 64 KiB; beyond it tbf drops (a drop-tail router).
//   - Delay and Jitter: a "wire", a namespace of its own cut into the link
//     (host eth0 <-> wh [wire] wb <-> bridge port), in which a Go forwarder
//     reads every frame from one side with an AF_PACKET socket, holds it for
//     the delay in a FIFO and writes it out the other side. It works at L2,
//     so it is transparent: addresses are unchanged (NAT sees the same
//     packets), and it carries TCP, UDP, ICMP, ARP and IPv6 ND alike. Frames
//     are never reordered; jitter is uniform in [-Jitter, +Jitter] around
//     Delay, but a frame never leaves before the one ahead of it. Offloads
//     (checksum, TSO, GSO, GRO) are off on every interface of a wired link,
//     so the forwarder sees real frames with real checksums.
//
// Why a wire and not something else: netem is missing, tbf and htb only
// shape, and NFQUEUE is missing. A TUN router would change the topology
// (an extra hop, a TTL decrement, its own addresses) and see only IP; an
// L2 wire is invisible. The price is a userspace copy per frame, which
// caps a wired link's throughput (see BenchmarkWireThroughput and
// docs/lab-impairment.md); links without delay have no wire and run at
// kernel speed.
//
// The wire is inserted the first time a delay or jitter is asked for on a
// link and stays until Lab.Close (setting Delay back to zero leaves a
// zero-delay wire). Inserting it re-plumbs the veth: the link's carrier
// drops for a few milliseconds, which loses packets in flight but keeps
// addresses, routes, sockets and the NAT state. Impair a link before
// traffic starts when that matters.
//
// Measured accuracy (TestImpair*, 2 shared cores), and what the tests
// assert:
//   - Delay: median one-way delay within [Delay, Delay+2.5ms] (with
//     jitter, from Delay-Jitter/4: a sample median). Measured:
//     a UDP echo over a link delayed 20 ms each way has a median RTT of
//     40.3 ms, p95 41.8 ms (46.8 ms with other tests loading the cores);
//     30 ms one way only: 30.2 ms, p95 30.3 ms; 20 ms ± 5 ms jitter one
//     way: median 20.2 ms, p5 16.3 ms, p95 25.1 ms. The forwarder sleeps with
//     nanosleep, not Go timers, which would add up to 1 ms per frame.
//   - Loss: the observed share within 4.5 binomial standard deviations
//     of Loss (10% asked, 2000 datagrams: 7.0%..13.0% accepted; measured
//     10.95% up, 9.55% down).
//   - Rate: TCP goodput within ±20% of Rate. Rate counts whole frames,
//     so goodput is about 95% of it: 20 Mbit/s asked gives 19.1 Mbit/s,
//     with or without a wire.
//
// A wire forwards about 1.2 to 2.2 Gbit/s of TCP (120k+ frames/s, more when
// the cores are idle), against tens of Gbit/s for a plain veth link:
// throughput tests above 1 Gbit/s need a link without delay.
type Impairment struct {
	// Delay is the one-way delay added to every frame. Zero: none (and no
	// wire is inserted for it).
	Delay time.Duration
	// Jitter spreads the delay uniformly over [Delay-Jitter, Delay+Jitter]
	// (never below zero, never reordering). Zero: constant delay.
	Jitter time.Duration
	// Loss is the share of IP packets dropped, 0..1. Zero: none.
	Loss float64
	// Rate is the link's capacity in bits per second. Zero: unlimited.
	Rate int64
}

func (i Impairment) validate() error {
	switch {
	case i.Delay < 0 || i.Jitter < 0:
		return fmt.Errorf("%w: negative delay or jitter", ErrBadImpairment)
	case i.Delay > time.Minute || i.Jitter > time.Minute:
		return fmt.Errorf("%w: delay or jitter over a minute", ErrBadImpairment)
	case math.IsNaN(i.Loss) || i.Loss < 0 || i.Loss > 1:
		return fmt.Errorf("%w: loss %v not in 0..1", ErrBadImpairment, i.Loss)
	case i.Rate < 0:
		return fmt.Errorf("%w: negative rate", ErrBadImpairment)
	case i.Rate > 0 && i.Rate < 8000:
		return fmt.Errorf("%w: rate %d bit/s below 8 kbit/s", ErrBadImpairment, i.Rate)
	}
	return nil
}

func (i Impairment) delayed() bool { return i.Delay > 0 || i.Jitter > 0 }

// Impair sets the impairment of h's link to its segment, the same in both
// directions: a host's eth0, or for a Router its WAN link (the LAN hosts'
// own links are impaired through their Hosts). Each call replaces the
// previous settings; the zero Impairment removes them (but not a wire, see
// Impairment).
func (h *Host) Impair(ctx context.Context, imp Impairment) error {
	return h.ImpairEach(ctx, imp, imp)
}

// ImpairEach is Impair with a different impairment for each direction:
// up is what h sends (towards its segment, the internet for a public host
// or a router), down is what h receives.
func (h *Host) ImpairEach(ctx context.Context, up, down Impairment) error {
	if err := up.validate(); err != nil {
		return err
	}
	if err := down.validate(); err != nil {
		return err
	}
	st := linkOf(h)
	st.mu.Lock()
	defer st.mu.Unlock()
	if (up.delayed() || down.delayed()) && st.wire == nil {
		if err := st.insertWire(ctx); err != nil {
			return fmt.Errorf("natlab: delay on %s: %w", h.name, err)
		}
	}
	if err := st.setLoss(ctx, up.Loss, down.Loss); err != nil {
		return fmt.Errorf("natlab: loss on %s: %w", h.name, err)
	}
	if err := setRate(ctx, h.ns, st.dev, up.Rate); err != nil {
		return fmt.Errorf("natlab: rate on %s: %w", h.name, err)
	}
	if st.port == "" {
		p, err := peerName(ctx, h.ns, st.dev, h.net.ns)
		if err != nil {
			return err
		}
		st.port = p
	}
	if err := setRate(ctx, h.net.ns, st.port, down.Rate); err != nil {
		return fmt.Errorf("natlab: rate on %s: %w", h.name, err)
	}
	if st.wire != nil {
		st.wire.setDelay(0, up.Delay, up.Jitter)
		st.wire.setDelay(1, down.Delay, down.Jitter)
	}
	st.up, st.down = up, down
	h.lab.log.Debug("link impaired", "host", h.name, "dev", st.dev, "up", up, "down", down)
	return nil
}

// Impairment returns the link's current settings, per direction.
func (h *Host) Impairment() (up, down Impairment) {
	st := linkOf(h)
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.up, st.down
}

// linkState is the impairment state of one host's link.
type linkState struct {
	mu       sync.Mutex
	host     *Host
	dev      string // the host's interface: eth0, or wan for a router
	port     string // the bridge port at the other end (in host.net.ns)
	wire     *wire  // nil: no wire yet
	up, down Impairment
}

// links maps each impaired host to its link state. Entries are removed
// when the host's lab closes.
var links = struct {
	sync.Mutex
	m map[*Host]*linkState
}{m: map[*Host]*linkState{}}

// linkOf returns h's link state, creating it on first use.
func linkOf(h *Host) *linkState {
	links.Lock()
	defer links.Unlock()
	if st := links.m[h]; st != nil {
		return st
	}
	st := &linkState{host: h, dev: "eth0"}
	for _, r := range h.lab.Routers() {
		if &r.Host == h {
			st.dev = "wan"
		}
	}
	links.m[h] = st
	h.lab.onStop(func() {
		links.Lock()
		delete(links.m, h)
		links.Unlock()
	})
	return st
}

// wireOf returns h's wire (nil if none); for tests.
func (h *Host) wireOf() *wire {
	st := linkOf(h)
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.wire
}

const impairTable = "natlab_impair"

// setLoss writes the host's loss table (or removes it when both are zero).
func (st *linkState) setLoss(ctx context.Context, up, down float64) error {
	var b strings.Builder
	// Declaring the table first makes the delete valid whether or not it
	// exists; the whole file is one transaction.
	fmt.Fprintf(&b, "table netdev %s {}\ndelete table netdev %s\n", impairTable, impairTable)
	if up > 0 || down > 0 {
		fmt.Fprintf(&b, "table netdev %s {\n", impairTable)
		for _, c := range []struct {
			hook string
			loss float64
		}{{"egress", up}, {"ingress", down}} {
			if c.loss <= 0 {
				continue
			}
			fmt.Fprintf(&b, "  chain %s {\n    type filter hook %s device %q priority filter; policy accept;\n", c.hook, c.hook, st.dev)
			b.WriteString("    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, nd-redirect } accept\n")
			fmt.Fprintf(&b, "    meta protocol { ip, ip6 } numgen random mod 1000000 < %d drop\n  }\n", int64(math.Round(c.loss*1e6)))
		}
		b.WriteString("}\n")
	}
	return runInput(ctx, b.String(), "ip", "netns", "exec", st.host.ns, "nft", "-f", "-")
}

// setRate puts a tbf qdisc on dev's egress in ns, or removes it (rate 0).
func setRate(ctx context.Context, ns, dev string, rate int64) error {
	if rate == 0 {
		err := run(ctx, "ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root")
		var ce *CommandError
		if errors.As(err, &ce) && (strings.Contains(ce.Output, "handle of zero") || strings.Contains(ce.Output, "No such file")) {
			return nil // no qdisc there
		}
		return err
	}
	burst := max(rate/8/500, 4*1514)      // 2 ms
	limit := max(rate/8/20+burst, 64<<10) // 50 ms
	return run(ctx, "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", fmt.Sprintf("%dbit", rate), "burst", fmt.Sprint(burst), "limit", fmt.Sprint(limit))
}
