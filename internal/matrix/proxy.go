package matrix

import (
	"net/url"

	"github.com/reachp2p/reach"
)

// proxySupported says whether nodes can be told to use an HTTP proxy
// (reach.Config.Proxy). Proxy-only sites need it: squid is their only way
// out. While it was false, proxy-only cells failed with noProxyNote.
const proxySupported = true

// noProxyNote is the reason proxy-only cells fail while proxySupported is
// false.
const noProxyNote = "reach nodes cannot use an HTTP CONNECT proxy in this build (no reach.Config.Proxy), so a proxy-only node cannot reach the server"

// withProxy points a node's server connections at the proxy at proxyURL
// (a proxy-only site's squid). Every other node ignores HTTPS_PROXY, so
// the matrix does not depend on the environment it runs in.
func withProxy(cfg reach.Config, proxyURL string) reach.Config {
	if proxyURL == "" {
		cfg.IgnoreProxyEnvironment = true
		return cfg
	}
	u, err := url.Parse(proxyURL)
	if err != nil {
		panic("matrix: squid URL: " + err.Error()) // natlab builds it
	}
	cfg.Proxy = u
	return cfg
}
