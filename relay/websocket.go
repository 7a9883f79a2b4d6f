package relay

import (
	"context"
	"crypto/x509"
	"net"

	"github.com/reachp2p/reach/rendezvous"
)

// WSDialer opens links as WebSockets over HTTPS on the server's TCP port
// (wss://host:port/relay, rendezvous.PathRelay), for networks whose
// proxies pass only HTTP: the WebSocket carries the tls link unchanged
// (the TLS handshake that pins the relay's key, then frames).
type WSDialer struct {
	// DialTCP opens the TCP connection (directly, or through an HTTP
	// CONNECT proxy: proxy.Dialer). Nil: a net.Dialer.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
	// RootCAs verify the server's CA certificate on the outer HTTPS, if
	// it has one (reach server --tls-cert); its pinned key certificate is
	// always accepted. Nil: the system roots.
	RootCAs *x509.CertPool
}

// Transport implements LinkDialer.
func (WSDialer) Transport() string { return "ws" }

// DialLink implements LinkDialer.
func (d WSDialer) DialLink(ctx context.Context, p LinkParams) (Link, error) {
	conn, err := rendezvous.WebSocketDialer{Key: p.Key, DialTCP: d.DialTCP, RootCAs: d.RootCAs}.Dial(ctx, p.Server, rendezvous.PathRelay)
	if err != nil {
		return nil, err
	}
	return NewStreamLink(ctx, conn, "ws", p)
}
