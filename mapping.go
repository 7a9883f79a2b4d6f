package reach

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/internal/sock"
)

// How the node's NAT maps its socket (RFC 4787), learnt from its server's
// two STUN ports (rendezvous.ServerConfig.AltSTUNPort): the same public
// address for both is an endpoint-independent mapping, two addresses a
// mapping that varies by destination (a symmetric NAT). Offers and answers
// carry it (candidate.PeerInfo.Mapping): when both sides' mappings vary
// and neither can be reached as it is, hole punching cannot work (the
// public port each side would aim at is not the one the other's packets
// come from) and the forwarding rungs start at once instead of after the
// forwarding delay (forwardAtOnce).

// mappingTimeout bounds one measurement (two STUN exchanges with the
// server, retransmitted RFC 5389 style).
const mappingTimeout = 5 * time.Second

// detectMapping measures the node's mapping once it is registered over
// UDP; a server without a second STUN port leaves it unknown.
func (n *Node) detectMapping() {
	srv := n.client.ServerUDP()
	if !srv.IsValid() {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, mappingTimeout)
	defer cancel()
	first, err := n.sock.STUNBinding(ctx, srv)
	if err != nil || !first.Other.IsValid() {
		n.log.Debug("mapping: unknown", "server", srv, "err", err)
		return
	}
	second, err := n.sock.STUN(ctx, netip.AddrPortFrom(srv.Addr(), first.Other.Port()))
	if err != nil {
		n.log.Debug("mapping: unknown", "server", srv, "err", err)
		return
	}
	m := candidate.MappingIndependent
	if second != first.Mapped {
		m = candidate.MappingVaries
	}
	n.log.Debug("mapping", "behaviour", m, "first", first.Mapped, "second", second)
	if m == candidate.MappingVaries && second.Addr().Is4() {
		// Before the mapping is published: an offer or answer that says
		// "varies" says how ports are allocated too, when it can.
		n.detectAllocation(ctx, srv, first.Other.Port(), second.Addr())
	}
	n.mapping.Store(m)
}

// detectAllocation learns how the node's symmetric NAT picks ports: four
// helper sockets (Config.ListenPacket) each ask one of the server's two
// STUN ports, their first requests allocationGap apart, which makes four
// new mappings in a known order in about one round trip; their ports name
// the allocation (candidate.ClassifyPorts). (The node's own mappings are
// not used: a socket that gets a port an earlier socket used can meet that
// socket's mapping, still in the NAT.) Offers and answers carry it, so a
// peer punches the next ports of a sequential NAT (holepunch's
// prediction).
func (n *Node) detectAllocation(ctx context.Context, srv netip.AddrPort, alt uint16, ip netip.Addr) {
	listen := n.cfg.ListenPacket
	if listen == nil {
		listen = net.ListenPacket
	}
	const helpers = 4
	ports := make([]int, helpers)
	errs := make([]error, helpers)
	var wg sync.WaitGroup
	for i := range helpers {
		c, err := listen("udp4", ":0")
		if err != nil {
			n.log.Debug("mapping: allocation unknown", "err", err)
			break
		}
		to := srv
		if i%2 == 1 {
			to = netip.AddrPortFrom(srv.Addr(), alt)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			got, err := sock.STUNConn(ctx, c, to)
			if err == nil && got.Addr() != ip {
				err = fmt.Errorf("public address %v, not %v", got.Addr(), ip)
			}
			ports[i], errs[i] = int(got.Port()), err
		}()
		time.Sleep(allocationGap)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil || ports[i] == 0 {
			n.log.Debug("mapping: allocation unknown", "ports", ports, "err", err)
			return
		}
	}
	a, ok := candidate.ClassifyPorts(ports)
	if !ok {
		return
	}
	n.alloc.Store(&a)
	n.refreshed.Store(time.Now())
	n.log.Debug("mapping: port allocation", "allocation", a.String(), "ports", ports)
}

// allocationGap separates detectAllocation's requests, so that they reach
// the NAT, and get their mappings, in the order sent.
const allocationGap = 2 * time.Millisecond

// Refreshing a sequential allocation's newest port before an
// introduction: other hosts behind the same NAT take ports meanwhile, and
// the peer punches a window of ports after the one we report. Not within
// refreshEvery of the last measurement (so a flood of introductions costs
// one helper exchange a second, and a node that just measured pays
// nothing), each bounded by refreshTimeout.
const (
	refreshEvery   = time.Second
	refreshTimeout = 400 * time.Millisecond
)

// refreshAllocation measures the newest port of the node's sequential NAT
// again: one STUN exchange with the server from a fresh helper socket
// (a new mapping). Without a sequential allocation, a UDP server or
// within refreshEvery of the last refresh it does nothing; when the
// exchange fails the last value stays.
func (n *Node) refreshAllocation(ctx context.Context) {
	a := n.alloc.Load()
	if !a.Sequential() || n.client == nil {
		return
	}
	srv := n.client.ServerUDP()
	now := time.Now()
	last, _ := n.refreshed.Load().(time.Time)
	if !srv.IsValid() || now.Sub(last) < refreshEvery || !n.refreshed.CompareAndSwap(last, now) {
		return // (or another introduction refreshes it right now)
	}
	listen := n.cfg.ListenPacket
	if listen == nil {
		listen = net.ListenPacket
	}
	c, err := listen("udp4", ":0")
	if err != nil {
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	got, err := sock.STUNConn(ctx, c, srv)
	if err != nil {
		n.log.Debug("mapping: allocation not refreshed", "err", err)
		return
	}
	if !a.Ahead(got.Port()) {
		// A mapping left over from an earlier socket on the same port.
		n.log.Debug("mapping: allocation not refreshed: an old mapping", "last", a.Last, "got", got)
		return
	}
	fresh := *a
	fresh.Last = got.Port()
	n.alloc.Store(&fresh)
	n.log.Debug("mapping: allocation refreshed", "last", a.Last, "now", fresh.Last)
}

// Allocation returns how the node's symmetric NAT allocates public ports:
// "sequential +N", "random", or "" when unknown or the mapping does not
// vary by destination.
func (n *Node) Allocation() string { return n.alloc.Load().String() }

// ports is the node's PortAllocation for offers and answers (nil:
// unknown).
func (n *Node) ports() *candidate.PortAllocation { return n.alloc.Load() }

// mappingWait bounds how long a dial waits for the node's first mapping
// measurement (two STUN round trips to the server, three behind a
// symmetric NAT, started when the node registered): a dial that knows the mapping may fly first (holepunch's
// first flight), which saves a peer-to-peer round trip.
const mappingWait = 500 * time.Millisecond

// awaitMapping waits, within mappingWait and ctx, for the node's first
// mapping measurement to end.
func (n *Node) awaitMapping(ctx context.Context) {
	if n.mapped == nil {
		return
	}
	t := time.NewTimer(mappingWait)
	defer t.Stop()
	select {
	case <-n.mapped:
	case <-t.C:
	case <-ctx.Done():
	}
}

// Mapping returns how the node's NAT maps its socket:
// candidate.MappingIndependent ("independent"), MappingVaries ("varies":
// a symmetric NAT), or "" while unknown (no server with a second STUN
// port, signalling over TCP, or not measured yet).
func (n *Node) Mapping() string {
	m, _ := n.mapping.Load().(string)
	return m
}

// forwardAtOnce reports whether a dial with attempt a has no peer-to-peer
// path to wait for: both NATs map per destination, neither side offered a
// port mapping, and none of the peer's own addresses is plausibly
// reachable (public, or on one of our networks).
func (n *Node) forwardAtOnce(a *rung.Attempt) bool {
	if a.Local.Mapping != candidate.MappingVaries || a.Remote.Mapping != candidate.MappingVaries {
		return false
	}
	if len(a.Local.Addrs(candidate.Mapped)) > 0 || len(a.Remote.Addrs(candidate.Mapped)) > 0 {
		return false
	}
	addrs, _ := n.cfg.InterfaceAddrs()
	if a.Remote.DirectPlausible(candidate.Prefixes(addrs)) {
		return false
	}
	for _, e := range n.ladder.Dial {
		if e.Forwards {
			return true
		}
	}
	return false
}
