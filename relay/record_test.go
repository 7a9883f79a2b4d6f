package relay

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/net/nettest"
)

// recordPair is the two ends of one direction of records, keyed alike.
func recordPair(t testing.TB, seed byte) (seal, open *recordDir) {
	t.Helper()
	secret := bytes.Repeat([]byte{seed}, 32)
	seal, open = new(recordDir), new(recordDir)
	if err := seal.init(secret); err != nil {
		t.Fatal(err)
	}
	if err := open.init(secret); err != nil {
		t.Fatal(err)
	}
	return seal, open
}

// setRekey lowers the records per key for a test.
func setRekey(t testing.TB, every uint64) {
	old := recordRekeyEvery.Swap(every)
	t.Cleanup(func() { recordRekeyEvery.Store(old) })
}

// randomFrames is n frames of random types and sizes, every size up to
// the largest (a stream's 16 KB DATA frame) likely.
func randomFrames(rnd *rand.Rand, n int) (stream []byte, types []byte, bodies [][]byte) {
	for i := range n {
		typ, size := byte(framePacket), rnd.IntN(maxFrameBody+1)
		switch {
		case i%50 == 0:
			typ, size = frameData, streamHeader+streamChunk // the largest frame
		case rnd.IntN(5) == 0:
			typ, size = frameData, rnd.IntN(streamHeader+streamChunk+1)
		case rnd.IntN(5) == 0:
			size = rnd.IntN(40) // many small frames to a record
		}
		body := make([]byte, size)
		for j := range body {
			body[j] = byte(rnd.Uint32())
		}
		stream = appendFrame(stream, typ, body)
		types, bodies = append(types, typ), append(bodies, body)
	}
	return stream, types, bodies
}

// sealWrites seals stream as a link's writer does: writes of random
// sizes up to maxCoalesce, each split into records.
func sealWrites(t testing.TB, rnd *rand.Rand, d *recordDir, stream []byte) (out []byte, records int) {
	t.Helper()
	for len(stream) > 0 {
		n := min(len(stream), 1+rnd.IntN(maxCoalesce))
		before := d.seq
		var err error
		if out, err = d.seal(out, stream[:n]); err != nil {
			t.Fatal(err)
		}
		records += int(d.seq - before)
		stream = stream[n:]
	}
	return out, records
}

// TestRecordFrames (issue 14): frames of every size, many to a record
// and the largest across records, sealed as the writer seals them and
// read as the server reads them (through pieces and deadline errors,
// from a pooled buffer and from a link's own), come out whole and in
// order, across many rekeys (one every 7 records here).
func TestRecordFrames(t *testing.T) {
	setRekey(t, 7)
	rnd := rand.New(rand.NewPCG(3, 4))
	stream, types, bodies := randomFrames(rnd, 3000)
	for _, own := range []bool{false, true} {
		seal, open := recordPair(t, 1)
		sealed, records := sealWrites(t, rnd, seal, stream)
		if records < 10*7 {
			t.Fatalf("%d records: too few for the rekeys", records)
		}
		f := frameReader{own: own}
		r := &choppy{b: sealed, rnd: rnd}
		for i := 0; i < len(bodies); {
			typ, body, err := f.nextRecord(r, open)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if f.empty() {
					f.release()
				}
				continue
			}
			if err != nil {
				t.Fatalf("own %v: frame %d: %v", own, i, err)
			}
			if typ != types[i] || !bytes.Equal(body, bodies[i]) {
				t.Fatalf("own %v: frame %d: type 0x%02x, %d bytes; want 0x%02x, %d bytes", own, i, typ, len(body), types[i], len(bodies[i]))
			}
			i++
		}
		if _, _, err := f.nextRecord(r, open); err != io.EOF {
			t.Fatalf("own %v: after the last frame: %v, want EOF", own, err)
		}
		if open.seq != uint64(records) {
			t.Fatalf("opened %d records, sealed %d", open.seq, records)
		}
	}
}

// TestRecordConnRoundTrip: the node's record reader gives back what was
// sealed, across rekeys, through pieces.
func TestRecordConnRoundTrip(t *testing.T) {
	setRekey(t, 5)
	rnd := rand.New(rand.NewPCG(5, 6))
	stream, _, _ := randomFrames(rnd, 500)
	seal, open := recordPair(t, 2)
	sealed, _ := sealWrites(t, rnd, seal, stream)
	c := newRecordConn(readOnly{&choppy{b: sealed, rnd: rnd}}, open, nil)
	var got []byte
	buf := make([]byte, 70000)
	for {
		n, err := c.Read(buf[:1+rnd.IntN(len(buf))])
		got = append(got, buf[:n]...)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, stream) {
		t.Fatalf("read %d bytes, not the %d sealed", len(got), len(stream))
	}
}

// readOnly is a net.Conn that only reads, from r.
type readOnly struct{ r io.Reader }

func (c readOnly) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (readOnly) Write(p []byte) (int, error)        { return 0, io.ErrClosedPipe }
func (readOnly) Close() error                       { return nil }
func (readOnly) LocalAddr() net.Addr                { return nil }
func (readOnly) RemoteAddr() net.Addr               { return nil }
func (readOnly) SetDeadline(t time.Time) error      { return nil }
func (readOnly) SetReadDeadline(t time.Time) error  { return nil }
func (readOnly) SetWriteDeadline(t time.Time) error { return nil }

// sealRecords seals each of frames as a record of its own.
func sealRecords(t testing.TB, d *recordDir, frames ...[]byte) [][]byte {
	t.Helper()
	var recs [][]byte
	for _, f := range frames {
		r, err := d.seal(nil, f)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	return recs
}

// TestRecordRefused (issue 14): a tampered (body, tag or length),
// reordered, replayed, dropped or misframed record ends the read with
// ErrRecord (a protocol error), and no frame of it comes out; a
// truncated one never opens.
func TestRecordRefused(t *testing.T) {
	frames := [][]byte{
		appendFrame(nil, framePing, []byte("first")),
		appendFrame(nil, framePing, []byte("second")),
		appendFrame(nil, framePing, []byte("third")),
	}
	cases := []struct {
		name string
		mod  func(recs [][]byte) []byte
	}{
		{"tampered body", func(r [][]byte) []byte { r[1][recordHeader+1] ^= 1; return bytes.Join(r, nil) }},
		{"tampered tag", func(r [][]byte) []byte { r[1][len(r[1])-1] ^= 0x80; return bytes.Join(r, nil) }},
		{"length changed", func(r [][]byte) []byte {
			r[1][1]-- // one byte shorter: the record's last byte starts the next
			return bytes.Join(r, nil)
		}},
		{"reordered", func(r [][]byte) []byte { return bytes.Join([][]byte{r[0], r[2], r[1]}, nil) }},
		{"replayed", func(r [][]byte) []byte { return bytes.Join([][]byte{r[0], r[0], r[1]}, nil) }},
		{"dropped", func(r [][]byte) []byte { return bytes.Join([][]byte{r[0], r[2]}, nil) }},
		{"too short", func(r [][]byte) []byte { return append(bytes.Clone(r[0]), 0, recordTag-1) }},
		{"too long", func(r [][]byte) []byte { return append(bytes.Clone(r[0]), 0xff, 0xff) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, server := range []bool{true, false} {
				seal, open := recordPair(t, 3)
				b := tc.mod(sealRecords(t, seal, frames...))
				var got []string
				var err error
				if server {
					var f frameReader
					r := bytes.NewReader(b)
					for {
						var body []byte
						if _, body, err = f.nextRecord(r, open); err != nil {
							break
						}
						got = append(got, string(body))
					}
				} else {
					c := newRecordConn(readOnly{bytes.NewReader(b)}, open, nil)
					for {
						var body []byte
						if _, body, _, err = readFrame(c, nil); err != nil {
							break
						}
						got = append(got, string(body))
						// The error is sticky.
					}
					if _, err2 := c.Read(make([]byte, 1)); !errors.Is(err2, ErrRecord) && errors.Is(err, ErrRecord) {
						t.Fatalf("node: a read after the bad record: %v, want ErrRecord", err2)
					}
				}
				if !errors.Is(err, ErrRecord) || !errors.Is(err, ErrProtocol) {
					t.Fatalf("server %v: got %v, want ErrRecord (a protocol error)", server, err)
				}
				if len(got) > 1 || len(got) == 1 && got[0] != "first" {
					t.Fatalf("server %v: frames %q came out, want at most the first", server, got)
				}
			}
		})
	}
	// A record cut short: the server waits for the rest (EOF ends it),
	// the node's reader says it is truncated; nothing of it comes out.
	seal, open := recordPair(t, 4)
	rec := sealRecords(t, seal, frames[0])[0]
	var f frameReader
	if _, _, err := f.nextRecord(bytes.NewReader(rec[:len(rec)-1]), open); err != io.EOF {
		t.Fatalf("server, truncated record: %v, want EOF", err)
	}
	_, open = recordPair(t, 4)
	c := newRecordConn(readOnly{bytes.NewReader(rec[:len(rec)-1])}, open, nil)
	if _, err := c.Read(make([]byte, 100)); !errors.Is(err, ErrRecord) {
		t.Fatalf("node, truncated record: %v, want ErrRecord", err)
	}
}

// TestRecordRekey: both sides move to the next key at the same record;
// the keys differ from the first, and a record sealed under the old key
// after the move does not open.
func TestRecordRekey(t *testing.T) {
	setRekey(t, 4)
	seal, open := recordPair(t, 5)
	first := seal.secret
	for i := range 9 {
		rec := sealRecords(t, seal, []byte{byte(i)})[0]
		p, err := open.open(rec)
		if err != nil || !bytes.Equal(p, []byte{byte(i)}) {
			t.Fatalf("record %d: %q, %v", i, p, err)
		}
	}
	if seal.secret == first || seal.secret != open.secret {
		t.Fatal("no common rekey after 8 records")
	}
	// An old-key sealer at the same counter: refused.
	stale, _ := recordPair(t, 5)
	stale.seq = seal.seq
	saved := recordRekeyEvery.Swap(1 << 62) // stale keeps its first key
	rec := sealRecords(t, stale, []byte("old key"))[0]
	recordRekeyEvery.Store(saved)
	if _, err := open.open(rec); !errors.Is(err, ErrRecord) {
		t.Fatalf("a record under the old key: %v, want ErrRecord", err)
	}
}

// TestRecordConn: the node's record connection is a net.Conn
// (x/net/nettest).
func TestRecordConn(t *testing.T) {
	setRekey(t, 3)
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		p1, p2, err := tcpPair() // deadlines, buffers
		if err != nil {
			return nil, nil, nil, err
		}
		s12, o12 := recordPair(t, 6)
		s21, o21 := recordPair(t, 7)
		c1, c2 = newRecordConn(p1, o21, s12), newRecordConn(p2, o12, s21)
		return c1, c2, func() { c1.Close(); c2.Close() }, nil
	})
}

// tcpPair is the two ends of a loopback TCP connection.
func tcpPair() (net.Conn, net.Conn, error) {
	ln, err := nettest.NewLocalListener("tcp")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	c2 := <-ch
	if c2 == nil {
		c1.Close()
		return nil, nil, errors.New("accept failed")
	}
	return c1, c2, nil
}

// keepsTLS: the link still holds its TLS connection.
func (c *tlsConn) keepsTLS() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.tc != nil
}

// lyingConn writes everything to wire but reports the first write as
// failed with nothing written (as a WebSocket's netConn reports a frame
// that failed half sent).
type lyingConn struct {
	readOnly
	wire   bytes.Buffer
	writes int
}

var errLying = errors.New("write failed after sending")

func (c *lyingConn) Write(p []byte) (int, error) {
	c.wire.Write(p)
	c.writes++
	if c.writes == 1 {
		return 0, errLying
	}
	return len(p), nil
}

// TestRecordConnNoCounterReuse (review of issue 14): a write that failed
// reporting nothing written, not for its deadline, spends its counters
// for good: the writes after it fail, and no record counter seals two
// plaintexts on the wire (every record on it opens in order).
func TestRecordConnNoCounterReuse(t *testing.T) {
	seal, open := recordPair(t, 9)
	lc := &lyingConn{}
	c := newRecordConn(lc, nil, seal)
	if _, err := c.Write([]byte("first plaintext")); !errors.Is(err, errLying) {
		t.Fatalf("first write: %v, want errLying", err)
	}
	if _, err := c.Write([]byte("other plaintext")); !errors.Is(err, errLying) {
		t.Fatalf("write after a failed one: %v, want its error again", err)
	}
	wire := lc.wire.Bytes()
	for len(wire) > 0 {
		n, err := recordLen(wire)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := open.open(wire[:n]); err != nil {
			t.Fatalf("record %d on the wire does not open in order: a counter sealed twice", open.seq)
		}
		wire = wire[n:]
	}
}
