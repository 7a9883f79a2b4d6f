package tlstake

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
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
