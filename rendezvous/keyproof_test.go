package rendezvous

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// proofProto is a KeyProofProtocol that records the connections it gets.
type proofProto struct{ got chan tls.ConnectionState }

func (proofProto) ServeQUIC(_ context.Context, c *quic.Conn) { c.CloseWithError(0, "") }
func (p proofProto) ServeTLS(_ context.Context, c *tls.Conn) {
	p.got <- c.ConnectionState()
	c.Close()
}
func (proofProto) KeyProofALPNs() []string { return []string{"test-proof/1"} }

// TestKeyProofProtocol (issue 14): a KeyProofProtocol's in-band ALPN is
// offered on the TCP port, asks no client certificate and reaches the
// protocol, with and without a web certificate configured; its own ALPN
// and reach's still require one.
func TestKeyProofProtocol(t *testing.T) {
	web, err := mustKey(t).Certificate()
	if err != nil {
		t.Fatal(err)
	}
	for _, withWeb := range []bool{false, true} {
		p := proofProto{got: make(chan tls.ConnectionState, 1)}
		cfg := ServerConfig{Protocols: map[string]Protocol{"test/1": p}}
		if withWeb {
			cfg.Certificate = &web
		}
		rs := startTestServer(t, cfg)
		addr := rs.ServerAddr().TCPHostPort()
		dial := func(alpn string) (*tls.Conn, error) {
			c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13})
			if err == nil {
				// A refused client certificate shows on the first read.
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, err = c.Read(make([]byte, 1))
				c.Close()
			}
			return c, err
		}
		dial("test-proof/1")
		select {
		case cs := <-p.got:
			if cs.NegotiatedProtocol != "test-proof/1" || len(cs.PeerCertificates) != 0 {
				t.Fatalf("web %v: the protocol got ALPN %q with %d certificates", withWeb, cs.NegotiatedProtocol, len(cs.PeerCertificates))
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("web %v: the in-band ALPN did not reach the protocol", withWeb)
		}
		for _, alpn := range []string{"test/1", ALPN} {
			if _, err := dial(alpn); err == nil {
				t.Fatalf("web %v: %s without a client certificate: served", withWeb, alpn)
			}
		}
		select {
		case cs := <-p.got:
			t.Fatalf("web %v: the protocol got a connection without a certificate under %q", withWeb, cs.NegotiatedProtocol)
		default:
		}
		rs.Close()
	}
}
