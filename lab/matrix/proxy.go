package matrix

import (
	"net/url"

	"github.com/reachp2p/reach"
)

// withProxy points a node's server connections at the proxy at proxyURL
// (a proxy-only site's squid: its only way out). With "" the node ignores
// HTTPS_PROXY, so the matrix does not depend on the environment it runs
// in.
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
