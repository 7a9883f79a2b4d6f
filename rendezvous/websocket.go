package rendezvous

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/gobwas/ws"

	"github.com/reachp2p/reach/identity"
)

// WebSocket paths on a server's TLS ports. Both carry, inside one binary
// WebSocket, exactly what a TCP port carries (a TLS 1.3 handshake with
// reach's ALPNs, then that protocol's frames); the path only tells proxies
// and logs what the tunnel is for.
const (
	// PathSignal carries signalling (ALPN reach-rdv/1).
	PathSignal = "/rdv"
	// PathRelay carries a relay link (ALPN reach-relay/1).
	PathRelay = "/relay"
)

// alpnHTTP is what HTTPS clients (WebSocket) negotiate on the TCP ports.
const alpnHTTP = "http/1.1"

// WebSocketDialer opens WebSockets over HTTPS to a reach server's TCP port
// (the connect string's tcp port: 443 when the server has it), for
// networks whose proxies pass only HTTP. The outer TLS accepts the
// server's pinned key certificate or, for a server with a CA certificate
// (ServerConfig.Certificate), one that verifies for its host name; what
// runs inside is authenticated end to end by reach's own pinned TLS.
type WebSocketDialer struct {
	// Key is presented as a client certificate when the server asks for
	// one (a server without a CA certificate does). Nil: none.
	Key *identity.Key
	// DialTCP opens the TCP connection (directly, or through a proxy:
	// proxy.Dialer). Nil: a net.Dialer.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// RootCAs verify a CA certificate of the server. Nil: the system
	// roots.
	RootCAs *x509.CertPool
}

// Dial opens wss://<sa's TCP host:port><path> and returns the WebSocket
// as a net.Conn (binary messages). ctx bounds the setup only.
func (d WebSocketDialer) Dial(ctx context.Context, sa ServerAddr, path string) (net.Conn, error) {
	dial := d.DialTCP
	if dial == nil {
		var nd net.Dialer
		dial = nd.DialContext
	}
	host := sa.TCPHostPort()
	tlsCfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{alpnHTTP},
		// X25519 alone: the outer TLS only carries the tunnel, whose own
		// handshake (post-quantum, pinned) protects what it carries; a
		// ClientHello without the 1.2 KB ML-KEM share leaves the server's
		// outer connection about 2 KB smaller for its whole life (crypto/tls
		// keeps buffers the size of the largest handshake message).
		CurvePreferences:   []tls.CurveID{tls.X25519},
		ServerName:         sa.Host,
		InsecureSkipVerify: true, // replaced by VerifyConnection: the pinned key, or a CA chain
		VerifyConnection: func(cs tls.ConnectionState) error {
			if id, err := identity.PeerIDFromCerts(rawCerts(cs)); err == nil && id == sa.ID {
				return nil
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("rendezvous: websocket: no server certificate")
			}
			opts := x509.VerifyOptions{Roots: d.RootCAs, DNSName: sa.Host, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		},
	}
	if d.Key != nil {
		cert, err := d.Key.Certificate()
		if err != nil {
			return nil, err
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	}
	tr := &http.Transport{
		// Our own TLS: net/http drops NextProtos for upgrade requests,
		// and the server tells HTTPS from reach's protocols by ALPN.
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			raw, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(raw, tlsCfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			return tc, nil
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	wc, resp, err := websocket.Dial(ctx, "wss://"+host+path, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr},
	})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("rendezvous: websocket %s%s: %s: %w", host, path, resp.Status, err)
		}
		return nil, fmt.Errorf("rendezvous: websocket %s%s: %w", host, path, err)
	}
	// The returned conn lives beyond ctx (the Dial contract).
	return websocket.NetConn(context.Background(), wc, websocket.MessageBinary), nil
}

func rawCerts(cs tls.ConnectionState) [][]byte {
	out := make([][]byte, len(cs.PeerCertificates))
	for i, c := range cs.PeerCertificates {
		out[i] = c.Raw
	}
	return out
}

// maxRequestBytes bounds an HTTPS request's line and headers on the TCP
// ports: a WebSocket upgrade is a few hundred bytes, proxies add some.
const maxRequestBytes = 16 << 10

// wsBufSize is the buffer a WebSocket link keeps each way beside its
// outer TLS connection (frame headers; payloads larger than it bypass
// it). net/http's were 4 KB each, for a connection's whole life.
const wsBufSize = 1 << 10

// serveHTTP serves one TLS connection that negotiated http/1.1 on a TCP
// port: a WebSocket upgrade (GET) on PathSignal or PathRelay, whose
// stream is then served like a TCP port's connection; anything else gets
// one answer (404, 405) and the connection closes. The request must
// arrive within the handshake timeout. It returns when the connection is
// done or ctx ends.
//
// The connection carries one request, so it needs no http.Server: the
// request is read with net/http's parser on this goroutine, and the
// upgrade hijacks the connection from a small ResponseWriter
// (upgradeWriter). A WebSocket link costs about 20 KB less so
// (docs/benchmarks.md).
func (s *Server) serveHTTP(ctx context.Context, tc net.Conn, src netip.Prefix) {
	wc := s.upgrade(ctx, tc)
	if wc == nil {
		tc.Close()
		return
	}
	// The tunnel owns the connection from here: what serves it closes it
	// (a relay link that parks outlives this call).
	s.handleConn(ctx, wc, src, nil)
}

// upgrade reads tc's request and upgrades it to a WebSocket; nil if it
// answered otherwise (the caller closes tc).
func (s *Server) upgrade(ctx context.Context, tc net.Conn) *wsConn {
	stop := context.AfterFunc(ctx, func() { tc.Close() })
	defer stop()
	tc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	lr := &io.LimitedReader{R: tc, N: maxRequestBytes}
	br := bufio.NewReaderSize(lr, wsBufSize)
	req, err := http.ReadRequest(br)
	if err != nil {
		if lr.N == 0 {
			io.WriteString(tc, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		}
		s.log.Debug("https request", "remote", tc.RemoteAddr().String(), "err", err)
		return nil
	}
	if req.URL.Path != PathSignal && req.URL.Path != PathRelay {
		io.WriteString(tc, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return nil
	}
	if req.Method != http.MethodGet {
		io.WriteString(tc, "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return nil
	}
	if o := req.Header.Get("Origin"); o != "" {
		// A browser's page from elsewhere (coder/websocket refused those
		// too): reach's clients send no Origin.
		if u, err := url.Parse(o); err != nil || !strings.EqualFold(u.Host, req.Host) {
			io.WriteString(tc, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			return nil
		}
	}
	lr.N = math.MaxInt64 // the WebSocket's bytes are the tunnel's, not the request's
	if _, _, _, err := (ws.HTTPUpgrader{}).Upgrade(req, &upgradeWriter{c: tc, br: br}); err != nil {
		s.log.Debug("websocket upgrade", "remote", tc.RemoteAddr().String(), "err", err)
		return nil // Upgrade answered
	}
	s.log.Debug("websocket", "remote", tc.RemoteAddr().String(), "path", req.URL.Path)
	// The tunnel's first bytes may have come with the request.
	pre, _ := br.Peek(br.Buffered())
	// The tunnelled connection's handshake and idle timeouts apply from
	// here.
	tc.SetDeadline(time.Time{})
	return newWSConn(tc, bytes.Clone(pre))
}

// upgradeWriter is the http.ResponseWriter ws.HTTPUpgrader answers a
// request through: it hijacks the connection at once (and writes its
// answer, the 101 or an error, to the connection itself), with the
// reader the request was parsed from, which may hold the tunnel's first
// bytes.
type upgradeWriter struct {
	c  net.Conn
	br *bufio.Reader
	h  http.Header
}

func (w *upgradeWriter) Header() http.Header {
	if w.h == nil {
		w.h = http.Header{}
	}
	return w.h
}

// WriteHeader and Write are not used after the hijack, which comes first.
func (w *upgradeWriter) WriteHeader(int)             {}
func (w *upgradeWriter) Write(p []byte) (int, error) { return 0, http.ErrHijacked }

func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return w.c, bufio.NewReadWriter(w.br, bufio.NewWriterSize(w.c, wsBufSize)), nil
}
