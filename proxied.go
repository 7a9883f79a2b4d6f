package reach

import (
	"context"
	"net"
	"net/url"

	"github.com/reachp2p/reach/proxy"
)

// Proxy errors, from an HTTP CONNECT proxy (Config.Proxy or HTTPS_PROXY)
// on the way to a server. They come wrapped (a *proxy.StatusError has the
// proxy's answer); test them with errors.Is.
var (
	// ErrProxyAuth: the proxy wants credentials, or refused the ones in
	// the proxy URL (HTTP 407).
	ErrProxyAuth = proxy.ErrAuth
	// ErrProxyRefused: the proxy refused the tunnel (HTTP 403).
	ErrProxyRefused = proxy.ErrRefused
)

// serverDialTCP is the dial function for the node's TCP connections to its
// servers (signalling, relay links): Config.DialTCP, through the proxy
// that Config.Proxy or the environment names for the destination. The
// port mapper's connections (to the LAN gateway) never use it.
func (n *Node) serverDialTCP() func(ctx context.Context, network, addr string) (net.Conn, error) {
	pick := func(addr string) (*url.URL, error) {
		switch {
		case n.cfg.Proxy != nil:
			return n.cfg.Proxy, nil
		case n.cfg.IgnoreProxyEnvironment:
			return nil, nil
		}
		return proxy.FromEnvironment(addr)
	}
	return proxy.Func(pick, n.cfg.DialTCP)
}
