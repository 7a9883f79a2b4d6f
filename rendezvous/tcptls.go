package rendezvous

import (
	"crypto/tls"
	"maps"
	"slices"

	"github.com/reachp2p/reach/internal/tlstake"
)

// KeyProofProtocol is a Protocol whose clients may prove their keys
// inside the connection, on the ALPNs it names (besides its key in
// ServerConfig.Protocols), instead of with a TLS client certificate: the
// TCP ports offer those ALPNs, ask no client certificate of a client that
// chose one, and hand its connections to the protocol's ServeTLS, which
// must authenticate the client itself (relay.ALPNKeyProof: a signature
// over the TLS exporter in the link's HELLO). KeyProofALPNs lists them
// in the protocol's order of preference: the server picks the first the
// client offers. Keeping no certificate
// saves the server about 2.5 KB per connection (docs/benchmarks.md).
type KeyProofProtocol interface {
	Protocol
	KeyProofALPNs() []string
}

// LingeringProtocol is a Protocol whose connections may outlive its
// ServeTLS call (a relay's parked TLS links, which hold no goroutine):
// they still end once ctx ends, and Wait waits until they have. A
// stopping server calls Wait after every ServeTLS returned.
type LingeringProtocol interface {
	Protocol
	Wait()
}

// tcpTLSConfig is the TCP ports' TLS config: tlsCfg (QUIC's) plus
// http/1.1 (WebSocket) unless cfg turns it off, the web certificate for
// clients that offer none of reach's ALPNs (cfg.Certificate), and the
// KeyProofProtocols' in-band ALPNs (a config that asks no client
// certificate), which it returns by ALPN.
func tcpTLSConfig(cfg ServerConfig, tlsCfg *tls.Config, alpns []string) (*tls.Config, map[string]Protocol) {
	// The TCP ports also offer http/1.1 (WebSocket), QUIC never does, and
	// the ALPNs whose clients prove their keys in band (KeyProofProtocol),
	// with a config that asks for no client certificate.
	tcpTLS := tlsCfg
	tcpALPNs := alpns
	// Each protocol's ALPNs in its order of preference (a TLS server
	// picks the first of its own that the client offers), the protocols
	// in the order of their keys.
	proofProtos := map[string]Protocol{}
	var proofALPNs []string
	for _, key := range slices.Sorted(maps.Keys(cfg.Protocols)) {
		pr := cfg.Protocols[key]
		if kp, ok := pr.(KeyProofProtocol); ok {
			for _, a := range kp.KeyProofALPNs() {
				if _, taken := cfg.Protocols[a]; !taken && a != ALPN && a != alpnHTTP && proofProtos[a] == nil {
					proofProtos[a] = pr
					proofALPNs = append(proofALPNs, a)
				}
			}
		}
	}
	if !cfg.DisableWebSocket || len(proofALPNs) > 0 {
		tcpALPNs = append(slices.Clone(alpns), proofALPNs...)
		if !cfg.DisableWebSocket {
			tcpALPNs = append(tcpALPNs, alpnHTTP)
		}
		tcpTLS = tlsCfg.Clone()
		tcpTLS.NextProtos = tcpALPNs
	}
	var proofTLS *tls.Config
	if len(proofALPNs) > 0 {
		proofTLS = tlsCfg.Clone()
		proofTLS.ClientAuth = tls.NoClientCert
		proofTLS.VerifyPeerCertificate = nil
		proofTLS.NextProtos = proofALPNs
	}
	// A WebSocket client (http/1.1 and none of reach's ALPNs) is not asked
	// for a certificate either: what runs in its tunnel proves its key, and
	// a parsed certificate would stay with the outer connection for the
	// tunnel's life (about 2 KB).
	var httpTLS *tls.Config
	if !cfg.DisableWebSocket {
		httpTLS = tlsCfg.Clone()
		httpTLS.ClientAuth = tls.NoClientCert
		httpTLS.VerifyPeerCertificate = nil
		httpTLS.NextProtos = []string{alpnHTTP}
	}
	if cfg.Certificate != nil || cfg.GetCertificate != nil {
		web := &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: cfg.GetCertificate,
			NextProtos:     append(slices.Clone(tcpALPNs), cfg.CertificateALPNs...),
		}
		if cfg.GetCertificate == nil {
			web.Certificates = []tls.Certificate{*cfg.Certificate}
		}
		tcpTLS.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			for _, p := range hi.SupportedProtos {
				if proofTLS != nil && slices.Contains(proofALPNs, p) {
					return proofTLS, nil // reach's own, the key proved in band
				}
			}
			for _, p := range hi.SupportedProtos {
				if slices.Contains(alpns, p) {
					return nil, nil // reach's own: the pinned certificate
				}
			}
			return web, nil
		}
	} else if proofTLS != nil || httpTLS != nil {
		tcpTLS.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			for _, p := range hi.SupportedProtos {
				if proofTLS != nil && slices.Contains(proofALPNs, p) {
					return proofTLS, nil // the key proved in band: no certificate asked
				}
			}
			if httpTLS != nil && slices.Contains(hi.SupportedProtos, alpnHTTP) &&
				!slices.ContainsFunc(hi.SupportedProtos, func(p string) bool { return slices.Contains(alpns, p) }) {
				return httpTLS, nil // a WebSocket: its tunnel proves the key
			}
			return nil, nil
		}
	}
	return takeable(tcpTLS, proofTLS), proofProtos
}

// takeable returns tcpTLS with a GetConfigForClient that lets the server
// take a connection over once its handshake is done (tlstake: a
// WebSocket's outer TLS, a TCP registration's): when the connection is
// read through a Bounded, the config chosen for it logs its secrets there
// and sends no session ticket. A relay link proving its key in band
// (proofTLS) leaves TLS for the relay's own records and is left alone.
func takeable(tcpTLS, proofTLS *tls.Config) *tls.Config {
	base := tcpTLS.Clone() // what a client of reach's own ALPNs gets
	base.GetConfigForClient = nil
	choose := tcpTLS.GetConfigForClient
	out := tcpTLS.Clone()
	out.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		cfg := base
		if choose != nil {
			c, err := choose(hi)
			if err != nil {
				return nil, err
			}
			if c != nil {
				cfg = c
			}
		}
		b, ok := hi.Conn.(*tlstake.Bounded)
		if !ok || (proofTLS != nil && cfg == proofTLS) {
			return cfg, nil
		}
		return b.Config(cfg), nil
	}
	return out
}
