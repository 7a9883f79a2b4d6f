package tlstake

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// recordError is a record this side refuses: the alert it answers with
// (RFC 8446 §6.2), and ErrRecord for errors.Is.
type recordError struct {
	alert byte
	msg   string
}

func (e *recordError) Error() string { return "tlstake: bad TLS record: " + e.msg }
func (e *recordError) Unwrap() error { return ErrRecord }

var (
	errBadMAC     = &recordError{20, "a record that does not open"}
	errNoType     = &recordError{10, "a record with no content type"}
	errOverflow   = &recordError{22, "a record too long"}
	errUnexpected = &recordError{10, "a record or message not allowed after the handshake"}
	errDecode     = &recordError{50, "a malformed alert or message"}
	errParam      = &recordError{47, "a KeyUpdate with a bad request field"}
)

// maxUselessRecords is how many records in a row may carry no
// application data (empty ones, user_canceled alerts, KeyUpdates: each
// costs an AEAD open, a KeyUpdate three HKDF expansions and an AES key
// schedule): one more ends the connection with unexpected_message. The
// limit is crypto/tls's (16), so that taking a connection over accepts
// no flood that crypto/tls would have refused.
const maxUselessRecords = 16

// rekeyEvery is how many records a write key seals before this side
// sends KeyUpdate and moves to the next one: far below AES-GCM's limit
// for one key (§5.5: 2^24.5 records). A test lowers it.
var rekeyEvery = func() (n atomic.Uint64) { n.Store(1 << 23); return }()

// Conn is a taken-over TLS 1.3 connection: a net.Conn of the
// application data, over the raw connection. Reads come from one
// goroutine at a time, writes from any (each write is one syscall of
// whole records). A read that times out loses nothing: the next goes on
// in the record it stopped in.
type Conn struct {
	raw net.Conn

	rmu   sync.Mutex
	in    dir
	rbuf  *[]byte // from bufs; nil while idle
	rr    int     // the first unread byte in *rbuf
	rw    int     // the end of what was read into *rbuf
	plain []byte  // opened and not yet read (in *rbuf)
	hs    []byte  // a post-handshake message's bytes so far (at most 5)
	rerr  error   // sticky
	// head takes the first bytes after an idle spell: a reader blocked on
	// a quiet connection holds no pooled buffer.
	head    [recordHeaderLen]byte
	useless int // records in a row that carried no application data

	keyUpdate atomic.Bool // the peer asked for our KeyUpdate: sent with the next write

	wmu     sync.Mutex
	out     dir
	pending []byte // records a write sent in part: their rest
	werr    error  // sticky
}

// Read implements net.Conn.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.plain) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		if err := c.fill(); err != nil {
			var re *recordError
			if errors.As(err, &re) {
				c.alert(re.alert)
			}
			if errors.As(err, &re) || errors.Is(err, ErrAlert) || err == io.EOF || errors.Is(err, errCounter) {
				c.rerr = err
				c.rr = c.rw // what follows is never read: drop it with the buffer
			}
			c.release()
			return 0, err
		}
	}
	n := copy(p, c.plain)
	c.plain = c.plain[n:]
	c.release()
	return n, nil
}

// release gives the read buffer back once it holds nothing.
func (c *Conn) release() {
	if c.rbuf != nil && len(c.plain) == 0 && c.rr == c.rw {
		putBuf(c.rbuf)
		c.rbuf, c.rr, c.rw, c.plain = nil, 0, 0, nil
	}
}

// fill reads until a record with application data opens.
func (c *Conn) fill() error {
	for c.rbuf == nil {
		// Nothing is buffered: wait in head, and take a small buffer once
		// bytes came (a signalling session over a WebSocket waits so for
		// its whole life); a record too large for it takes a large one.
		n, err := c.raw.Read(c.head[:])
		if n > 0 {
			c.rbuf = getBuf(smallBuf)
			c.rr, c.rw = 0, copy(*c.rbuf, c.head[:n])
			break // err, if any, comes again with the next read
		}
		if err != nil {
			return err
		}
	}
	buf := *c.rbuf
	for {
		need := recordHeaderLen
		if c.rw-c.rr >= recordHeaderLen {
			h := buf[c.rr:]
			if h[0] != typeAppData {
				return errUnexpected // no plaintext record after the handshake
			}
			n := int(binary.BigEndian.Uint16(h[3:]))
			if n > maxCiphertext {
				return errOverflow
			}
			need = recordHeaderLen + n
			if c.rw-c.rr >= need {
				rec := buf[c.rr : c.rr+need]
				c.rr += need
				typ, content, err := c.in.open(rec)
				if err != nil {
					return err
				}
				if done, err := c.handle(typ, content); done || err != nil {
					return err
				}
				continue
			}
		}
		if len(buf) < need {
			// A record larger than the small buffer: a large one.
			large := getBuf(need)
			c.rw = copy(*large, buf[c.rr:c.rw])
			c.rr = 0
			putBuf(c.rbuf)
			c.rbuf, buf = large, *large
		} else if len(buf)-c.rr < need {
			c.rw = copy(buf, buf[c.rr:c.rw])
			c.rr = 0
		}
		n, err := c.raw.Read(buf[c.rw:])
		c.rw += n
		if err != nil && n == 0 {
			if err == io.EOF && c.rw > c.rr {
				return fmt.Errorf("%w: the connection ended inside a record", io.ErrUnexpectedEOF)
			}
			return err
		}
	}
}

// handle takes one opened record: done when it holds application data
// for Read.
func (c *Conn) handle(typ byte, content []byte) (done bool, err error) {
	if len(c.hs) > 0 && typ != typeHandshake {
		return false, errUnexpected // a message split around another record
	}
	if typ == typeAppData && len(content) > 0 {
		c.useless = 0
	} else if c.useless++; c.useless > maxUselessRecords {
		return false, errUnexpected
	}
	switch typ {
	case typeAppData:
		if len(content) == 0 {
			return false, nil // allowed, and nothing to read
		}
		c.plain = content
		return true, nil
	case typeAlert:
		if len(content) != 2 {
			return false, errDecode
		}
		switch content[1] {
		case 0: // close_notify
			return false, io.EOF
		case 90: // user_canceled: a close_notify follows
			return false, nil
		}
		return false, fmt.Errorf("%w: alert %d", ErrAlert, content[1])
	case typeHandshake:
		if len(content) == 0 {
			return false, errUnexpected
		}
		return false, c.message(content)
	}
	return false, errUnexpected
}

// message takes a handshake record's content: the only message a client
// sends after the handshake is KeyUpdate (§4.6.3), 5 bytes, perhaps
// split over records, and the record that ends it ends with it (§5.1:
// no message spans a key change).
func (c *Conn) message(b []byte) error {
	if len(c.hs)+len(b) > 5 {
		return errUnexpected
	}
	c.hs = append(c.hs, b...)
	if len(c.hs) >= 1 && c.hs[0] != 24 {
		return errUnexpected // not KeyUpdate
	}
	if len(c.hs) >= 4 && (c.hs[1] != 0 || c.hs[2] != 0 || c.hs[3] != 1) {
		return errDecode // KeyUpdate's body is one byte
	}
	if len(c.hs) < 5 {
		return nil
	}
	req := c.hs[4]
	c.hs = c.hs[:0]
	if req > 1 {
		return errParam
	}
	if err := c.in.update(); err != nil {
		return err
	}
	if req == 1 {
		c.keyUpdate.Store(true)
	}
	return nil
}

// alert sends a fatal alert, unless a write is in progress.
func (c *Conn) alert(code byte) {
	if !c.wmu.TryLock() {
		return
	}
	defer c.wmu.Unlock()
	if c.werr == nil && len(c.pending) == 0 {
		if rec, err := c.out.seal(nil, typeAlert, []byte{2, code}); err == nil {
			c.raw.SetWriteDeadline(time.Now().Add(time.Second))
			c.raw.Write(rec)
		}
	}
	c.werr = net.ErrClosed
}

// keyUpdateMsg is KeyUpdate(update_not_requested).
var keyUpdateMsg = []byte{24, 0, 0, 1, 0}

// Write implements net.Conn: b in records, in one write. A write that
// timed out having written nothing (os.ErrDeadlineExceeded) used no
// record counter and wrote none of b; one that wrote part of its records
// keeps the rest, which the next write sends first: b is written (n is
// len(b)), its error says when. Any other failure is final.
func (c *Conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	if len(c.pending) > 0 {
		n, err := c.raw.Write(c.pending)
		c.pending = c.pending[n:]
		if err != nil {
			return 0, err
		}
		c.pending = nil
	}
	saved, update := c.out, c.keyUpdate.Swap(false)
	// Records add their header, type byte and tag; a KeyUpdate one more.
	bp := getBuf(len(b) + (len(b)/maxPlaintext+3)*(recordHeaderLen+1+16) + len(keyUpdateMsg))
	defer putBuf(bp)
	w, err := c.sealAll((*bp)[:0], b, update)
	*bp = w
	if err != nil {
		c.werr = err
		return 0, err
	}
	if n, err := c.raw.Write(w); err != nil {
		if n == 0 {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.out = saved
				if update {
					c.keyUpdate.Store(true)
				}
			} else {
				c.werr = err
			}
			return 0, err
		}
		c.pending = bytes.Clone(w[n:])
		return len(b), err
	}
	return len(b), nil
}

// sealAll appends b's records to w, a KeyUpdate first if update, and one
// wherever the write key reached rekeyEvery records.
func (c *Conn) sealAll(w, b []byte, update bool) ([]byte, error) {
	var err error
	for first := true; first || len(b) > 0; first = false {
		if update || c.out.seq >= rekeyEvery.Load() {
			if w, err = c.out.seal(w, typeHandshake, keyUpdateMsg); err != nil {
				return w, err
			}
			if err := c.out.update(); err != nil {
				return w, err
			}
			update = false
		}
		n := min(len(b), maxPlaintext)
		if w, err = c.out.seal(w, typeAppData, b[:n]); err != nil {
			return w, err
		}
		b = b[n:]
	}
	return w, nil
}

// Close sends close_notify (unless a write is in progress or failed) and
// closes the connection.
func (c *Conn) Close() error {
	if c.wmu.TryLock() {
		if c.werr == nil && len(c.pending) == 0 {
			if rec, err := c.out.seal(nil, typeAlert, []byte{1, 0}); err == nil {
				c.raw.SetWriteDeadline(time.Now().Add(time.Second))
				c.raw.Write(rec)
			}
		}
		c.werr = net.ErrClosed
		c.wmu.Unlock()
	}
	return c.raw.Close()
}

// Idle drops what an idle connection need not keep: the AEADs (the next
// record rebuilds its direction's from the secret) and an empty read
// buffer. It skips a direction in use, and passes Idle on to the raw
// connection if it has one (a TLS carried in a WebSocket in TLS).
func (c *Conn) Idle() {
	if c.rmu.TryLock() {
		c.in.aead = nil
		c.release()
		c.rmu.Unlock()
	}
	if c.wmu.TryLock() {
		c.out.aead = nil
		c.wmu.Unlock()
	}
	if i, ok := c.raw.(interface{ Idle() }); ok {
		i.Idle()
	}
}

// ParkConn returns the TCP connection under c (the raw connection, or
// what its own ParkConn returns): a read of c that timed out left no
// whole record unread, so nothing waits that it does not show as
// readable.
func (c *Conn) ParkConn() net.Conn { return parkConnOf(c.raw) }

func (c *Conn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.raw.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }
