package rendezvous

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"sync"

	"github.com/coder/websocket"

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
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{alpnHTTP},
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

// serveHTTP serves one TLS connection that negotiated http/1.1 on a TCP
// port: WebSocket upgrades on PathSignal and PathRelay, whose streams are
// then served like a TCP port's connections; anything else gets 404. It
// returns when the connection is done or ctx ends.
func (s *Server) serveHTTP(ctx context.Context, tc *tls.Conn, src netip.Prefix) {
	closed := make(chan struct{})
	c := &notifyConn{Conn: tc, closed: closed}
	upgrade := func(w http.ResponseWriter, r *http.Request) {
		wc, err := websocket.Accept(w, r, nil)
		if err != nil {
			s.log.Debug("websocket upgrade", "remote", tc.RemoteAddr().String(), "err", err)
			return
		}
		s.log.Debug("websocket", "remote", tc.RemoteAddr().String(), "path", r.URL.Path)
		// net/http cleared the request's deadlines when the upgrade took
		// the connection over: the tunnelled connection's handshake and
		// idle timeouts apply from here.
		s.handleConn(ctx, websocket.NetConn(ctx, wc, websocket.MessageBinary), src, nil)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathSignal, upgrade)
	mux.HandleFunc("GET "+PathRelay, upgrade)
	// The whole request, body included, must arrive within the handshake
	// timeout (no slow headers or body), and a connection carries one
	// request: the upgrade, or one answer (404) and close.
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: s.cfg.HandshakeTimeout,
		ReadTimeout:       s.cfg.HandshakeTimeout,
		WriteTimeout:      s.cfg.HandshakeTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	hs.SetKeepAlivesEnabled(false)
	ln := &oneConnListener{c: c, closed: closed, stop: make(chan struct{})}
	stop := context.AfterFunc(ctx, func() { hs.Close() })
	defer stop()
	hs.Serve(ln)
	select {
	case <-closed:
	case <-ctx.Done():
		tc.Close()
	}
}

// oneConnListener hands out one connection, then blocks until that
// connection is closed (so http.Server.Serve returns only then) or Close.
type oneConnListener struct {
	c      net.Conn
	closed <-chan struct{}
	stop   chan struct{}
	once   sync.Once
	taken  bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.taken {
		l.taken = true
		return l.c, nil
	}
	select {
	case <-l.closed:
	case <-l.stop:
	}
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.stop) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }

// notifyConn closes closed when it is closed (also after a hijack).
type notifyConn struct {
	net.Conn
	closed chan struct{}
	once   sync.Once
}

func (c *notifyConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}
