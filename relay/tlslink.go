package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/reachp2p/reach/identity"
)

// tlsConn is what the relay keeps of a TLS link's connection. Its read
// loop runs on a goroutine while the link is active; a link idle for
// ServerConfig.TLSPark is parked: the server's watcher (watch_linux.go)
// holds its connection and no goroutine does, until the connection has
// something to read and the watcher starts a read loop again. Exactly one
// of a read loop, the watcher and the closer (closeTLS) owns the link's
// end (endTLS).
type tlsConn struct {
	// tc is the TLS connection; under ALPNRecord only until HELLO and
	// WELCOME are done (nil then, set under wmu: the link reads and
	// writes conn's records, in and out).
	tc *tls.Conn
	// conn is what the link reads from once linked, and sets deadlines
	// on: tc, or under ALPNRecord the raw connection under it.
	conn net.Conn
	// in and out are the link's records under ALPNRecord (nil: TLS
	// records); sealing: WELCOME was sent, the link's writes are records.
	in, out *recordDir
	sealing bool            // guarded by wmu
	ctx     context.Context // the server's (ServeTLS's)
	// raw is the TCP connection's descriptor for the watcher; nil: the
	// link cannot park (not a TCP connection, or not Linux).
	raw   syscall.RawConn
	stop  func() bool // unregisters the shutdown hook (context.AfterFunc)
	ended atomic.Bool // endTLS ran
	wmu   sync.Mutex  // one write at a time
	// proof: the node proves its key in HELLO (ALPNKeyProof); the link's
	// peer ID is known only then.
	proof bool

	// Guarded by the watcher's mutex.
	key     int32 // the watcher's key while parked
	parked  bool
	closing bool      // closeTLS ran: the link may not park
	last    time.Time // parked: its last frame was no later than this

	fr frameReader // the read loop's buffered frames; empty while parked
}

// write writes b to the connection (within 10 s).
func (c *tlsConn) write(b []byte) error { return c.writeWithin(b, 10*time.Second) }

// writeWithin writes b to the connection within d. Under ALPNRecord,
// WELCOME is the last frame written in TLS: the writes after it are
// records.
func (c *tlsConn) writeWithin(b []byte, d time.Duration) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.conn.SetWriteDeadline(time.Now().Add(d))
	if c.sealing {
		bp := sealBufs.Get().(*[]byte)
		out, err := c.out.seal((*bp)[:0], b)
		if err == nil {
			_, err = c.conn.Write(out)
		}
		if cap(out) <= 2*maxCoalesce {
			*bp = out[:0]
			sealBufs.Put(bp)
		}
		return err
	}
	_, err := c.tc.Write(b)
	if err == nil && c.out != nil && len(b) > 0 && b[0] == frameWelcome {
		c.sealing = true
	}
	return err
}

// idler is a carrier that can drop per-connection buffers or keys while
// nothing moves; its next Read or Write rebuilds them.
type idler interface {
	Idle()
}

// idle lets go of what the link rebuilds when it moves again: its
// records' AEADs, and what its carrier can drop (idler). Its read loop
// calls it as the link parks, before the watcher can wake it (the read
// loop then owns in and the carrier's reads); out and the carrier's
// writes are under wmu, which writes to a parked link take too.
func (c *tlsConn) idle() {
	if c.in != nil {
		c.in.drop()
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.out != nil {
		c.out.drop()
	}
	carrier := c.conn
	if tc, ok := carrier.(*tls.Conn); ok {
		carrier = tc.NetConn()
	}
	if i, ok := carrier.(idler); ok {
		i.Idle()
	}
}

// close closes the connection: under ALPNRecord the raw one (no TLS
// alert after the switch: the node would read it as a record).
func (c *tlsConn) close() error {
	if c.out != nil {
		return c.conn.Close()
	}
	return c.tc.Close()
}

// ServeTLS serves one TLS connection (handshake done) that negotiated
// ALPN. It returns when the link ends or parks (TLSPark): a parked link
// lives on without a goroutine, and ends when it fails, idles for
// IdleTimeout or ctx ends. The link closes tc when it ends.
func (s *Server) ServeTLS(ctx context.Context, tc *tls.Conn) {
	p := s.tlsLink(ctx, tc)
	if p == nil {
		tc.Close()
		return
	}
	s.tlsLinks.Add(1) // Done by endTLS
	c := p.tls
	c.stop = context.AfterFunc(ctx, func() {
		s.closeTLS(p, func() {
			c.writeWithin(appendFrame(nil, frameError, []byte{codeShutdown}, []byte("server shutting down")), time.Second)
		})
	})
	tc.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if !s.hello(ctx, p, tc) {
		// Not linked (hello unregistered it if it had registered it).
		c.ended.Store(true)
		c.stop()
		c.close()
		s.tlsLinks.Done()
		return
	}
	if c.out != nil {
		// WELCOME was the last of TLS: the link keeps the raw connection.
		c.wmu.Lock()
		c.tc = nil
		c.wmu.Unlock()
	}
	p.startWriter(ctx)
	s.readTLS(p)
}

// tlsLink makes the peerLink of a TLS connection; nil if the client
// proved no key. (Apart from ServeTLS, so that the frame of what sets a
// link up is gone while its read loop waits: an idle link's goroutine
// then fits the smallest stack the runtime shrinks it to, 8 KB, not 16.)
func (s *Server) tlsLink(ctx context.Context, tc *tls.Conn) *peerLink {
	// Under ALPNKeyProof and ALPNRecord the node proves its key in HELLO
	// (hello), else with its certificate, here. Under ALPNRecord the
	// link's records are keyed now, from the handshake's exporter.
	var id identity.PeerID
	alpn := tc.ConnectionState().NegotiatedProtocol
	proof := alpn == ALPNKeyProof || alpn == ALPNRecord
	if !proof {
		var err error
		if id, err = identity.PeerIDFromState(tc.ConnectionState()); err != nil {
			return nil
		}
	}
	c := &tlsConn{tc: tc, conn: tc, ctx: ctx, proof: proof}
	if alpn == ALPNRecord {
		var err error
		if c.in, c.out, err = newRecordDirs(tc.ConnectionState(), true); err != nil {
			return nil
		}
		c.conn = tc.NetConn()
	}
	if s.cfg.TLSPark > 0 {
		c.raw = parkable(tc)
	}
	c.fr.own = c.raw == nil
	ip := addrOf(tc.RemoteAddr())
	var p *peerLink
	p = &peerLink{srv: s, id: id, ip: ip, ipk: ipKey(ip), transport: transportTLS, linkedAt: time.Now(), tls: c,
		fail: func(code byte, reason string) {
			var last func()
			if code != 0 {
				last = func() { c.write(appendFrame(nil, frameError, []byte{code}, []byte(reason))) }
			}
			s.closeTLS(p, last)
		},
		write: func(buf []byte) error {
			if buf[0] == framePacket {
				n := len(buf) - frameHeader
				buf[1], buf[2] = byte(n>>8), byte(n)
			}
			return c.write(buf)
		}}
	// The write loop coalesces what is queued into writes of up to
	// maxCoalesce bytes: one TLS record and one syscall for many packets.
	// (Holding a batch's records for one write to the TCP connection
	// instead was measured: it doubled the relay's CPU per packet on TLS
	// links, BenchmarkRelayCPU.)
	p.writeBatch = func(bufs [][]byte) (err error) {
		bp := coalesceBufs.Get().(*[]byte)
		out := (*bp)[:0]
		defer func() {
			if cap(out) <= 2*maxCoalesce {
				*bp = out[:0]
				coalesceBufs.Put(bp)
			}
		}()
		for _, b := range bufs {
			if len(out) > 0 && len(out)+len(b) > maxCoalesce {
				if err := c.write(out); err != nil {
					return err
				}
				out = out[:0]
			}
			out = append(out, b...)
		}
		if len(out) == 0 {
			return nil
		}
		return c.write(out)
	}
	return p
}

// closeTLS closes p's connection after last (its last words, an ERROR
// frame; nil: none). A parked link ends here: it is taken from the
// watcher first, so that what its node does on the last words (close)
// does not wake it. A read loop ends a link that was not parked when its
// read fails.
func (s *Server) closeTLS(p *peerLink, last func()) {
	parked := s.watch.remove(p.tls)
	if last != nil {
		last()
	}
	if parked {
		s.endTLS(p) // unregistered before its connection closes
		return
	}
	p.tls.close()
}

// endTLS ends a TLS link: its owner (the read loop, or the closer of a
// parked link) calls it once.
func (s *Server) endTLS(p *peerLink) {
	if p.tls.ended.Swap(true) {
		return
	}
	p.tls.stop()
	s.unregister(p)
	p.tls.close()
	s.tlsLinks.Done()
}

// Wait waits until every TLS link served (ServeTLS) has ended: those that
// outlived their ServeTLS call (parked, or woken since) end once the
// context given to ServeTLS ends. It implements
// rendezvous.LingeringProtocol: a stopping rendezvous server calls it.
func (s *Server) Wait() { s.tlsLinks.Wait() }

// readTLS reads a TLS link's frames until it ends or parks.
func (s *Server) readTLS(p *peerLink) {
	if s.readFrames(p) {
		return // the watcher holds it: the reader is another goroutine's now
	}
	p.tls.fr.drop()
	s.endTLS(p)
}

// parkResult is what became of a link the read loop asked the watcher
// to park.
type parkResult uint8

const (
	parkFailed  parkResult = iota // the watcher could not take it: the read loop goes on
	parkDone                      // the watcher holds it
	parkClosing                   // it is closing: the read loop ends it
)

// readFrames reads and handles a TLS link's frames; true if the link
// parked (a watcher holds it), false if it must end.
func (s *Server) readFrames(p *peerLink) bool {
	c := p.tls
	conn := c.conn
	idle := s.cfg.IdleTimeout
	// The read deadline moves at most every `every` (not per frame: that
	// cost about 5% of a busy TLS link's forwarding CPU, issue 14), with
	// `every` added, so a link is closed no earlier than IdleTimeout after
	// its last frame, and at most `every` later. A link that can park
	// waits TLSPark for its next frame instead, and parks then.
	every := min(time.Second, idle/4)
	if c.raw != nil {
		every = min(every, s.cfg.TLSPark/2)
	}
	// canPark: this read loop may hand the link to the watcher. A link
	// the watcher could not take (descriptors short) keeps its read loop,
	// with the idle deadline, and tries again after IdleTimeout.
	// long: the deadline was moved by IdleTimeout with a frame half read;
	// it moves again (to TLSPark) once no frame is, so that the link parks
	// when it idles after that frame (at most two moves per `every`).
	var moved, retry time.Time
	canPark, long := false, false
	// last: the link's last frame was no later than this (for the sweep
	// while it is parked): a wake-up is not a frame (bytes that make none,
	// a TLS record trickled, do not keep an idle link), so a woken link
	// starts from its parked time; got: a frame was handled since.
	last, got := c.last, false
	if last.IsZero() {
		last = time.Now() // linked just now (HELLO)
	}
	for {
		now := time.Now()
		if got {
			last, got = now, false
		}
		if now.Sub(moved) >= every || long && c.fr.empty() {
			canPark = c.raw != nil && !now.Before(retry)
			d := idle + every
			long = canPark && !c.fr.empty()
			if canPark && !long {
				d = s.cfg.TLSPark
			}
			conn.SetReadDeadline(now.Add(d))
			moved = now
		}
		var typ byte
		var body []byte
		var err error
		if c.in != nil {
			typ, body, err = c.fr.nextRecord(conn, c.in)
		} else {
			typ, body, err = c.fr.next(conn)
		}
		got = err == nil
		if err != nil {
			if canPark && errors.Is(err, os.ErrDeadlineExceeded) {
				now := time.Now()
				if c.fr.empty() {
					// Between frames: no goroutine until there is more.
					c.fr.release()
					switch s.watch.park(p, last) {
					case parkDone:
						return true
					case parkClosing:
						return false
					}
					canPark, retry, moved = false, now.Add(idle), time.Time{}
					continue
				}
				if now.Sub(moved) < idle {
					// In a frame: wait for the rest up to IdleTimeout.
					moved = time.Time{}
					continue
				}
			}
			if errors.Is(err, ErrProtocol) {
				p.fail(codeProtocol, err.Error())
			}
			return false
		}
		switch typ {
		case framePacket:
			if len(body) < identityLen {
				p.fail(codeProtocol, "short packet frame")
				return false
			}
			s.forward(p, identity.PeerID(body[:identityLen]), body[identityLen:])
		case framePing:
			p.pong(body)
		case framePong:
		case frameAllow:
			if !s.allow(p, body) {
				p.fail(codeProtocol, "bad allow frame")
				return false
			}
		case frameFeatures:
			if !s.features(p, body) {
				p.fail(codeProtocol, "bad features frame")
				return false
			}
		case frameOpen, frameData, frameWindow, frameClose:
			if !s.streamFrame(c.ctx, p, typ, body) {
				p.fail(codeProtocol, "bad stream frame")
				return false
			}
		default:
			p.fail(codeProtocol, "unexpected frame")
			return false
		}
	}
}

// wake runs a parked link's read loop again (the watcher saw its
// connection readable).
func (s *Server) wake(p *peerLink) {
	s.m.wokeTLS.Add(1)
	go s.readTLS(p)
}

// tlsReadSize is a TLS link's read buffer: a whole TLS record (16 KB of
// plaintext, many frames) besides the largest frame's partial rest
// (next keeps room for a whole frame).
// (32 KB: a size class of its own, no rounding up.)
const tlsReadSize = 32 << 10

// tlsReadBufs recycles the read buffers: only a link whose read loop runs
// holds one.
var tlsReadBufs = sync.Pool{New: func() any { b := make([]byte, tlsReadSize); return &b }}

// frameReader reads frames from a byte stream through a buffer: a read
// takes what the stream has (a TLS record), and a read that fails (a
// deadline) loses nothing: the next one goes on where it stopped. A
// link that parks takes a tlsReadSize buffer from the pool while its
// read loop runs; one that cannot (own) keeps a buffer for its life, a
// packet frame's size until a larger frame needs tlsReadSize, as
// readFrame's.
type frameReader struct {
	bp   *[]byte // nil: none held
	r, w int     // buffered frames: (*bp)[r:w]
	c, e int     // under ALPNRecord: records not yet opened, (*bp)[c:e]
	own  bool    // the buffer is the link's, not the pool's
}

// empty: no part of a frame (or record) is buffered.
func (f *frameReader) empty() bool { return f.r == f.w && f.c == f.e }

// release returns an empty reader's pooled buffer to the pool.
func (f *frameReader) release() {
	if f.bp != nil && f.empty() && !f.own {
		tlsReadBufs.Put(f.bp)
		f.bp, f.r, f.w, f.c, f.e = nil, 0, 0, 0, 0
	}
}

// drop lets go of the buffer and what it held (the link ends).
func (f *frameReader) drop() {
	f.r, f.w, f.c, f.e = 0, 0, 0, 0
	f.release()
	f.bp = nil
}

// takeBuffer gives f its buffer if it has none: its own (a link that
// cannot park keeps one), or one from the pool while its read loop runs.
func (f *frameReader) takeBuffer() {
	if f.bp != nil {
		return
	}
	if f.own {
		b := make([]byte, bufSize)
		f.bp = &b
	} else {
		f.bp = tlsReadBufs.Get().(*[]byte)
	}
}

// next returns the next frame; body is valid until the next call.
func (f *frameReader) next(rd io.Reader) (typ byte, body []byte, err error) {
	f.takeBuffer()
	for {
		b := *f.bp
		need := frameHeader // from r: what the frame at r needs in all
		if f.w-f.r >= frameHeader {
			var n int
			if typ, n, err = frameHead(b[f.r:f.w]); err != nil {
				return 0, nil, err
			}
			if end := f.r + frameHeader + n; end <= f.w {
				body = b[f.r+frameHeader : end]
				f.r = end
				if f.r == f.w {
					f.r, f.w = 0, 0
				}
				return typ, body, nil
			}
			need += n
		}
		if len(b) < need {
			// Only an own buffer is smaller than the largest frame.
			nb := make([]byte, tlsReadSize)
			f.w = copy(nb, b[f.r:f.w])
			f.r = 0
			f.bp = &nb
			b = nb
		} else if len(b)-f.r < need || len(b)-f.w < len(b)/4 {
			f.w = copy(b, b[f.r:f.w])
			f.r = 0
		}
		n, err := rd.Read(b[f.w:])
		f.w += n
		if err != nil && n == 0 {
			return 0, nil, err
		}
	}
}
