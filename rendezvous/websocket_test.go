package rendezvous

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// TestHTTPAnswers: a TCP port's HTTPS side answers what is not a
// WebSocket upgrade once and closes the connection: 404 for another path,
// 405 for another method on a WebSocket path, 400 for a request that is
// no upgrade, 403 for a browser page from elsewhere, 431 for a request whose
// headers exceed maxRequestBytes; and it asks a WebSocket client for no
// certificate.
func TestHTTPAnswers(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	dial := func() *tls.Conn {
		tc, err := tls.Dial("tcp", rs.TCPAddr().String(), &tls.Config{
			InsecureSkipVerify: true, NextProtos: []string{alpnHTTP},
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				t.Error("the server asked a WebSocket client for a certificate")
				return &tls.Certificate{}, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tc.Close() })
		return tc
	}
	for _, c := range []struct {
		name, req string
		want      int
	}{
		{"other path", "GET /x HTTP/1.1\r\nHost: x\r\n\r\n", 404},
		{"other method", "POST " + PathRelay + " HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 405},
		{"not an upgrade", "GET " + PathSignal + " HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"other origin", "GET " + PathSignal + " HTTP/1.1\r\nHost: x\r\nOrigin: https://elsewhere.example\r\n\r\n", 403},
		{"huge headers", "GET " + PathRelay + " HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", maxRequestBytes) + "\r\n\r\n", 431},
	} {
		t.Run(c.name, func(t *testing.T) {
			tc := dial()
			go io.WriteString(tc, c.req)
			code, err := readResponse(tc)
			if err != nil || code != c.want {
				t.Fatalf("answer %d, %v; want %d", code, err, c.want)
			}
			tc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, tc); err != nil {
				t.Errorf("the connection stayed open after its answer: %v", err)
			}
		})
	}
}

// TestWebSocketPipelined: bytes a client sends right behind its upgrade
// request, before the 101, are the tunnel's first bytes and not lost (the
// request's reader hands them to the WebSocket): a ping sent so is
// answered with its pong. Over TLS 1.3 the server takes the outer TLS
// over (tlstake) and the request, sent at once behind the client's
// Finished, is not lost either; over TLS 1.2 crypto/tls keeps it.
func TestWebSocketPipelined(t *testing.T) {
	// A certificate standing in for a public one (ServerConfig.Certificate:
	// served to clients without reach's ALPNs, TLS 1.2 allowed).
	public, err := mustKey(t).Certificate()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name       string
		cert       *tls.Certificate
		version    uint16
		kept, want uint64
	}{
		{"tls13-taken", nil, tls.VersionTLS13, 0, 1},
		{"tls13-public-cert-taken", &public, tls.VersionTLS13, 0, 1},
		{"tls12-public-cert-kept", &public, tls.VersionTLS12, 1, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			rs := startTestServer(t, ServerConfig{Certificate: c.cert})
			testWebSocketPipelined(t, rs.TCPAddr().String(), c.version)
			if st := rs.Stats(); st.TLSTaken != c.want-c.kept || st.TLSKept != c.kept {
				t.Fatalf("stats: %d TLS connections taken over, %d kept by crypto/tls; want %d, %d", st.TLSTaken, st.TLSKept, c.want-c.kept, c.kept)
			}
		})
	}
}

func testWebSocketPipelined(t *testing.T, addr string, version uint16) {
	tc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpnHTTP}, MaxVersion: version})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	var b bytes.Buffer
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", PathRelay)
	// A masked ping (RFC 6455 §5.5.2) with the payload "reach".
	payload, mask := []byte("reach"), []byte{1, 2, 3, 4}
	b.Write([]byte{0x89, 0x80 | byte(len(payload))})
	b.Write(mask)
	for i, c := range payload {
		b.WriteByte(c ^ mask[i%4])
	}
	if _, err := tc.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(tc)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 101") {
		t.Fatalf("status %q, %v", line, err)
	}
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if l == "\r\n" {
			break
		}
	}
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(r, hdr); err != nil {
		t.Fatalf("no pong: %v", err)
	}
	if hdr[0] != 0x8a || int(hdr[1]) != len(payload) {
		t.Fatalf("frame header % x, want a pong of %d bytes", hdr, len(payload))
	}
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("pong %q, %v", got, err)
	}
}
