package relay

import (
	"context"
	"errors"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/reachp2p/reach/identity"
)

// streamKey names one relayed stream at the relay: the peer that opened
// it, the peer that accepts it, and the opener's stream number (top bit
// clear).
type streamKey struct {
	opener, acceptor identity.PeerID
	id               uint32
}

// relayStream is a relayed stream's state at the relay: its two links as
// they were when it opened, and which ends closed it.
type relayStream struct {
	key        streamKey
	open, acc  *peerLink
	finOpener  bool
	finAcceptr bool
	// toAcc, toOpen: the stream bytes queued for the acceptor's link and
	// for the opener's (at most maxStreamWindow each).
	toAcc, toOpen atomic.Int64
}

// streamTable is the relay's open streams.
type streamTable struct {
	mu      sync.Mutex
	streams map[streamKey]*relayStream
	byLink  map[*peerLink]map[streamKey]struct{}
	bySrc   map[netip.Prefix]int // streams each source (ipKey) is an end of
}

// streamsOffered reports whether the relay offers relayed streams.
func (s *Server) streamsOffered() bool { return s.cfg.MaxStreams > 0 }

// keyOf is the stream key of a frame p sent about ref, and whether p
// opened the stream.
func keyOf(p *peerLink, ref streamRef) (streamKey, bool) {
	if ref.id&acceptorBit == 0 {
		return streamKey{opener: p.id, acceptor: ref.peer, id: ref.id}, true
	}
	return streamKey{opener: ref.peer, acceptor: p.id, id: ref.id &^ acceptorBit}, false
}

// streamFrame handles a stream frame (OPEN, DATA, WINDOW, CLOSE) from p, a
// byte-stream link; false if p broke the protocol (the caller ends the
// link).
func (s *Server) streamFrame(ctx context.Context, p *peerLink, typ byte, body []byte) bool {
	ref, rest, ok := parseStream(body)
	if !ok || !s.streamsOffered() {
		return false
	}
	if typ != frameData {
		// OPEN, WINDOW and CLOSE count against the rates as a packet
		// does (DATA counts its bytes, below); beyond them the link's
		// reading waits.
		if p.lim != nil && waitRate(ctx, p.lim, MinPacketCost) != nil {
			return true
		}
		if s.total != nil && waitRate(ctx, s.total, MinPacketCost) != nil {
			return true
		}
	}
	if typ == frameOpen {
		if len(rest) != 0 || ref.id&acceptorBit != 0 || ref.id == 0 {
			return false
		}
		s.openStream(p, ref)
		return true
	}
	key, opener := keyOf(p, ref)
	s.st.mu.Lock()
	rs := s.st.streams[key]
	s.st.mu.Unlock()
	if rs == nil || (opener && rs.open != p) || (!opener && rs.acc != p) {
		// A stream that ended meanwhile (the other end's link went, or
		// it was reset): the end learns once, unless this is its own
		// CLOSE.
		if typ != frameClose && p.goneRef.Swap(uint64(ref.id)|1<<32) != uint64(ref.id)|1<<32 {
			p.enqueueStreamControl(appendStreamFrame(nil, frameClose, ref, []byte{closeGone}))
		}
		return true
	}
	to, toRef, queued := rs.acc, streamRef{peer: p.id, id: key.id | acceptorBit}, &rs.toAcc
	if !opener {
		to, toRef, queued = rs.open, streamRef{peer: p.id, id: key.id}, &rs.toOpen
	}
	switch typ {
	case frameData:
		n := len(rest)
		if n == 0 {
			return true
		}
		// Stream bytes are never dropped: beyond the peer's and the
		// relay's rates the link's reading waits (TCP pushes back on the
		// sender), where packets would be dropped.
		cost := max(n, MinPacketCost)
		if p.lim != nil && waitRate(ctx, p.lim, cost) != nil {
			return true
		}
		if s.total != nil && waitRate(ctx, s.total, cost) != nil {
			return true
		}
		// What one stream may have queued here is bounded by the window
		// its receiver grants (its bytes), and what its receiver's link
		// holds by that times the per-peer limit, a DATA frame counting
		// the buffer it holds and at least 1 KB, so that tiny frames
		// cannot make the queue long.
		size := frameHeader + streamHeader + n
		w := dataCost(size)
		if queued.Add(int64(n)) > maxStreamWindow {
			queued.Add(-int64(n))
			s.resetStream(rs, closeOverrun)
			return true
		}
		if to.qStream.Add(w) > int64(s.cfg.MaxStreamsPerPeer)*maxStreamWindow {
			to.qStream.Add(-w)
			queued.Add(-int64(n))
			s.resetStream(rs, closeOverrun)
			return true
		}
		buf := appendStreamFrame(getDataBuf(size), frameData, toRef, rest)
		to.qData.Add(1)
		if !to.enqueueWithin(buf, math.MaxInt) {
			to.qStream.Add(-w)
			to.qData.Add(-1)
			queued.Add(-int64(n))
			putStreamBuf(buf)
			return true
		}
		s.m.bytes.Add(uint64(n))
		p.nBytes.Add(uint64(n))
	case frameWindow:
		if len(rest) != 8 {
			return false
		}
		if !to.enqueueStreamControl(appendStreamFrame(nil, frameWindow, toRef, rest)) {
			s.resetStream(rs, closeOverrun)
		}
	case frameClose:
		if len(rest) != 1 {
			return false
		}
		s.st.mu.Lock()
		again := false
		if rest[0] == closeFin {
			if opener {
				again, rs.finOpener = rs.finOpener, true
			} else {
				again, rs.finAcceptr = rs.finAcceptr, true
			}
		}
		done := rest[0] != closeFin || rs.finOpener && rs.finAcceptr
		if done {
			s.dropStreamLocked(rs)
		}
		s.st.mu.Unlock()
		if !again {
			// Passed on however full the receiver's queue is (at most
			// one from each end of a stream): a fin dropped would leave
			// the receiver waiting for the stream's end forever.
			to.enqueueWithin(appendStreamFrame(nil, frameClose, toRef, rest), math.MaxInt)
		}
	default:
		return false
	}
	return true
}

// waitRate waits until lim has cost for the link's reading, taking it in
// pieces of at most the burst (a frame larger than the burst costs all
// its bytes all the same). It does not reserve tokens ahead
// (rate.Limiter.WaitN would: packets, which take theirs with AllowN and
// are dropped without, found none while streams waited, and a stream at
// the total rate starved every relayed packet). A stream waits for a
// whole frame's worth while packets take theirs meanwhile: packets
// beyond the rate are dropped, so their senders slow down and the
// stream gets the rest.
func waitRate(ctx context.Context, lim *rate.Limiter, cost int) error {
	if lim.Limit() == rate.Inf {
		return nil
	}
	if lim.Burst() <= 0 || lim.Limit() <= 0 {
		return errNoRate
	}
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for cost > 0 {
		n := min(cost, lim.Burst())
		for {
			now := time.Now()
			if lim.AllowN(now, n) {
				break
			}
			wait := time.Duration((float64(n) - lim.TokensAt(now)) / float64(lim.Limit()) * float64(time.Second))
			wait = max(wait, time.Millisecond)
			if t == nil {
				t = time.NewTimer(wait)
			} else {
				t.Reset(wait)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
			}
		}
		cost -= n
	}
	return nil
}

// errNoRate: a rate limiter that never allows anything.
var errNoRate = errors.New("relay: rate limiter allows nothing")

// openStream handles p's OPEN of stream ref.id to ref.peer: it registers
// the stream and passes the OPEN on, or answers with a CLOSE that says
// why not.
func (s *Server) openStream(p *peerLink, ref streamRef) {
	refuse := func(code byte) {
		s.m.streamRefused[code].Add(1)
		p.enqueueStreamControl(appendStreamFrame(nil, frameClose, ref, []byte{code}))
	}
	now := s.now()
	s.mu.RLock()
	to := s.peers[ref.peer]
	acc := to // the link the stream goes to
	if to != nil && !to.streams.Load() {
		// A peer on a UDP link takes streams on its streams-only link,
		// if it opened one (streamlink.go): consent and the peer's
		// expiry stay its own link's.
		if sl := s.streamLinks[ref.peer]; sl != nil && sl.streams.Load() {
			acc = sl
		}
	}
	s.mu.RUnlock()
	switch {
	case to == nil || to.id == p.id:
		refuse(closeNoPeer)
		return
	case !to.streams.Load() && to.transport == transportTLS && !to.featured.Load() && now.Sub(to.linkedAt) < featuresGrace:
		// Its FEATURES may still be on the way (a link that just came
		// up): the opener tries again.
		refuse(closeNoPeer)
		return
	case !acc.streams.Load():
		refuse(closeNotStream)
		return
	case p.expired.Load() && to.expired.Load():
		refuse(closeNotAllowed)
		return
	case !to.consents(p.id, now):
		// As with packets: opening a stream to a peer is consent to hear
		// from it (on the peer's own link, for a streams-only one).
		if m := s.mainLink(p); m != nil {
			m.permit(ref.peer, now)
		}
		refuse(closeNotAllowed)
		return
	}
	key := streamKey{opener: p.id, acceptor: ref.peer, id: ref.id}
	s.st.mu.Lock()
	stale := s.st.streams[key]
	if stale != nil && stale.open == p {
		s.st.mu.Unlock()
		refuse(closeProtocol)
		return
	}
	tellStale := func() {}
	if stale != nil {
		// A stream of the link p replaced, not dropped yet (its reading
		// has not ended): it is gone, and its number is free again. Its
		// acceptor hears so before an OPEN that reuses the number.
		s.dropStreamLocked(stale)
		tellStale = func() {
			stale.acc.enqueueStreamControl(appendStreamFrame(nil, frameClose, streamRef{peer: p.id, id: ref.id | acceptorBit}, []byte{closeGone}))
		}
	}
	if len(s.st.streams) >= s.cfg.MaxStreams || len(s.st.byLink[p]) >= s.cfg.MaxStreamsPerPeer ||
		len(s.st.byLink[acc]) >= s.cfg.MaxStreamsPerPeer || !s.srcRoomLocked(p, acc) {
		s.st.mu.Unlock()
		tellStale()
		refuse(closeLimit)
		return
	}
	rs := &relayStream{key: key, open: p, acc: acc}
	if s.st.streams == nil {
		s.st.streams = make(map[streamKey]*relayStream)
		s.st.byLink = make(map[*peerLink]map[streamKey]struct{})
		s.st.bySrc = make(map[netip.Prefix]int)
	}
	s.st.streams[key] = rs
	s.countSrcLocked(rs, 1)
	for _, l := range []*peerLink{p, acc} {
		if s.st.byLink[l] == nil {
			s.st.byLink[l] = make(map[streamKey]struct{})
		}
		s.st.byLink[l][key] = struct{}{}
	}
	s.st.mu.Unlock()
	tellStale()
	if !acc.enqueueStreamControl(appendStreamFrame(nil, frameOpen, streamRef{peer: p.id, id: ref.id | acceptorBit}, nil)) {
		s.resetStream(rs, closeLimit)
	}
}

// resetStream ends rs at both ends with code.
func (s *Server) resetStream(rs *relayStream, code byte) {
	s.st.mu.Lock()
	if s.st.streams[rs.key] != rs {
		s.st.mu.Unlock()
		return
	}
	s.dropStreamLocked(rs)
	s.st.mu.Unlock()
	rs.open.enqueueStreamControl(appendStreamFrame(nil, frameClose, streamRef{peer: rs.key.acceptor, id: rs.key.id}, []byte{code}))
	rs.acc.enqueueStreamControl(appendStreamFrame(nil, frameClose, streamRef{peer: rs.key.opener, id: rs.key.id | acceptorBit}, []byte{code}))
}

// dropStreamLocked forgets rs; s.st.mu is held.
func (s *Server) dropStreamLocked(rs *relayStream) {
	if s.st.streams[rs.key] != rs {
		return
	}

	delete(s.st.streams, rs.key)
	s.countSrcLocked(rs, -1)
	for _, l := range []*peerLink{rs.open, rs.acc} {
		if m := s.st.byLink[l]; m != nil {
			delete(m, rs.key)
			if len(m) == 0 {
				delete(s.st.byLink, l)
			}
		}
	}
}

// srcRoomLocked reports whether the sources of p and to (one, or two)
// may be an end of one more stream (MaxStreamsPerIP); s.st.mu is held.
func (s *Server) srcRoomLocked(p, to *peerLink) bool {
	max := s.cfg.MaxStreamsPerIP
	if max <= 0 {
		return true
	}
	need := 1
	if p.ipk == to.ipk {
		need = 2 // a stream between two links of one source counts twice
	}
	return s.st.bySrc[p.ipk]+need <= max && s.st.bySrc[to.ipk]+need <= max
}

// countSrcLocked adds d to the stream counts of rs's two ends' sources.
func (s *Server) countSrcLocked(rs *relayStream, d int) {
	for _, l := range []*peerLink{rs.open, rs.acc} {
		if s.st.bySrc[l.ipk] += d; s.st.bySrc[l.ipk] <= 0 {
			delete(s.st.bySrc, l.ipk)
		}
	}
}

// dropStreams ends the streams of p, a link that ended: their other ends
// hear CLOSE gone.
func (s *Server) dropStreams(p *peerLink) {
	s.st.mu.Lock()
	var ended []*relayStream
	for key := range s.st.byLink[p] {
		ended = append(ended, s.st.streams[key])
	}
	for _, rs := range ended {
		s.dropStreamLocked(rs)
	}
	s.st.mu.Unlock()
	for _, rs := range ended {
		if rs.open == p {
			rs.acc.enqueueStreamControl(appendStreamFrame(nil, frameClose, streamRef{peer: rs.key.opener, id: rs.key.id | acceptorBit}, []byte{closeGone}))
		} else {
			rs.open.enqueueStreamControl(appendStreamFrame(nil, frameClose, streamRef{peer: rs.key.acceptor, id: rs.key.id}, []byte{closeGone}))
		}
	}
}

// Streams returns how many relayed streams are open now.
func (s *Server) Streams() int {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	return len(s.st.streams)
}

// featuresGrace is how long after a link came up the relay waits for its
// FEATURES before it tells an opener that the peer takes no streams: the
// client sends FEATURES right after WELCOME, and another peer's OPEN may
// be read before it.
const featuresGrace = 500 * time.Millisecond

// streamControlRoom is how many stream control frames (OPEN, WINDOW,
// CLOSE) a link's queue takes beyond its packets and control headroom.
// An honest stream has a few at a time (a receiver grants again after
// reading a quarter of its window); a stream whose frames would go beyond
// it is reset rather than stalled by a dropped WINDOW.
const streamControlRoom = 256

// enqueueStreamControl queues a stream control frame for p; false if its
// queue is full even so. The DATA frames queued do not count: they are
// bounded by their bytes (qStream).
func (p *peerLink) enqueueStreamControl(buf []byte) bool {
	return p.enqueueWithin(buf, p.srv.cfg.SendQueue+controlHeadroom+streamControlRoom+int(p.qData.Load()))
}

// features handles a FEATURES frame from p.
func (s *Server) features(p *peerLink, body []byte) bool {
	if len(body) < 1 {
		return false
	}
	if body[0]&featureStreams != 0 && s.streamsOffered() {
		p.streams.Store(true)
	}
	p.featured.Store(true)
	return true
}

// streamBufSize is the size of pooled DATA frame buffers.
const streamBufSize = frameHeader + streamHeader + streamChunk

var streamBufs = sync.Pool{New: func() any { return new([streamBufSize]byte) }}

func getStreamBuf() []byte { return streamBufs.Get().(*[streamBufSize]byte)[:0] }

// getDataBuf returns an empty buffer for a DATA frame of size bytes: a
// pooled one for a large frame, one of its size for a small frame (a
// pooled one would hold 16 KB for a byte).
func getDataBuf(size int) []byte {
	if size > streamBufSize/2 {
		return getStreamBuf()
	}
	return make([]byte, 0, size)
}

// dataCost is what a queued DATA frame of size bytes counts in qStream:
// the buffer getDataBuf gives it, at least 1 KB.
func dataCost(size int) int64 {
	if size > streamBufSize/2 {
		return int64(streamBufSize)
	}
	return int64(max(size, 1024))
}

func putStreamBuf(b []byte) {
	if cap(b) == streamBufSize {
		streamBufs.Put((*[streamBufSize]byte)(b[:streamBufSize]))
	}
}

// dataWritten takes b, a DATA frame queued for p, off its stream's
// count: p's writer wrote it.
func (s *Server) dataWritten(p *peerLink, b []byte) {
	ref, rest, _ := parseStream(b[frameHeader:])
	key, _ := keyOf(p, ref)
	s.st.mu.Lock()
	rs := s.st.streams[key]
	s.st.mu.Unlock()
	switch {
	case rs == nil: // ended: nothing counts it any more
	case key.acceptor == p.id && rs.acc == p:
		rs.toAcc.Add(-int64(len(rest)))
	case key.opener == p.id && rs.open == p:
		rs.toOpen.Add(-int64(len(rest)))
	}
}

// dataLen is what a DATA frame queued for p counts in qStream
// (dataCost); 0 for any other message.
func (p *peerLink) dataLen(b []byte) int64 {
	if p.transport != transportTLS || len(b) < frameHeader+streamHeader || b[0] != frameData {
		return 0
	}
	return dataCost(len(b))
}
