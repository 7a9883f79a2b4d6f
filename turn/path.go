package turn

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/pathsock"
)

// maxPeers bounds the relayed addresses a node keeps of the peers it was
// introduced to or dialled over TURN: beyond it the oldest not in use go
// (peerQuiet; a session with a peer forgotten still sends, what its peer
// sends is dropped until a new introduction or dial).
const maxPeers = 1024

// peerQuiet is how long a peer's relayed address stays in use after the
// last packet from it: a session sends a keepalive every 10 s, so a live
// one is heard from well within it. An address in use is evicted only
// when every address is, and is not given to another peer.
const peerQuiet = 30 * time.Second

// turnPath is a peer's path through the node's allocation: QUIC packets
// sent to the peer's relayed address. It is a pathsock.Path on the
// node's socket.
type turnPath struct {
	r    *Rung
	peer identity.PeerID
	name string       // peer.String(), the name of its virtual address (cached: read needs it per packet)
	to   *net.UDPAddr // the peer's relayed address
	// heard is when a packet from the address last arrived (unix ns;
	// zero: never).
	heard atomic.Int64
}

// inUse reports whether the peer was heard from within peerQuiet of now.
func (p *turnPath) inUse(now int64) bool {
	h := p.heard.Load()
	return h != 0 && now-h < int64(peerQuiet)
}

// Send implements pathsock.Path. A packet the allocation cannot take is
// dropped (QUIC resends), as a full socket buffer would drop it.
func (p *turnPath) Send(b []byte) error {
	p.r.mu.Lock()
	conn := p.r.conn
	p.r.mu.Unlock()
	if conn != nil {
		conn.WriteTo(b, p.to)
	}
	return nil
}

// Name says which rung the path belongs to: "turn".
func (*turnPath) Name() string { return Name }

// peerTable maps the relayed addresses of peers to their paths.
type peerTable struct {
	mu    sync.Mutex
	paths map[netip.AddrPort]*turnPath
	order []netip.AddrPort // oldest first
}

// remember records that addr is peer's relayed address and returns the
// path to it (the one already known when it is the same peer's). An
// address another peer's session uses (heard from within peerQuiet) stays
// that peer's: the path returned sends, but what comes from there is
// still the other peer's (a peer's offer names addresses it claims, not
// ones it proved).
func (t *peerTable) remember(addr netip.AddrPort, peer identity.PeerID, r *Rung) *turnPath {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	p := &turnPath{r: r, peer: peer, name: peer.String(), to: net.UDPAddrFromAddrPort(addr)}
	now := time.Now().UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.paths[addr]; old != nil && (old.peer == peer || old.inUse(now)) {
		if old.peer == peer {
			return old
		}
		return p
	}
	if t.paths == nil {
		t.paths = map[netip.AddrPort]*turnPath{}
	}
	if _, ok := t.paths[addr]; !ok {
		t.evict(now)
		t.order = append(t.order, addr)
	}
	t.paths[addr] = p
	return p
}

// evict makes room for one more address: the oldest not in use goes, or
// the oldest of all when every one is in use. Those in use that it passes
// over go to the back, in order.
func (t *peerTable) evict(now int64) {
	for scanned := 0; len(t.order) >= maxPeers; scanned++ {
		a := t.order[0]
		t.order = t.order[1:]
		if p := t.paths[a]; p != nil && p.inUse(now) && scanned < maxPeers {
			t.order = append(t.order, a)
			continue
		}
		delete(t.paths, a)
	}
}

// lookup returns the path of the peer whose relayed address is addr.
func (t *peerTable) lookup(addr netip.AddrPort) *turnPath {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.paths[addr]
}

// find returns the path of peer's newest relayed address, or nil.
func (t *peerTable) find(peer identity.PeerID) *turnPath {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := len(t.order) - 1; i >= 0; i-- {
		if p := t.paths[t.order[i]]; p != nil && p.peer == peer {
			return p
		}
	}
	return nil
}

// heardFrom looks addr up as lookup does and stamps its path as in use.
func (t *peerTable) heardFrom(addr netip.AddrPort) *turnPath {
	p := t.lookup(addr)
	if p != nil {
		p.heard.Store(time.Now().UnixNano())
	}
	return p
}

// size is how many peers the table holds.
func (t *peerTable) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.paths)
}

// read hands what arrives on the allocation to the node's socket, as
// coming from the sending peer's virtual address, until the allocation
// closes. Packets from addresses of no known peer are dropped (the TURN
// server only forwards from addresses the node permitted, which are
// those of its introductions and dials).
func (r *Rung) read() {
	r.mu.Lock()
	conn := r.conn
	r.mu.Unlock()
	paths := r.h.Socket.Paths()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if r.h.Context.Err() == nil && !errors.Is(err, net.ErrClosed) {
				r.h.Logger.Debug("turn: allocation read ended", "err", err)
			}
			return
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		p := r.peers.heardFrom(ua.AddrPort())
		if p == nil {
			continue
		}
		err = paths.Deliver(p.name, buf[:n], func() pathsock.Path { return p })
		if errors.Is(err, pathsock.ErrClosed) {
			return
		}
	}
}
