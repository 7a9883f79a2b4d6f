package pathsock

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// Path is a forwarded path to one peer.
type Path interface {
	// Send sends one QUIC packet to the peer. It must not keep b.
	Send(b []byte) error
}

// maxAliases bounds the extra source addresses one peer may have.
const maxAliases = 8

// peer is one virtual address and its paths. Its fields change under
// Conn.mu (written with the lock held, read with it held for reading);
// seen and heard are atomics stamped on the read path.
type peer struct {
	virt    netip.AddrPort
	virtUDP *net.UDPAddr
	name    string // "" for AddPeer's anonymous addresses
	adopted bool   // the key is a real address (Adopt)

	direct netip.AddrPort // valid: the current path is direct
	udp    *net.UDPAddr   // direct as a *net.UDPAddr (mapped on a v6 socket)
	fwd    Path           // the forwarded path: current when direct is not valid
	// aliases are sources whose packets count as the peer's (its direct
	// address among them), newest last.
	aliases []netip.AddrPort

	heard atomic.Int64 // unix ns of the last packet from a direct source
	seen  atomic.Int64 // unix ns of the last packet by any path
	sent  atomic.Int64 // unix ns of the last QUIC packet sent on the direct path
	// fwdSent counts the QUIC packets sent on the forwarded path.
	fwdSent atomic.Int64
	// unanswered: unix ns of the first QUIC packet sent on the direct
	// path after the last one heard from it (not after heard: none).
	unanswered atomic.Int64
	// proved: unix ns of the last packet from the current direct address
	// itself (zero since SetDirect until one comes).
	proved atomic.Int64
}

// AddPeer hands out a new virtual address, with no path yet.
func (c *Conn) AddPeer() (netip.AddrPort, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.addLocked("")
	if err != nil {
		return netip.AddrPort{}, err
	}
	return p.virt, nil
}

// Key returns the virtual address of the peer called name (a node uses
// the peer's ID), handing one out on first use.
func (c *Conn) Key(name string) (netip.AddrPort, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.byName[name]; p != nil {
		return p.virt, nil
	}
	p, err := c.addLocked(name)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return p.virt, nil
}

// Lookup returns the virtual address of the peer called name, if it has
// one.
func (c *Conn) Lookup(name string) (netip.AddrPort, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if p := c.byName[name]; p != nil {
		return p.virt, true
	}
	return netip.AddrPort{}, false
}

// Name returns the name Key was given for virt ("" for AddPeer's).
func (c *Conn) Name(virt netip.AddrPort) string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if p := c.byVirt[virt]; p != nil {
		return p.name
	}
	return ""
}

func (c *Conn) addLocked(name string) (*peer, error) {
	if len(c.byVirt) >= MaxPeers {
		return nil, ErrFull
	}
	for {
		c.next++
		n := c.next & (1<<28 - 1)
		if n == 0 {
			continue
		}
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{240 | byte(n>>24), byte(n >> 16), byte(n >> 8), byte(n)}), 1)
		if _, used := c.byVirt[a]; used {
			continue
		}
		p := &peer{virt: a, virtUDP: net.UDPAddrFromAddrPort(a), name: name}
		p.seen.Store(time.Now().UnixNano())
		c.byVirt[a] = p
		if name != "" {
			c.byName[name] = p
		}
		return p, nil
	}
}

// ErrNamed: Adopt for a peer that has an address already.
var ErrNamed = errors.New("pathsock: the peer has an address already")

// Adopt makes real, the address a session born on a direct path uses for
// the peer called name, that session's key: packets to real go on the
// peer's current path (real itself until it moves), so the session can
// fall back to a forwarded path and follow the peer to a new address, like
// a session at a virtual address. It fails with ErrNamed if the peer has
// an address already (its sessions are there), ErrFull at MaxPeers.
func (c *Conn) Adopt(real netip.AddrPort, name string) (netip.AddrPort, error) {
	real = unmapped(real)
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.byName[name]; p != nil {
		if p.virt == real {
			return real, nil
		}
		return netip.AddrPort{}, ErrNamed
	}
	if p := c.byVirt[real]; p != nil {
		return netip.AddrPort{}, ErrNamed // another peer adopted it
	}
	if len(c.byVirt) >= MaxPeers {
		return netip.AddrPort{}, ErrFull
	}
	p := &peer{virt: real, virtUDP: c.sockAddr(real), name: name, adopted: true}
	p.seen.Store(time.Now().UnixNano())
	c.byVirt[real] = p
	c.byName[name] = p
	c.adopted.Add(1)
	c.aliasLocked(p, real)
	p.direct, p.udp = real, p.virtUDP
	p.heard.Store(time.Now().UnixNano())
	return real, nil
}

// Detach takes the name away from virt: Key and Lookup of that name no
// longer find it (the next Key makes a new address), while virt keeps its
// paths for the sessions that use it. For a peer that comes back as a new
// process with the same name while its old sessions have not timed out.
func (c *Conn) Detach(virt netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.byVirt[virt]; p != nil && p.name != "" {
		if c.byName[p.name] == p {
			delete(c.byName, p.name)
		}
		p.name = ""
	}
}

// RemovePeer forgets a virtual address and its paths.
func (c *Conn) RemovePeer(virt netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeLocked(c.byVirt[virt])
}

func (c *Conn) removeLocked(p *peer) {
	if p == nil {
		return
	}
	delete(c.byVirt, p.virt)
	if p.adopted {
		c.adopted.Add(-1)
	}
	if p.name != "" && c.byName[p.name] == p {
		delete(c.byName, p.name)
	}
	for _, a := range p.aliases {
		if c.byReal[a] == p {
			delete(c.byReal, a)
		}
	}
}

// SetDirect makes the direct UDP address real the peer's current path; its
// forwarded path, if any, stays as the fallback (Fallback). A source
// address belongs to one peer at a time: a peer that had it loses it (and
// its direct path, if that was it).
func (c *Conn) SetDirect(virt, real netip.AddrPort) error {
	real = unmapped(real)
	c.mu.Lock()
	p := c.byVirt[virt]
	if p == nil {
		c.mu.Unlock()
		return ErrUnknownPeer
	}
	c.aliasLocked(p, real)
	var resend [][]byte
	if p.direct != real {
		if p.direct.IsValid() && p.proved.Load() == 0 {
			resend = c.unproved.take(virt)
		}
		p.proved.Store(0)
	}
	p.direct, p.udp = real, c.sockAddr(real)
	p.heard.Store(time.Now().UnixNano())
	to := p.udp
	c.mu.Unlock()
	// What went to the address nothing came from was probably lost:
	// send it again at once rather than at quic-go's probe timeout (a
	// copy that did arrive is dropped as a duplicate).
	for _, b := range resend {
		c.udp.WriteMsgUDP(b, nil, to)
	}
	return nil
}

// maxUnproved bounds the packets kept per peer for a direct address that
// nothing came from yet (see SetDirect).
const maxUnproved = 16

// Proved returns when a packet last came from the peer's current direct
// address itself (zero: none since it became the current one). A direct
// address set on the server's word, before any check, is proved by the
// first packet from it.
func (c *Conn) Proved(virt netip.AddrPort) time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if p := c.byVirt[virt]; p != nil {
		if ns := p.proved.Load(); ns != 0 {
			return time.Unix(0, ns)
		}
	}
	return time.Time{}
}

// AddAlias makes packets from real count as the peer's without changing
// where packets to the peer go: a path the peer uses towards us before we
// have proved it both ways.
func (c *Conn) AddAlias(virt, real netip.AddrPort) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.byVirt[virt]
	if p == nil {
		return ErrUnknownPeer
	}
	c.aliasLocked(p, unmapped(real))
	return nil
}

// aliasLocked adds real to p's sources, taking it from another peer and
// dropping p's oldest alias beyond maxAliases (never its direct address).
func (c *Conn) aliasLocked(p *peer, real netip.AddrPort) {
	if other := c.byReal[real]; other != nil && other != p {
		other.aliases = without(other.aliases, real)
		if other.direct == real {
			other.direct, other.udp = netip.AddrPort{}, nil
		}
	}
	c.byReal[real] = p
	p.aliases = append(without(p.aliases, real), real)
	for len(p.aliases) > maxAliases {
		i := 0
		if p.aliases[0] == p.direct {
			i = 1
		}
		if c.byReal[p.aliases[i]] == p {
			delete(c.byReal, p.aliases[i])
		}
		p.aliases = append(p.aliases[:i], p.aliases[i+1:]...)
	}
}

func without(s []netip.AddrPort, a netip.AddrPort) []netip.AddrPort {
	out := s[:0]
	for _, x := range s {
		if x != a {
			out = append(out, x)
		}
	}
	return out
}

func unmapped(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// SetPath makes the forwarded path p the peer's current path (the direct
// address, if any, stays a source of the peer's packets).
func (c *Conn) SetPath(virt netip.AddrPort, p Path) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	pe := c.byVirt[virt]
	if pe == nil {
		return ErrUnknownPeer
	}
	pe.fwd = p
	pe.direct, pe.udp = netip.AddrPort{}, nil
	return nil
}

// SetFallback keeps p as the peer's forwarded path; it becomes the current
// path only when the peer has no direct one.
func (c *Conn) SetFallback(virt netip.AddrPort, p Path) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	pe := c.byVirt[virt]
	if pe == nil {
		return ErrUnknownPeer
	}
	pe.fwd = p
	return nil
}

// ClearFallback forgets the peer's forwarded path if it is p.
func (c *Conn) ClearFallback(virt netip.AddrPort, p Path) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if pe := c.byVirt[virt]; pe != nil && pe.fwd == p {
		pe.fwd = nil
	}
}

// SetName gives the anonymous address virt (AddPeer) the name name, as if
// Key(name) had handed it out. An address that had the name before keeps
// its paths but loses the name (the caller knows it has no sessions). It
// fails with ErrUnknownPeer, or ErrNamed if virt has a name already.
func (c *Conn) SetName(virt netip.AddrPort, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.byVirt[virt]
	if p == nil {
		return ErrUnknownPeer
	}
	if p.name != "" || p.adopted {
		if p.name == name {
			return nil
		}
		return ErrNamed
	}
	if old := c.byName[name]; old != nil {
		if old.adopted {
			return ErrNamed
		}
		old.name = ""
	}
	p.name = name
	c.byName[name] = p
	return nil
}

// Fallback moves the peer from its direct path to its forwarded one. It
// reports whether it did (false: no direct path, or nothing to fall back
// to).
//
// Leaving a direct address that nothing ever came from (set on the
// server's word), it sends what went there again at once over the
// forwarded path, as SetDirect does: it was probably lost, and quic-go
// would send it again only at its probe timeout, which has doubled a few
// times by then.
func (c *Conn) Fallback(virt netip.AddrPort) bool {
	c.mu.Lock()
	p := c.byVirt[virt]
	if p == nil || !p.direct.IsValid() || p.fwd == nil || isHandshakeOnly(p.fwd) {
		c.mu.Unlock()
		return false
	}
	var resend [][]byte
	if p.proved.Load() == 0 {
		resend = c.unproved.take(virt)
	}
	p.direct, p.udp = netip.AddrPort{}, nil
	fwd := p.fwd
	c.mu.Unlock()
	for _, b := range resend {
		fwd.Send(b)
	}
	return true
}

// Current returns the peer's direct address (valid when the current path
// is direct) and its forwarded path (the current one when direct is not
// valid, else the fallback).
func (c *Conn) Current(virt netip.AddrPort) (netip.AddrPort, Path, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	p := c.byVirt[virt]
	if p == nil {
		return netip.AddrPort{}, nil, ErrUnknownPeer
	}
	return p.direct, p.fwd, nil
}

// Seen returns when a packet last came from the peer by any path (direct
// or forwarded; zero: never).
func (c *Conn) Seen(virt netip.AddrPort) time.Time {
	return c.stamp(virt, func(p *peer) int64 { return p.seen.Load() })
}

// Sent returns when the node last sent a QUIC packet to the peer on its
// direct path (zero: never): a direct path that was sent to and brought
// nothing back since is suspect; one that nothing was sent to is merely
// idle.
func (c *Conn) Sent(virt netip.AddrPort) time.Time {
	return c.stamp(virt, func(p *peer) int64 { return p.sent.Load() })
}

// ForwardedSent returns how many QUIC packets the node sent the peer on
// its forwarded path so far: a session that carries traffic sends many
// (data, or acknowledgements of what it receives), an idle one a
// keepalive every few seconds.
func (c *Conn) ForwardedSent(virt netip.AddrPort) int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if p := c.byVirt[virt]; p != nil {
		return p.fwdSent.Load()
	}
	return 0
}

func (c *Conn) stamp(virt netip.AddrPort, f func(*peer) int64) time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if p := c.byVirt[virt]; p != nil {
		if ns := f(p); ns != 0 {
			return time.Unix(0, ns)
		}
	}
	return time.Time{}
}

// Unanswered returns when the node first sent a QUIC packet to the peer
// on its direct path after it last heard from it there; zero when it sent
// nothing since.
func (c *Conn) Unanswered(virt netip.AddrPort) time.Time {
	return c.stamp(virt, func(p *peer) int64 {
		if u := p.unanswered.Load(); u > p.heard.Load() {
			return u
		}
		return 0
	})
}

// Heard returns when a packet last came from one of the peer's direct
// sources (or when SetDirect was called, if later).
func (c *Conn) Heard(virt netip.AddrPort) time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if p := c.byVirt[virt]; p != nil {
		return time.Unix(0, p.heard.Load())
	}
	return time.Time{}
}

// Expire removes the peers that sent nothing by any path for idle, except
// those keep wants (a node keeps the peers it has sessions with). It
// returns how many it removed.
func (c *Conn) Expire(idle time.Duration, keep func(virt netip.AddrPort) bool) int {
	cut := time.Now().Add(-idle).UnixNano()
	c.mu.RLock()
	var old []netip.AddrPort
	for v, p := range c.byVirt {
		if p.seen.Load() < cut {
			old = append(old, v)
		}
	}
	c.mu.RUnlock()
	n := 0
	for _, v := range old {
		if keep != nil && keep(v) {
			continue
		}
		c.mu.Lock()
		if p := c.byVirt[v]; p != nil && p.seen.Load() < cut {
			c.removeLocked(p)
			n++
		}
		c.mu.Unlock()
	}
	return n
}

// sockAddr is a as the wrapped socket takes it: IPv4-mapped on an IPv6
// (dual-stack) socket.
func (c *Conn) sockAddr(a netip.AddrPort) *net.UDPAddr {
	if c.v6 && a.Addr().Is4() {
		a = netip.AddrPortFrom(netip.AddrFrom16(a.Addr().As16()), a.Port())
	}
	return net.UDPAddrFromAddrPort(a)
}
