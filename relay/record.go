package relay

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/internal/tlstake"
)

// ALPNRecord is the relay's ALPN for byte-stream links that prove the
// node's key in HELLO (as ALPNKeyProof) and, once WELCOME is sent, leave
// TLS for the relay's own AEAD records on the raw connection
// (docs/protocol.md, "Records"): the server then keeps no *tls.Conn, only
// the connection, two AEADs and their counters. A node offers it before
// ALPNKeyProof and ALPN; a server without it picks one of those.
const ALPNRecord = "reach-relay/3"

// The record format: a 2-byte length (big-endian) of what follows, the
// sealed plaintext (AES-128-GCM, its 16-byte tag last). The length is the
// AEAD's additional data; the nonce is the direction's IV XOR its record
// counter (never sent).
const (
	recordHeader = 2
	recordTag    = 16
	// maxRecordPlain is a record's most plaintext: with the largest
	// frame's partial rest it fits a tlsReadSize read buffer.
	maxRecordPlain = 16<<10 - 64
	maxRecord      = recordHeader + maxRecordPlain + recordTag
)

// A frame's partial rest and a whole record fit the read buffer.
var _ [tlsReadSize - (frameHeader + streamHeader + streamChunk - 1) - maxRecord]struct{}

// recordRekeyEvery is how many records a key seals before both sides
// move to the next one (a test lowers it). 2^20 full records is far below
// AES-GCM's limit for one key (RFC 8446 §5.5: 2^24.5).
var recordRekeyEvery = func() (n atomic.Uint64) { n.Store(1 << 20); return }()

// The TLS exporter labels of the two directions' first secrets, and the
// HKDF labels of what is derived from a secret.
const (
	recordLabelC2S = "EXPORTER-reach-relay-record c2s"
	recordLabelS2C = "EXPORTER-reach-relay-record s2c"
	recordInfoKey  = "reach relay record key"
	recordInfoIV   = "reach relay record iv"
	recordInfoNext = "reach relay record next"
)

// ErrRecord: a record that does not open (tampered, truncated, reordered,
// replayed or of a bad length); the link ends. It is a protocol error.
var ErrRecord = fmt.Errorf("%w: a record that does not open", ErrProtocol)

// recordDir is one direction of a link's records: its current secret,
// the key, AEAD and IV derived from it, and the count of records so far.
// A parked link drops its AEADs (drop): about 0.75 KB each, the AES key
// schedule and GHASH tables, rebuilt from the key by the next record
// sealed or opened. (The key is kept, 16 bytes, so that a rebuild costs
// no HKDF: 1 µs and 2 allocations instead of 2.5 µs and 12.)
type recordDir struct {
	secret [32]byte
	key    [16]byte
	iv     [12]byte
	aead   cipher.AEAD // nil: dropped, step rebuilds it
	seq    uint64      // records sealed (or opened) so far: the next one's counter
	// nonce is the current record's (here, not on the stack: passed to
	// the AEAD's interface it would escape, an allocation per record).
	nonce [12]byte
}

// newRecordDirs makes a connection's two directions from its TLS
// exporter: in is what this side opens, out what it seals.
func newRecordDirs(cs tls.ConnectionState, server bool) (in, out *recordDir, err error) {
	c2s, err := cs.ExportKeyingMaterial(recordLabelC2S, nil, 32)
	if err != nil {
		return nil, nil, err
	}
	s2c, err := cs.ExportKeyingMaterial(recordLabelS2C, nil, 32)
	if err != nil {
		return nil, nil, err
	}
	in, out = new(recordDir), new(recordDir)
	if server {
		c2s, s2c = s2c, c2s
	}
	// c2s is now what this side seals.
	if err := out.init(c2s); err != nil {
		return nil, nil, err
	}
	if err := in.init(s2c); err != nil {
		return nil, nil, err
	}
	return in, out, nil
}

// init sets the secret and derives the key, AEAD and IV from it.
func (d *recordDir) init(secret []byte) error {
	d.aead = nil // none of another secret's if this fails
	copy(d.secret[:], secret)
	key, err := hkdf.Expand(sha256.New, d.secret[:], recordInfoKey, len(d.key))
	if err != nil {
		return err
	}
	copy(d.key[:], key)
	iv, err := hkdf.Expand(sha256.New, d.secret[:], recordInfoIV, len(d.iv))
	if err != nil {
		return err
	}
	copy(d.iv[:], iv)
	return d.build()
}

// build makes the AEAD of the key (the IV and counter stay).
func (d *recordDir) build() error {
	block, err := aes.NewCipher(d.key[:])
	if err != nil {
		return err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return err
	}
	d.aead = aead
	return nil
}

// drop lets go of the AEAD; the secret, key, IV and counter stay, and
// the next record sealed or opened rebuilds it. Only whoever may seal (or
// open) in this direction at the moment may drop it: for a link's out,
// under the lock of its writes; for its in, its reader.
func (d *recordDir) drop() { d.aead = nil }

// step moves the counter on to the record about to be sealed or opened,
// rekeying when it starts a new interval (and rebuilding a dropped AEAD);
// the nonce is the IV XOR the counter.
func (d *recordDir) step() error {
	if d.seq == ^uint64(0) {
		return fmt.Errorf("%w: record counter exhausted", ErrRecord)
	}
	if d.seq > 0 && d.seq%recordRekeyEvery.Load() == 0 {
		next, err := hkdf.Expand(sha256.New, d.secret[:], recordInfoNext, len(d.secret))
		if err != nil {
			return err
		}
		if err := d.init(next); err != nil {
			return err
		}
	} else if d.aead == nil {
		if err := d.build(); err != nil {
			return err
		}
	}
	d.nonce = d.iv
	var ctr [8]byte
	binary.BigEndian.PutUint64(ctr[:], d.seq)
	for i, b := range ctr {
		d.nonce[4+i] ^= b
	}
	d.seq++
	return nil
}

// seal appends the records of plain (split at maxRecordPlain) to dst.
func (d *recordDir) seal(dst, plain []byte) ([]byte, error) {
	for first := true; first || len(plain) > 0; first = false {
		n := min(len(plain), maxRecordPlain)
		if err := d.step(); err != nil {
			return dst, err
		}
		h := len(dst)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n+recordTag))
		dst = d.aead.Seal(dst, d.nonce[:], plain[:n], dst[h:h+recordHeader])
		plain = plain[n:]
	}
	return dst, nil
}

// recordLen is the length of the record that starts b (at least its
// header), or ErrRecord if no record is that long.
func recordLen(b []byte) (int, error) {
	n := int(binary.BigEndian.Uint16(b))
	if n < recordTag || n > maxRecordPlain+recordTag {
		return 0, fmt.Errorf("%w: record of %d bytes", ErrRecord, n)
	}
	return recordHeader + n, nil
}

// open opens the whole record rec (header first) in place: its plaintext
// is rec[recordHeader:][:len(plain)]. A record that does not open is
// ErrRecord, its plaintext never returned.
func (d *recordDir) open(rec []byte) ([]byte, error) {
	if err := d.step(); err != nil {
		return nil, err
	}
	ct := rec[recordHeader:]
	plain, err := d.aead.Open(ct[:0], d.nonce[:], ct, rec[:recordHeader])
	if err != nil {
		return nil, ErrRecord
	}
	return plain, nil
}

// sealBufs recycles the buffers the server seals a write's records in.
var sealBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, maxCoalesce+maxCoalesce/maxRecordPlain*recordOverhead+maxRecord)
	return &b
}}

// recordOverhead is what a record adds to its plaintext.
const recordOverhead = recordHeader + recordTag

// recordConn is a byte stream over records on a raw connection (a node's
// end of an ALPNRecord link after WELCOME): a net.Conn.
type recordConn struct {
	net.Conn // the raw connection
	in, out  *recordDir

	rmu     sync.Mutex
	rbuf    []byte // records read: rbuf[rr:rw]
	rr, rw  int
	plain   []byte // opened and not yet read
	readErr error  // sticky

	wmu     sync.Mutex
	wbuf    []byte
	pending []byte // records a write sent in part: their rest
	// writeErr: a write failed, having written nothing, for another
	// reason than its deadline; sticky (its counters are spent).
	writeErr error
}

func newRecordConn(raw net.Conn, in, out *recordDir) *recordConn {
	return &recordConn{Conn: raw, in: in, out: out}
}

// Read implements net.Conn.
func (c *recordConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.plain) == 0 {
		if c.readErr != nil {
			return 0, c.readErr
		}
		if err := c.fill(); err != nil {
			if errors.Is(err, ErrRecord) {
				c.readErr = err
			}
			return 0, err
		}
	}
	n := copy(p, c.plain)
	c.plain = c.plain[n:]
	return n, nil
}

// fill reads and opens the next record.
func (c *recordConn) fill() error {
	if c.rbuf == nil {
		c.rbuf = make([]byte, 2*maxRecord)
	}
	need := recordHeader
	for {
		if c.rw-c.rr >= recordHeader {
			n, err := recordLen(c.rbuf[c.rr:])
			if err != nil {
				return err
			}
			need = n
			if c.rw-c.rr >= n {
				plain, err := c.in.open(c.rbuf[c.rr : c.rr+n])
				if err != nil {
					return err
				}
				c.rr += n
				c.plain = plain
				return nil
			}
		}
		if len(c.rbuf)-c.rr < need {
			c.rw = copy(c.rbuf, c.rbuf[c.rr:c.rw])
			c.rr = 0
		}
		n, err := c.Conn.Read(c.rbuf[c.rw:])
		c.rw += n
		if err != nil && n == 0 {
			if err == io.EOF && c.rw > c.rr {
				return fmt.Errorf("%w: truncated", ErrRecord)
			}
			return err
		}
	}
}

// Write implements net.Conn: b in records, in one write. A write that
// timed out having written nothing (os.ErrDeadlineExceeded) took no
// record counter and wrote none of b; one that wrote part of its records
// keeps the rest, which the next write sends first: b is written (n is
// len(b)), its error says when. Any other failure with nothing written
// is final (every later write returns it): a connection that reports
// nothing written and may have sent part (a WebSocket's netConn does) must
// not see those counters again, under other plaintext.
func (c *recordConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.writeErr != nil {
		return 0, c.writeErr
	}
	if len(c.pending) > 0 {
		n, err := c.Conn.Write(c.pending)
		c.pending = c.pending[n:]
		if err != nil {
			return 0, err
		}
	}
	saved := *c.out
	var err error
	c.wbuf, err = c.out.seal(c.wbuf[:0], b)
	if err != nil {
		return 0, err
	}
	if n, err := c.Conn.Write(c.wbuf); err != nil {
		if n == 0 {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				*c.out = saved
			} else {
				c.writeErr = err
			}
			return 0, err
		}
		c.pending = bytes.Clone(c.wbuf[n:])
		return len(b), err
	}
	if cap(c.wbuf) > 2*maxCoalesce {
		c.wbuf = nil
	}
	return len(b), nil
}

// streamRW is a node's end of a byte-stream link: TLS, or under
// ALPNRecord once WELCOME was read, records on the raw connection. Reads
// come from one goroutine at a time (the one that switches, then the
// read loop); writes may come from several.
type streamRW struct {
	tc  *tls.Conn
	raw net.Conn // under ALPNRecord: the connection under tc
	wmu sync.Mutex
	rc  *recordConn // after the switch; guarded by wmu for writers
}

// useRecords prepares the switch of an ALPNRecord link, read through
// bounded: the hook to run once WELCOME was read.
func (rw *streamRW) useRecords(cs tls.ConnectionState, bounded *tlstake.Bounded) (func() error, error) {
	in, out, err := newRecordDirs(cs, false)
	if err != nil {
		return nil, err
	}
	rw.raw = bounded.Conn
	return func() error {
		if !bounded.AtBoundary() {
			return fmt.Errorf("%w: WELCOME ends inside a TLS record", ErrProtocol)
		}
		rw.wmu.Lock()
		rw.rc = newRecordConn(bounded.Conn, in, out)
		rw.wmu.Unlock()
		return nil
	}, nil
}

// Read reads the link's bytes (only the reading goroutine sets rc).
func (rw *streamRW) Read(p []byte) (int, error) {
	if rw.rc != nil {
		return rw.rc.Read(p)
	}
	return rw.tc.Read(p)
}

// write writes b (within 10 s).
func (rw *streamRW) write(b []byte) error {
	rw.wmu.Lock()
	defer rw.wmu.Unlock()
	rw.tc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	var err error
	if rw.rc != nil {
		_, err = rw.rc.Write(b)
	} else {
		_, err = rw.tc.Write(b)
	}
	return err
}

// close closes the connection: under ALPNRecord the raw one, with no TLS
// alert (the relay would read it as a record).
func (rw *streamRW) close() {
	if rw.raw != nil {
		rw.raw.Close()
		return
	}
	rw.tc.Close()
}

type writerFunc func([]byte) error

func (f writerFunc) Write(b []byte) (int, error) {
	if err := f(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

func b2u(b bool) int {
	if b {
		return 1
	}
	return 0
}
