package stream

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"testing"
	"time"
)

// testTLSConfigs returns a server and a client TLS config for a throwaway
// self-signed certificate (the client does not verify it).
func testTLSConfigs(t *testing.T) (srv, cli *tls.Config) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
}

// TestCloseWhileFrameBlocked: the peer stops reading, so the send loop
// blocks writing a data frame's batch; closing the connection (what
// yamux's Session.Close does) must break that write at once, as it does
// for a plain tls.Conn whose Write is blocked, not wait for the
// close_notify's 5 s deadline.
func TestCloseWhileFrameBlocked(t *testing.T) {
	srvConf, cliConf := testTLSConfigs(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.(*net.TCPConn).SetReadBuffer(4 << 10)
		tc := tls.Server(c, srvConf)
		tc.Handshake() // then never reads again
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw.(*net.TCPConn).SetWriteBuffer(4 << 10)
	bc := &batchConn{Conn: raw}
	tc := tls.Client(bc, cliConf)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	defer peer.Close()
	fc := &frameConn{Conn: tc, batch: bc}

	progress := make(chan struct{}, 1)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		body := make([]byte, 64<<10) // under maxBatch: one flush, in end()
		for {
			if _, err := fc.Write(yamuxHeader(0, uint32(len(body)))); err != nil {
				return
			}
			if _, err := fc.Write(body); err != nil {
				return
			}
			select {
			case progress <- struct{}{}:
			default:
			}
		}
	}()
	// Wait until the writer is stuck (no frame done for 300 ms).
	for stuck := false; !stuck; {
		select {
		case <-progress:
		case <-time.After(300 * time.Millisecond):
			stuck = true
		}
	}
	start := time.Now()
	closed := make(chan struct{})
	go func() { fc.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return within 10 s")
	}
	<-writerDone
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v with the send loop blocked in a frame's write (want at once, as a blocked tls.Conn.Write allows)", d.Round(time.Millisecond))
	} else {
		t.Logf("Close took %v", d.Round(time.Microsecond))
	}
}
