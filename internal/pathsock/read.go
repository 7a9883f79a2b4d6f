package pathsock

import (
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/ipv4"
)

// reader holds what one ReadBatch call needs besides quic-go's messages:
// the sources of the datagrams read (froms), the system's read state
// (sysReader: reused storage for recvmmsg where there is one) and the
// addresses handed to quic-go (addrs). A Conn keeps one for its read loop
// (takeReader): a read allocates nothing per datagram.
type reader struct {
	froms []netip.AddrPort
	addrs addrCache
	sys   sysReader
	gro   *groReader // with UDP GRO (EnableGRO): the coalesced datagrams read, handed out a packet at a time
}

// fromsFor returns r.froms with room for n sources.
func (r *reader) fromsFor(n int) []netip.AddrPort {
	if cap(r.froms) < n {
		r.froms = make([]netip.AddrPort, n)
	}
	r.froms = r.froms[:n]
	return r.froms
}

// takeReader returns the Conn's reader, or a new one while another read
// holds it (reads are not meant to be concurrent, but may be).
func (c *Conn) takeReader() *reader {
	if r := c.rd.Swap(nil); r != nil {
		return r
	}
	return &reader{}
}

// putReader gives r back for the next read.
func (c *Conn) putReader(r *reader) { c.rd.Store(r) }

// read reads a batch from the socket into ms: each message's N, NN and
// Flags, its source in r.froms (as the socket gave it: IPv4-mapped on a
// dual-stack socket) and its Addr cleared (ReadBatch sets it).
func (c *Conn) read(r *reader, ms []ipv4.Message, flags int) (int, error) {
	if n, ok, err := c.sysRead(&r.sys, ms, r.fromsFor(len(ms)), flags); ok {
		for i := range ms[:n] {
			ms[i].Addr = nil
		}
		return n, err
	}
	n, err := c.batch.ReadBatch(ms, flags)
	for i := range ms[:n] {
		m := &ms[i]
		if ua, ok := m.Addr.(*net.UDPAddr); ok {
			r.froms[i] = ua.AddrPort()
		} else {
			r.froms[i] = netip.AddrPort{}
		}
		m.Addr = nil
	}
	return n, err
}

// readGRO reads coalesced datagrams into r.gro (made at the first call);
// ReadBatch then hands them out (fill).
func (c *Conn) readGRO(r *reader, flags int) error {
	if r.gro == nil {
		r.gro = newGROReader()
	}
	g := r.gro
	for i := range g.ms {
		g.ms[i].N, g.ms[i].NN, g.ms[i].Flags = 0, 0, 0
	}
	n, _, err := c.sysRead(&r.sys, g.ms, g.froms, flags)
	if err != nil {
		return err
	}
	if runs := g.loaded(n); runs > 0 {
		c.groRuns.Add(uint64(runs))
	}
	return nil
}

// address sets the Addr of each message read that has none (intercept set
// those it translated): a peer's virtual address for a QUIC packet from
// one of its real addresses (stamping the peer as heard), else the source
// itself from r.addrs.
func (c *Conn) address(r *reader, ms []ipv4.Message, n int) {
	c.mu.RLock()
	translate := len(c.byReal) > 0
	var now int64
	for i := range ms[:n] {
		m := &ms[i]
		if m.Addr != nil {
			continue
		}
		// Only QUIC packets belong to a session; others (STUN, punch
		// checks: first byte below 0x40, which quic-go hands to
		// ReadNonQUICPacket) keep the real source their readers need.
		if translate && m.N > 0 && m.Buffers[0][0] >= 0x40 {
			if now == 0 {
				now = time.Now().UnixNano()
			}
			if a := c.translate(unmapped(r.froms[i]), now); a != nil {
				m.Addr = a
				continue
			}
		}
		m.Addr = r.addrs.get(r.froms[i])
	}
	c.mu.RUnlock()
}

// addrCacheMax bounds the source addresses a reader keeps (a flood from
// many sources empties it and starts again).
const addrCacheMax = 4096

// addrCache hands out one *net.UDPAddr per source address, so that a read
// makes none for a source seen before. The addresses are never changed
// after they are made: quic-go keeps them (a connection's remote
// address), and a cache that is emptied only forgets them.
type addrCache struct {
	m map[netip.AddrPort]*net.UDPAddr
}

func (a *addrCache) get(ap netip.AddrPort) *net.UDPAddr {
	if u := a.m[ap]; u != nil {
		return u
	}
	if a.m == nil {
		a.m = make(map[netip.AddrPort]*net.UDPAddr)
	} else if len(a.m) >= addrCacheMax {
		clear(a.m)
	}
	u := net.UDPAddrFromAddrPort(ap)
	a.m[ap] = u
	return u
}
