package pathsock

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
)

// InterceptFunc takes a datagram that arrived on the socket before quic-go
// sees it. It may rewrite b in place. It returns the length of what quic-go
// should read of b, as coming from virt (a virtual address, see AddPeer),
// or 0 when it consumed the datagram. It runs on quic-go's read loop: it
// must not block, and must not keep b.
type InterceptFunc = func(b []byte, from netip.AddrPort) (n int, virt netip.AddrPort)

// interceptKey selects the datagrams one InterceptFunc takes: by first
// byte, and by source (the zero AddrPort: any source).
type interceptKey struct {
	first byte
	from  netip.AddrPort
}

// intercepts holds the Conn's InterceptFuncs. The read path checks the
// first bytes it has funcs for without a lock (firsts) before it looks one
// up.
type intercepts struct {
	firsts atomic.Uint64 // bit b: first byte b has funcs

	mu    sync.RWMutex
	byKey map[interceptKey]InterceptFunc
	n     [0x40]int // funcs per first byte
}

// Intercept hands h the datagrams from from (the zero AddrPort: from any
// source) whose first byte is first, before quic-go reads them; first must
// be below 0x40 (not QUIC). A datagram from a source with its own func
// goes to that func only. remove takes h away again. A relay link uses it
// to take its data packets on the node's socket without a copy or a
// second queue, and a relay server to forward them from its read loop.
func (c *Conn) Intercept(first byte, from netip.AddrPort, h InterceptFunc) (remove func()) {
	if first >= 0x40 {
		panic("pathsock: Intercept of a QUIC first byte")
	}
	k := interceptKey{first, unmapped(from)}
	ic := &c.icpt
	ic.mu.Lock()
	if ic.byKey == nil {
		ic.byKey = map[interceptKey]InterceptFunc{}
	}
	if _, ok := ic.byKey[k]; !ok {
		ic.n[first]++
	}
	ic.byKey[k] = h
	ic.firsts.Or(1 << first)
	ic.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			ic.mu.Lock()
			if _, ok := ic.byKey[k]; ok {
				delete(ic.byKey, k)
				if ic.n[first]--; ic.n[first] == 0 {
					ic.firsts.And(^(uint64(1) << first))
				}
			}
			ic.mu.Unlock()
		})
	}
}

// lookup returns the func for a datagram, or nil.
func (ic *intercepts) lookup(first byte, from netip.AddrPort) InterceptFunc {
	ic.mu.RLock()
	defer ic.mu.RUnlock()
	if h := ic.byKey[interceptKey{first, from}]; h != nil {
		return h
	}
	return ic.byKey[interceptKey{first: first}]
}

// intercept runs the InterceptFuncs over the n messages just read (their
// sources in froms) and drops the ones they consumed, moving the others
// down (their bytes: the buffers stay where quic-go put them; and their
// sources). It returns how many are left.
func (c *Conn) intercept(ms []ipv4.Message, froms []netip.AddrPort, n int) int {
	kept := 0
	var now int64
	for i := range ms[:n] {
		m := &ms[i]
		if m.N > 0 && m.Buffers[0][0] < 0x40 && c.icpt.anyFor(m.Buffers[0][0]) {
			from := unmapped(froms[i])
			if h := c.icpt.lookup(m.Buffers[0][0], from); h != nil {
				k, virt := h(m.Buffers[0][:m.N], from)
				if k <= 0 {
					continue
				}
				// As from the peer's virtual address, and without the
				// outer datagram's control messages (as Inject): its
				// packet info and ECN say nothing of the peer's path,
				// and quic-go keeps a connection's local address from
				// packet info (a session that then moved to a direct
				// path sent nothing that arrived: TestLabMoveRelayDirect).
				m.N = k
				m.NN, m.Flags = 0, 0
				m.Addr = c.virtual(virt, &now)
			}
		}
		if kept != i {
			d := &ms[kept]
			d.N = copy(d.Buffers[0], m.Buffers[0][:m.N])
			d.NN = copy(d.OOB, m.OOB[:m.NN])
			d.Flags, d.Addr = m.Flags, m.Addr
			froms[kept] = froms[i]
		}
		kept++
	}
	return kept
}

// anyFor reports, without the lock, whether first (below 0x40) may have
// a func.
func (ic *intercepts) anyFor(first byte) bool { return ic.firsts.Load()&(1<<(first&0x3f)) != 0 }

// virtual returns the *net.UDPAddr of the peer at virt and stamps it as
// seen (a packet came by a forwarded path); an unknown virt comes back as
// it is (quic-go drops what no connection claims).
func (c *Conn) virtual(virt netip.AddrPort, now *int64) net.Addr {
	c.mu.RLock()
	p := c.byVirt[virt]
	c.mu.RUnlock()
	if p == nil {
		return net.UDPAddrFromAddrPort(virt) // rare: a peer just removed
	}
	if *now == 0 {
		*now = time.Now().UnixNano()
	}
	if p.seen.Load() != *now {
		p.seen.Store(*now)
	}
	return p.virtUDP
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		return unmapped(ua.AddrPort())
	}
	return netip.AddrPort{}
}

// WriteToUDPAddrPort sends b to the real address to as it is, bypassing
// the peer table (a relay's data packets, which are not QUIC). On an IPv6
// socket an IPv4 address is mapped.
func (c *Conn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	if c.v6 && to.Addr().Is4() {
		to = netip.AddrPortFrom(netip.AddrFrom16(to.Addr().As16()), to.Port())
	}
	return c.udp.WriteToUDPAddrPort(b, to)
}
