package tlstake

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testCert is a self-signed certificate for "tlstake.test".
func testCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"tlstake.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// pair is a crypto/tls client and the server's end of the same
// connection, taken over (or not: srvTLS then).
type pair struct {
	cli     *tls.Conn
	cliRaw  net.Conn // the client's TCP connection (to send raw bytes)
	srv     *Conn
	srvTLS  *tls.Conn
	takeErr error
}

// dial makes a pair over loopback TCP; clientCfg adjusts the client's
// config, afterHS runs on the client right after its handshake (before
// the server takes over: what a client sends at once).
func dial(t *testing.T, clientCfg func(*tls.Config), afterHS func(*tls.Conn)) *pair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cert := testCert(t)
	base := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	type res struct {
		p   pair
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- res{err: err}
			return
		}
		b := NewBounded(c)
		tc := tls.Server(b, b.Config(base))
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			c.Close()
			ch <- res{err: err}
			return
		}
		tc.SetDeadline(time.Time{})
		var r res
		r.p.srv, r.p.takeErr = Take(tc, b)
		if r.p.takeErr != nil {
			r.p.srvTLS = tc
		}
		ch <- r
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc := &tls.Config{ServerName: "tlstake.test", InsecureSkipVerify: true}
	if clientCfg != nil {
		clientCfg(cc)
	}
	cli := tls.Client(raw, cc)
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if afterHS != nil {
		afterHS(cli)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	p := r.p
	p.cli, p.cliRaw = cli, raw
	t.Cleanup(func() {
		cli.Close()
		if p.srv != nil {
			p.srv.Close()
		}
		if p.srvTLS != nil {
			p.srvTLS.Close()
		}
	})
	return &p
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// echo has the server echo what it reads until EOF.
func echo(c net.Conn) chan error {
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, c)
		done <- err
	}()
	return done
}

// roundTrip writes b from the client and reads it back.
func roundTrip(t *testing.T, cli net.Conn, b []byte) {
	t.Helper()
	werr := make(chan error, 1)
	go func() { _, err := cli.Write(b); werr <- err }()
	got := make([]byte, len(b))
	cli.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(cli, got); err != nil {
		t.Fatalf("read back %d bytes: %v", len(b), err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, b) {
		t.Fatalf("%d bytes came back changed", len(b))
	}
}

// A crypto/tls client and a taken-over server move data both ways
// intact, in every size from one byte to several records a write.
func TestTakeEcho(t *testing.T) {
	p := dial(t, nil, nil)
	if p.takeErr != nil {
		t.Fatal(p.takeErr)
	}
	done := echo(p.srv)
	for _, n := range []int{1, 100, maxPlaintext - 1, maxPlaintext, maxPlaintext + 1, 64 << 10, 300 << 10} {
		roundTrip(t, p.cli, randBytes(n))
	}
	p.cli.CloseWrite() // close_notify: the server reads EOF
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("echo ended with %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server did not see close_notify")
	}
}

// What the client sends right behind its Finished (the WebSocket request,
// in one flight with it) is not lost in crypto/tls's buffer.
func TestTakeNoOverRead(t *testing.T) {
	for i := range 20 {
		first := randBytes(700 + i)
		p := dial(t, nil, func(c *tls.Conn) { c.Write(first) })
		if p.takeErr != nil {
			t.Fatal(p.takeErr)
		}
		got := make([]byte, len(first))
		p.srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(p.srv, got); err != nil || !bytes.Equal(got, first) {
			t.Fatalf("dial %d: the first bytes: %v (equal %v)", i, err, bytes.Equal(got, first))
		}
	}
}

// TLS 1.2 is not taken over: the error is named and the *tls.Conn goes on.
func TestTakeRefusesTLS12(t *testing.T) {
	p := dial(t, func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }, nil)
	if !errors.Is(p.takeErr, ErrCannotTake) {
		t.Fatalf("Take: %v, want ErrCannotTake", p.takeErr)
	}
	echo(p.srvTLS)
	roundTrip(t, p.cli, randBytes(50<<10))
}

// The server's KeyUpdates (every few records here) and the client's
// answers to one that asks for it: data intact across every key change.
func TestTakeKeyUpdate(t *testing.T) {
	old := rekeyEvery.Load()
	rekeyEvery.Store(3)
	defer rekeyEvery.Store(old)
	p := dial(t, nil, nil)
	if p.takeErr != nil {
		t.Fatal(p.takeErr)
	}
	done := echo(p.srv)
	for i := range 10 {
		if i%3 == 0 {
			// Ask the client for its KeyUpdate: crypto/tls answers at once,
			// and the server's reads must follow it.
			p.srv.wmu.Lock()
			rec, err := p.srv.out.seal(nil, typeHandshake, []byte{24, 0, 0, 1, 1})
			if err == nil {
				err = p.srv.out.update()
			}
			if err == nil {
				_, err = p.srv.raw.Write(rec)
			}
			p.srv.wmu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
		}
		roundTrip(t, p.cli, randBytes(40<<10+i))
	}
	p.cli.CloseWrite()
	<-done
	if p.srv.in.seq > 8 {
		t.Fatalf("the server's read counter is %d: the client's KeyUpdates were not followed", p.srv.in.seq)
	}
}

// A read that times out loses nothing, in a header or in a record.
func TestTakeReadResumes(t *testing.T) {
	p := dial(t, nil, nil)
	if p.takeErr != nil {
		t.Fatal(p.takeErr)
	}
	// Capture the client's records by writing through a pipe... simpler:
	// the client writes, the raw bytes trickle because the server reads
	// with deadlines that keep passing.
	want := randBytes(3*maxPlaintext + 77)
	go p.cli.Write(want)
	var got []byte
	buf := make([]byte, 1000)
	for len(got) < len(want) {
		p.srv.SetReadDeadline(time.Now().Add(50 * time.Microsecond))
		n, err := p.srv.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes changed across timeouts")
	}
}

// Idle drops the AEADs and the read buffer; the connection then carries
// data both ways again.
func TestTakeIdle(t *testing.T) {
	p := dial(t, nil, nil)
	if p.takeErr != nil {
		t.Fatal(p.takeErr)
	}
	done := echo(p.srv)
	roundTrip(t, p.cli, randBytes(20<<10))
	for range 3 {
		time.Sleep(20 * time.Millisecond) // the echo's read is blocked: Idle skips its direction
		p.srv.Idle()
		roundTrip(t, p.cli, randBytes(5<<10))
	}
	p.cli.CloseWrite()
	<-done
	p.srv.Idle()
	if p.srv.in.aead != nil || p.srv.out.aead != nil || p.srv.rbuf != nil {
		t.Fatalf("idle: in %v out %v rbuf %v, want all dropped", p.srv.in.aead != nil, p.srv.out.aead != nil, p.srv.rbuf != nil)
	}
}

// Bad records after the handshake end the connection with ErrRecord and
// an alert the client reads; a plaintext record, an oversize one, a
// forged one.
func TestTakeBadRecords(t *testing.T) {
	for _, tc := range []struct {
		name, alert string
		rec         []byte
	}{
		{"forged", "bad record MAC", append([]byte{23, 3, 3, 0, 40}, randBytes(40)...)},
		{"plaintext alert", "unexpected message", []byte{21, 3, 3, 0, 2, 1, 0}},
		{"oversize", "record overflow", append([]byte{23, 3, 3, 0x41, 0x01}, randBytes(100)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := dial(t, nil, nil)
			if p.takeErr != nil {
				t.Fatal(p.takeErr)
			}
			p.cliRaw.Write(tc.rec)
			p.srv.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := p.srv.Read(make([]byte, 10))
			if !errors.Is(err, ErrRecord) {
				t.Fatalf("read: %v, want ErrRecord", err)
			}
			if _, err2 := p.srv.Read(make([]byte, 10)); !errors.Is(err2, ErrRecord) {
				t.Fatalf("second read: %v, want the same error", err2)
			}
			p.cli.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = p.cli.Read(make([]byte, 10))
			if err == nil || !strings.Contains(err.Error(), tc.alert) {
				t.Fatalf("client read: %v, want the alert %q", err, tc.alert)
			}
		})
	}
}

// Closing the server sends close_notify: the client reads EOF.
func TestTakeCloseNotify(t *testing.T) {
	p := dial(t, nil, nil)
	if p.takeErr != nil {
		t.Fatal(p.takeErr)
	}
	p.srv.Write([]byte("bye"))
	p.srv.Close()
	p.cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(p.cli)
	if err != nil || string(b) != "bye" {
		t.Fatalf("client read %q, %v; want \"bye\" and EOF", b, err)
	}
}
