package stream

// Stream resets with a code on TLS+yamux sessions.
//
// yamux (v0.1.2) honours a stream reset it receives, a window update
// frame with the RST flag (the stream's Read and Write then fail with
// yamux.ErrConnectionReset), but has no way to send one. So the backend
// sends it itself: frameConn, the connection yamux writes to, slips the
// 12-byte header in between two of yamux's frames, with the error code
// in its length field (code+1; 0 is yamux's own RST, which carries none).
// frameReader, what yamux reads from, follows the peer's frames and keeps
// the code of each RST it sees, so that the stream's ErrConnectionReset
// becomes a *PeerError with the code, as on QUIC. A peer's RST without a
// code (yamux's own, or an older reach) is CodeAborted; an older reach
// receiving ours sees a plain yamux reset.
//
// The stream must also end on this side, and yamux has no call for that
// either (its Close is a FIN, after which the stream lingers until the
// peer's FIN, which a reset peer never sends, or StreamCloseTimeout): so
// frameReader hands yamux the same RST as if the peer had sent it, at
// the next frame boundary of what it reads (the next frame from the
// peer: the session's pings bring one every KeepAlivePeriod at the
// latest).

import (
	"encoding/binary"
	"errors"
	"io"
	"math"
	"sync"

	"github.com/hashicorp/yamux"
)

// yamux frame types and flags the reset needs.
const (
	yamuxTypeData         = 0
	yamuxTypeWindowUpdate = 1
	yamuxFlagRST          = 8
)

// maxResetCodes bounds the codes of received resets kept for streams
// that have not looked theirs up yet; beyond it the oldest are forgotten
// (their streams report CodeAborted).
const maxResetCodes = 4096

// maxPendingResets bounds the resets waiting to be sent (to the peer, and
// to this side's yamux). Beyond it a stream is closed as yamux does it
// (a FIN: the peer reads EOF, with no code), or the local stream is left
// to yamux's own timeout.
const maxPendingResets = 4096

// resetHeader is the RST frame for stream id carrying code.
func resetHeader(id uint32, code uint64) [yamuxHeaderLen]byte {
	var h [yamuxHeaderLen]byte
	h[1] = yamuxTypeWindowUpdate
	binary.BigEndian.PutUint16(h[2:4], yamuxFlagRST)
	binary.BigEndian.PutUint32(h[4:8], id)
	if code < math.MaxUint32 {
		binary.BigEndian.PutUint32(h[8:12], uint32(code)+1)
	}
	return h
}

// sendReset sends the peer an RST for stream id with code, between two
// frames of yamux's, without waiting: a goroutine writes it once no
// frame is half written. False when maxPendingResets are waiting already
// (the peer is not reading).
func (c *frameConn) sendReset(id uint32, code uint64) bool {
	h := resetHeader(id, code)
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.resets) >= maxPendingResets*yamuxHeaderLen {
		return false
	}
	c.resets = append(c.resets, h[:]...)
	if !c.flushing {
		c.flushing = true
		go c.flushResets()
	}
	return true
}

// flushResets writes the waiting resets, each between two frames.
func (c *frameConn) flushResets() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.idle.L == nil {
		c.idle.L = &c.wmu
	}
	for {
		for c.inFrame {
			c.idle.Wait()
		}
		c.rmu.Lock()
		b := c.resets
		c.resets = nil
		if len(b) == 0 {
			c.flushing = false
			c.rmu.Unlock()
			return
		}
		c.rmu.Unlock()
		if _, err := c.Conn.Write(b); err != nil {
			// The session is broken; yamux's send loop fails too.
			c.rmu.Lock()
			c.resets, c.flushing = nil, false
			c.rmu.Unlock()
			return
		}
	}
}

// frameReader follows the frames yamux reads: it records the codes of
// the peer's resets and slips in the resets this side gave its own
// streams. Only yamux's receive loop calls read.
type frameReader struct {
	hdr  [yamuxHeaderLen]byte
	hn   int    // bytes of hdr read so far
	body uint32 // bytes left of the current data frame's body
	out  []byte // injected headers being handed to yamux

	mu     sync.Mutex
	inject []byte            // under mu: resets for this side's yamux
	codes  map[uint32]uint32 // under mu: stream ID -> length field of its RST
	order  []uint32          // under mu: codes' keys, oldest first (a ring once full)
	next   int               // under mu: the ring's oldest entry
}

func (f *frameReader) read(r io.Reader, p []byte) (int, error) {
	if len(f.out) == 0 && f.hn == 0 && f.body == 0 {
		f.mu.Lock()
		f.out, f.inject = f.inject, nil
		f.mu.Unlock()
	}
	if len(f.out) > 0 {
		n := copy(p, f.out)
		f.out = f.out[n:]
		return n, nil
	}
	// Never past the current frame: the next Read starts at a boundary.
	if f.body > 0 {
		p = p[:min(uint32(len(p)), f.body)]
	} else {
		p = p[:min(len(p), yamuxHeaderLen-f.hn)]
	}
	n, err := r.Read(p)
	if f.body > 0 {
		f.body -= uint32(n)
		return n, err
	}
	f.hn += copy(f.hdr[f.hn:], p[:n])
	if f.hn == yamuxHeaderLen {
		f.hn = 0
		f.frame()
	}
	return n, err
}

// frame takes in a complete header.
func (f *frameReader) frame() {
	h := f.hdr[:]
	length := binary.BigEndian.Uint32(h[8:12])
	switch h[1] {
	case yamuxTypeData:
		f.body = length
	case yamuxTypeWindowUpdate:
		if binary.BigEndian.Uint16(h[2:4])&yamuxFlagRST != 0 {
			f.record(binary.BigEndian.Uint32(h[4:8]), length)
		}
	}
}

func (f *frameReader) record(id, length uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.codes == nil {
		f.codes = make(map[uint32]uint32)
	}
	if _, ok := f.codes[id]; !ok {
		if len(f.order) < maxResetCodes {
			f.order = append(f.order, id)
		} else {
			delete(f.codes, f.order[f.next])
			f.order[f.next] = id
			f.next = (f.next + 1) % maxResetCodes
		}
	}
	f.codes[id] = length
}

// code takes the code of the peer's reset of stream id: CodeAborted when
// its RST carried none; false when no RST of the peer's is known.
func (f *frameReader) code(id uint32) (ErrorCode, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.codes[id]
	if !ok {
		return 0, false
	}
	delete(f.codes, id)
	if l == 0 {
		return CodeAborted, true
	}
	return ErrorCode(l - 1), true
}

// recorded is the number of codes kept.
func (f *frameReader) recorded() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.codes)
}

// resetLocal has yamux reset stream id at the next frame boundary of
// what it reads.
func (f *frameReader) resetLocal(id uint32) {
	h := resetHeader(id, 0)
	binary.BigEndian.PutUint32(h[8:12], 0)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.inject) < maxPendingResets*yamuxHeaderLen {
		f.inject = append(f.inject, h[:]...)
	}
}

// peerCode is the code of the peer's reset of the stream, once its RST
// has arrived.
func (s *yamuxStream) peerCode() (ErrorCode, bool) {
	if c := s.code.Load(); c != 0 {
		return ErrorCode(c - 1), true
	}
	if s.fc == nil {
		return 0, false
	}
	c, ok := s.fc.in.code(s.Stream.StreamID())
	if !ok {
		return 0, false
	}
	if !s.code.CompareAndSwap(0, uint64(c)+1) {
		c = ErrorCode(s.code.Load() - 1)
	}
	return c, true
}

// resetErr turns yamux's report of the peer's reset into a *PeerError
// with the peer's code (CodeAborted when it gave none); other errors pass
// unchanged.
func (s *yamuxStream) resetErr(err error) error {
	if !errors.Is(err, yamux.ErrConnectionReset) {
		return err
	}
	c, ok := s.peerCode()
	if !ok {
		c = CodeAborted
	}
	return &PeerError{Code: c, Err: err}
}

// reset abandons the stream: an RST with code to the peer, and the same
// to this side's yamux so that it forgets the stream.
func (s *yamuxStream) reset(code uint64) {
	if s.fc == nil || s.fc.in == nil {
		s.Stream.Close()
		return
	}
	if !s.fc.sendReset(s.Stream.StreamID(), code) {
		s.Stream.Close()
	}
	s.fc.in.resetLocal(s.Stream.StreamID())
}
