package tlstake

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// forge returns a sealer for the client's direction at its first record:
// the test then writes the client's records itself, on p.cliRaw (the
// crypto/tls client must write nothing after).
func forge(t *testing.T, p *pair) *dir {
	t.Helper()
	if p.takeErr != nil {
		t.Fatal(p.takeErr)
	}
	p.srv.rmu.Lock()
	d := p.srv.in
	p.srv.rmu.Unlock()
	if d.seq != 0 {
		t.Fatal("the server read already")
	}
	return &d
}

// records seals each content as one record of typ.
func records(t *testing.T, d *dir, typ byte, contents ...[]byte) []byte {
	t.Helper()
	var w []byte
	for _, c := range contents {
		var err error
		if w, err = d.seal(w, typ, c); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// sealPadded seals content as one record of typ with pad zeros of
// padding (dir.seal sends none).
func sealPadded(d *dir, w []byte, typ byte, content []byte, pad int) ([]byte, error) {
	if err := d.step(); err != nil {
		return w, err
	}
	inner := append(append(bytes.Clone(content), typ), make([]byte, pad)...)
	n := len(inner) + d.aead.Overhead()
	hdr := []byte{typeAppData, 3, 3, byte(n >> 8), byte(n)}
	w = append(w, hdr...)
	return d.aead.Seal(w, d.nonce[:], inner, hdr), nil
}

// readErr reads from the server until an error.
func readErr(t *testing.T, c *Conn) ([]byte, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return got, err
		}
	}
}

// clientAlert is the error the crypto/tls client reads once the server
// sent an alert.
func clientAlert(t *testing.T, p *pair) error {
	t.Helper()
	p.cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.ReadAll(p.cli)
	return err
}

// A record whose TLSInnerPlaintext (its padding included) is longer than
// 2^14+1 bytes (RFC 8446 §5.4) ends the connection with record_overflow,
// as crypto/tls does; one at the limit is data.
func TestTakeInnerPlaintextLimit(t *testing.T) {
	for _, pad := range []int{0, 1} {
		t.Run(fmt.Sprintf("padding %d", pad), func(t *testing.T) {
			p := dial(t, nil, nil)
			d := forge(t, p)
			content := randBytes(maxPlaintext)
			rec, err := sealPadded(d, nil, typeAppData, content, pad)
			if err != nil {
				t.Fatal(err)
			}
			p.cliRaw.Write(rec)
			p.cliRaw.(*net.TCPConn).CloseWrite()
			got, err := readErr(t, p.srv)
			if pad == 0 {
				if err != io.EOF || !bytes.Equal(got, content) {
					t.Fatalf("read %d bytes, %v; want the record's %d and EOF", len(got), err, len(content))
				}
				return
			}
			if !errors.Is(err, ErrRecord) || len(got) != 0 {
				t.Fatalf("read %d bytes, %v; want none and ErrRecord", len(got), err)
			}
			if err := clientAlert(t, p); err == nil || !strings.Contains(err.Error(), "record overflow") {
				t.Fatalf("client: %v, want the alert record_overflow", err)
			}
		})
	}
}

// A peer sending records without data (empty ones, user_canceled,
// KeyUpdates) gets maxUselessRecords of them in a row, then
// unexpected_message; data in between resets the count.
func TestTakeUselessRecordFlood(t *testing.T) {
	keyUpdates := func(d *dir, n int) []byte {
		var w []byte
		for range n {
			w = append(w, records(t, d, typeHandshake, keyUpdateMsg)...)
			if err := d.update(); err != nil {
				t.Fatal(err)
			}
		}
		return w
	}
	empties := func(d *dir, n int) []byte { return records(t, d, typeAppData, make([][]byte, n)...) }
	for _, tc := range []struct {
		name  string
		flood func(d *dir, n int) []byte
	}{{"empty records", empties}, {"key updates", keyUpdates}, {"user_canceled", func(d *dir, n int) []byte {
		return records(t, d, typeAlert, slices.Repeat([][]byte{{1, 90}}, n)...)
	}}} {
		t.Run(tc.name, func(t *testing.T) {
			// At the limit, twice, with data between: all of it read.
			p := dial(t, nil, nil)
			d := forge(t, p)
			w := tc.flood(d, maxUselessRecords)
			w = append(w, records(t, d, typeAppData, []byte("a"))...)
			w = append(w, tc.flood(d, maxUselessRecords)...)
			w = append(w, records(t, d, typeAppData, []byte("b"))...)
			w = append(w, records(t, d, typeAlert, []byte{1, 0})...)
			p.cliRaw.Write(w)
			if got, err := readErr(t, p.srv); err != io.EOF || string(got) != "ab" {
				t.Fatalf("at the limit: read %q, %v; want \"ab\" and EOF", got, err)
			}
			// One more: refused.
			p = dial(t, nil, nil)
			d = forge(t, p)
			w = append(tc.flood(d, maxUselessRecords+1), records(t, d, typeAppData, []byte("a"))...)
			p.cliRaw.Write(w)
			if got, err := readErr(t, p.srv); !errors.Is(err, ErrRecord) || len(got) != 0 {
				t.Fatalf("over the limit: read %q, %v; want nothing and ErrRecord", got, err)
			}
			if err := clientAlert(t, p); err == nil || !strings.Contains(err.Error(), "unexpected message") {
				t.Fatalf("client: %v, want the alert unexpected_message", err)
			}
		})
	}
}

// A reader blocked on a quiet connection holds no read buffer (64 KB
// from the pool): a signalling session over a WebSocket waits so.
func TestTakeBlockedReadHoldsNoBuffer(t *testing.T) {
	const n = 200
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	conns := make([]*Conn, n)
	peers := make([]net.Conn, n)
	var wg sync.WaitGroup
	for i := range conns {
		a, b := net.Pipe()
		c := &Conn{raw: a}
		if err := c.in.init(suiteAES128, randBytes(32)); err != nil {
			t.Fatal(err)
		}
		if err := c.out.init(suiteAES128, randBytes(32)); err != nil {
			t.Fatal(err)
		}
		conns[i], peers[i] = c, b
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Read(make([]byte, 1))
		}()
	}
	time.Sleep(100 * time.Millisecond) // every reader blocked
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	per := (int64(ms1.HeapAlloc) - int64(ms0.HeapAlloc)) / n
	for i := range conns {
		peers[i].Close()
		conns[i].Close()
	}
	wg.Wait()
	t.Logf("%d bytes of heap per blocked reader", per)
	if per > 8<<10 {
		t.Fatalf("%d bytes of heap per blocked reader, want no read buffer (< 8 KB)", per)
	}
}

// After close_notify nothing is read, not even a valid record behind
// it: EOF, again EOF, and the buffer is given back.
func TestTakeCloseNotifyThenData(t *testing.T) {
	p := dial(t, nil, nil)
	d := forge(t, p)
	w := records(t, d, typeAppData, []byte("before"))
	w = append(w, records(t, d, typeAlert, []byte{1, 0})...)
	w = append(w, records(t, d, typeAppData, []byte("after"))...)
	p.cliRaw.Write(w)
	got, err := readErr(t, p.srv)
	if err != io.EOF || string(got) != "before" {
		t.Fatalf("read %q, %v; want \"before\" and EOF", got, err)
	}
	time.Sleep(50 * time.Millisecond) // nothing more arrives: a read would not block
	if n, err := p.srv.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("read after close_notify: %d, %v; want EOF", n, err)
	}
	if p.srv.rbuf != nil {
		t.Fatal("the read buffer is held after close_notify")
	}
}

// A write that times out having written nothing (its KeyUpdate and
// records sealed, none sent), then succeeds: the crypto/tls client reads
// every byte, across the server's KeyUpdates. No nonce was used twice on
// the wire: the client would fail to open the second record otherwise.
func TestTakeWriteTimeoutThenWrite(t *testing.T) {
	old := rekeyEvery.Load()
	rekeyEvery.Store(2)
	defer rekeyEvery.Store(old)
	p := dial(t, nil, nil)
	if p.takeErr != nil {
		t.Fatal(p.takeErr)
	}
	var want []byte
	for i := range 6 {
		if i%2 == 0 {
			p.srv.keyUpdate.Store(true) // as if the client asked for one
		}
		lost := randBytes(3*maxPlaintext + i)
		p.srv.SetWriteDeadline(time.Now().Add(-time.Second))
		if n, err := p.srv.Write(lost); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write past its deadline: %d, %v", n, err)
		}
		p.srv.SetWriteDeadline(time.Time{})
		b := randBytes(2*maxPlaintext + 100*i)
		if n, err := p.srv.Write(b); n != len(b) || err != nil {
			t.Fatalf("write: %d, %v", n, err)
		}
		want = append(want, b...)
	}
	p.srv.Close()
	p.cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(p.cli)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("client read %d bytes (%v), want the %d written", len(got), err, len(want))
	}
}

// A write cut by its deadline part way (the client not reading) returns
// len(b) and the timeout; the next write sends the rest first: the
// client reads every byte in order.
func TestTakeWritePartialThenWrite(t *testing.T) {
	p := dial(t, nil, nil)
	if p.takeErr != nil {
		t.Fatal(p.takeErr)
	}
	var want []byte
	partial := false
	for i := 0; i < 200 && !partial; i++ {
		b := randBytes(60 << 10)
		p.srv.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
		n, err := p.srv.Write(b)
		switch {
		case err == nil:
			want = append(want, b...)
		case errors.Is(err, os.ErrDeadlineExceeded) && n == len(b):
			want, partial = append(want, b...), true
		case errors.Is(err, os.ErrDeadlineExceeded) && n == 0:
			// nothing went: b is not the client's
		default:
			t.Fatalf("write: %d, %v", n, err)
		}
	}
	if !partial {
		t.Skip("no write was cut part way (socket buffers too large?)")
	}
	got := make(chan []byte, 1)
	go func() {
		p.cli.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(p.cli)
		got <- b
	}()
	p.srv.SetWriteDeadline(time.Now().Add(10 * time.Second))
	last := randBytes(1000)
	if n, err := p.srv.Write(last); n != len(last) || err != nil {
		t.Fatalf("write after the cut one: %d, %v", n, err)
	}
	want = append(want, last...)
	p.srv.Close()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("client read %d bytes, want the %d written", len(b), len(want))
	}
}

// Writers on several goroutines, Idle and the client's KeyUpdate
// requests between them: each write arrives whole (one piece of the
// stream), every one of them, and the client follows every KeyUpdate.
func TestTakeConcurrentWriters(t *testing.T) {
	old := rekeyEvery.Load()
	rekeyEvery.Store(5)
	defer rekeyEvery.Store(old)
	p := dial(t, nil, nil)
	d := forge(t, p)
	const writers, each = 4, 25
	// Each write starts with its writer and index, and its length depends
	// on them: the client splits the stream back.
	msg := func(w, i int) []byte {
		b := bytes.Repeat([]byte{byte(w*each + i)}, 4+(w*7919+i*104729)%(3*maxPlaintext))
		b[0], b[1] = byte(w), byte(i)
		return b
	}
	// The client's KeyUpdate(update_requested) records, read by a reader.
	reads := make(chan error, 1)
	go func() {
		_, err := readErr(t, p.srv)
		reads <- err
	}()
	stop := make(chan struct{})
	ups := 0 // KeyUpdates asked of the server
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			p.srv.Idle()
			w := records(t, d, typeHandshake, []byte{24, 0, 0, 1, 1})
			d.update()
			// A byte of data after each: KeyUpdates alone would reach
			// maxUselessRecords.
			p.cliRaw.Write(append(w, records(t, d, typeAppData, []byte{1})...))
			ups++
			time.Sleep(200 * time.Microsecond)
		}
	}()
	var ww sync.WaitGroup
	for w := range writers {
		ww.Add(1)
		go func() {
			defer ww.Done()
			for i := range each {
				if _, err := p.srv.Write(msg(w, i)); err != nil {
					t.Error(err)
					return
				}
				time.Sleep(500 * time.Microsecond) // KeyUpdates come between writes

			}
		}()
	}
	// The client reads while the writers write.
	type res struct {
		b   []byte
		err error
	}
	got := make(chan res, 1)
	go func() {
		p.cli.SetReadDeadline(time.Now().Add(20 * time.Second))
		var all []byte
		buf := make([]byte, 64<<10)
		for len(all) < total(writers, each, msg) {
			n, err := p.cli.Read(buf)
			all = append(all, buf[:n]...)
			if err != nil {
				got <- res{all, err}
				return
			}
		}
		got <- res{all, nil}
	}()
	ww.Wait()
	close(stop)
	wg.Wait()
	if t.Logf("%d KeyUpdates asked for during the writes", ups); ups < 2 {
		t.Fatal("the writes ended before the client asked for KeyUpdates")
	}
	r := <-got
	if r.err != nil {
		t.Fatalf("client read %d bytes: %v", len(r.b), r.err)
	}
	seen := map[[2]byte]bool{}
	for b := r.b; len(b) > 0; {
		w, i := int(b[0]), int(b[1])
		m := msg(w, i)
		if len(b) < len(m) || !bytes.Equal(b[:len(m)], m) {
			t.Fatalf("write %d/%d did not arrive whole", w, i)
		}
		seen[[2]byte{b[0], b[1]}] = true
		b = b[len(m):]
	}
	if len(seen) != writers*each {
		t.Fatalf("%d writes arrived, want %d", len(seen), writers*each)
	}
	p.srv.Close()
	if err := <-reads; errors.Is(err, ErrRecord) {
		t.Fatalf("the server's reader: %v", err)
	}
}

func total(writers, each int, msg func(w, i int) []byte) int {
	n := 0
	for w := range writers {
		for i := range each {
			n += len(msg(w, i))
		}
	}
	return n
}

// Records the server must refuse after the handshake, each with its
// alert: a record under the old key after a KeyUpdate, a KeyUpdate with
// more behind it in its record (§5.1: no message spans a key change), a
// message split around a data record, a KeyUpdate asking 2, a message
// that is not KeyUpdate, an alert of 3 bytes, a change_cipher_spec.
func TestTakeRefusedRecords(t *testing.T) {
	for _, tc := range []struct {
		name, alert string
		recs        func(d *dir) []byte
	}{
		{"old key after KeyUpdate", "bad record MAC", func(d *dir) []byte {
			w := records(t, d, typeHandshake, keyUpdateMsg)
			return append(w, records(t, d, typeAppData, []byte("old key"))...) // no update()
		}},
		{"KeyUpdate and more in its record", "unexpected message", func(d *dir) []byte {
			return records(t, d, typeHandshake, []byte{24, 0, 0, 1, 0, 24})
		}},
		{"split around data", "unexpected message", func(d *dir) []byte {
			return records(t, d, typeHandshake, []byte{24, 0}) // then data
		}},
		{"KeyUpdate request 2", "illegal parameter", func(d *dir) []byte {
			return records(t, d, typeHandshake, []byte{24, 0, 0, 1, 2})
		}},
		{"NewSessionTicket from the client", "unexpected message", func(d *dir) []byte {
			return records(t, d, typeHandshake, []byte{4, 0, 0, 1})
		}},
		{"long alert", "error decoding message", func(d *dir) []byte {
			return records(t, d, typeAlert, []byte{2, 40, 0})
		}},
		{"change_cipher_spec", "unexpected message", func(d *dir) []byte {
			return []byte{20, 3, 3, 0, 1, 1}
		}},
		{"only padding", "unexpected message", func(d *dir) []byte {
			w, _ := sealPadded(d, nil, 0, nil, 5)
			return w
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := dial(t, nil, nil)
			d := forge(t, p)
			w := tc.recs(d)
			w = append(w, records(t, d, typeAppData, []byte("data"))...)
			p.cliRaw.Write(w)
			got, err := readErr(t, p.srv)
			if !errors.Is(err, ErrRecord) || len(got) != 0 {
				t.Fatalf("read %q, %v; want nothing and ErrRecord", got, err)
			}
			if err := clientAlert(t, p); err == nil || !strings.Contains(err.Error(), tc.alert) {
				t.Fatalf("client: %v, want the alert %q", err, tc.alert)
			}
		})
	}
}

// failingConn takes every write whole and says it failed (a network
// error that is not a timeout), having written nothing.
type failingConn struct{ memConn }

var errFailing = errors.New("failingConn: write failed")

func (f *failingConn) Write(p []byte) (int, error) {
	f.memConn.Write(p)
	return 0, errFailing
}

// A write that fails other than by its deadline, having (it says)
// written nothing, is final: its counters are not given back, so no
// record sealed after it can reuse a nonce of one that went out anyway.
func TestTakeWriteFailureIsFinal(t *testing.T) {
	fc := &failingConn{}
	c := &Conn{raw: fc}
	if err := c.in.init(suiteAES128, unhex(t, rfcClientSecret)); err != nil {
		t.Fatal(err)
	}
	if err := c.out.init(suiteAES128, unhex(t, rfcServerSecret)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("first")); !errors.Is(err, errFailing) {
		t.Fatalf("first write: %v, want its error", err)
	}
	if n, err := c.Write([]byte("second")); n != 0 || !errors.Is(err, errFailing) {
		t.Fatalf("write after a failed one: %d, %v; want the same error", n, err)
	}
	c.Close() // no close_notify either
	k := newRefKeys(t, unhex(t, rfcServerSecret))
	wire := fc.w.Bytes()
	if n := recordHeaderLen + (int(wire[3])<<8 | int(wire[4])); n != len(wire) {
		t.Fatalf("%d bytes on the wire, want the first write's one record (%d)", len(wire), n)
	}
	if p := k.open(wire); !bytes.Equal(p, []byte("first\x17")) {
		t.Fatalf("the record on the wire holds %q", p)
	}
}
