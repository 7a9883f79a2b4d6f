package relay

import (
	"sync"
	"time"

	"github.com/reachp2p/reach/identity"
)

// Fragments. A detached link has no QUIC connection to carry a packet too
// large for one data packet (above maxDataPayload: a session that fell back
// to the relay from a direct path whose packets were larger). Such a packet
// travels as two fragments, each the payload of its own packet through the
// relay:
//
//	0x1f, id (2), index (0 or 1), half of the packet
//
// The relay forwards fragments as it forwards any packet (it never
// reassembles), and splits a large packet it must send to a detached link
// itself; the receiving node joins them. 0x1f cannot begin a QUIC packet
// (whose fixed bit, 0x40, is always set), so a fragment is never taken
// for one (docs/protocol.md, "Detached links").
const (
	fragMarker = 0x1f
	fragHeader = 4
)

// isFrag reports whether pkt is a fragment.
func isFrag(pkt []byte) bool { return len(pkt) > fragHeader && pkt[0] == fragMarker && pkt[3] < 2 }

// appendFrag appends fragment idx (0 or 1) of pkt, with id, to b.
func appendFrag(b []byte, id uint16, idx int, pkt []byte) []byte {
	half := (len(pkt) + 1) / 2
	part := pkt[:half]
	if idx == 1 {
		part = pkt[half:]
	}
	return append(append(b, fragMarker, byte(id>>8), byte(id), byte(idx)), part...)
}

// maxPending is how many unmatched fragments a link keeps (the oldest
// goes first): fragments are rare, and a lost half's partner must not
// stay for long.
const maxPending = 8

// fragTTL is how long an unmatched half waits for its partner: a half
// older than this is forgotten (and never joined with a later packet's
// half that reuses its id).
const fragTTL = time.Second

// reassembler joins the fragments a link receives. Its zero value is
// ready; it holds no buffer until a fragment comes.
type reassembler struct {
	mu      sync.Mutex
	pending []pendingFrag
	next    int
}

type pendingFrag struct {
	src  identity.PeerID
	id   uint16
	idx  byte
	at   time.Time
	part []byte
}

// add takes fragment f from src; when it completes a packet, it returns
// the packet (a new buffer).
func (r *reassembler) add(src identity.PeerID, f []byte) ([]byte, bool) {
	id, idx, part := uint16(f[1])<<8|uint16(f[2]), f[3], f[fragHeader:]
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.pending {
		p := &r.pending[i]
		if p.part != nil && now.Sub(p.at) > fragTTL {
			p.part = nil // too old to join
		}
		if p.part == nil || p.src != src || p.id != id {
			continue
		}
		if p.idx == idx {
			p.part = append(p.part[:0], part...) // a duplicate: keep the newer
			p.at = now
			return nil, false
		}
		first, second := p.part, part
		if idx == 0 {
			first, second = part, p.part
		}
		pkt := append(append(make([]byte, 0, len(first)+len(second)), first...), second...)
		p.part = nil
		return pkt, true
	}
	var p *pendingFrag
	for i := range r.pending {
		if r.pending[i].part == nil {
			p = &r.pending[i]
			break
		}
	}
	if p == nil && len(r.pending) < maxPending {
		r.pending = append(r.pending, pendingFrag{})
		p = &r.pending[len(r.pending)-1]
	}
	if p == nil { // full: the oldest goes
		p = &r.pending[r.next%maxPending]
		r.next++
	}
	*p = pendingFrag{src: src, id: id, idx: idx, at: now, part: append([]byte(nil), part...)}
	return nil, false
}
