package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// ACME certificates for the TLS/WebSocket listener (reach server
// --acme-domain): golang.org/x/crypto/acme/autocert, with TLS-ALPN-01 on
// the TLS port and, with --acme-http, HTTP-01. The certificate is what
// browsers and the outer HTTPS of WebSocket links see; reach clients
// always get the pinned certificate of the server's key.

// errACMEWithCert: --acme-domain and --tls-cert both name the web
// certificate.
var errACMEWithCert = errors.New("--acme-domain and --tls-cert/--tls-key are two sources of one certificate: pick one")

// acmeOptions are the --acme-* flags.
type acmeOptions struct {
	domains     stringList
	email       string
	directory   string
	httpAddr    string
	renewBefore time.Duration
}

func (o *acmeOptions) register(fs *flag.FlagSet) {
	fs.Var(&o.domains, "acme-domain", "DNS `NAME` to get a certificate for from an ACME CA (Let's Encrypt) for the TLS port's browsers and WebSocket clients; repeatable; the CA must reach --tls-port as 443 (TLS-ALPN-01) or --acme-http as 80 (HTTP-01)")
	fs.StringVar(&o.email, "acme-email", "", "contact `ADDRESS` for the ACME account (expiry notices)")
	fs.StringVar(&o.directory, "acme-directory", autocert.DefaultACMEDirectory, "ACME directory `URL` (Let's Encrypt staging, a private CA; its HTTPS is verified with the system roots or $SSL_CERT_FILE)")
	fs.StringVar(&o.httpAddr, "acme-http", "", "`ADDR` (e.g. :80) serving ACME HTTP-01 challenges, other requests redirected to HTTPS; empty: TLS-ALPN-01 only")
	fs.DurationVar(&o.renewBefore, "acme-renew-before", 0, "renew this `LONG` before expiry (0: a third of the validity, at most 30 days)")
}

// acmeCerts is a running ACME certificate manager.
type acmeCerts struct {
	m       *autocert.Manager
	first   string // the first domain: the certificate of clients without SNI
	log     *slog.Logger
	httpSrv *http.Server
}

// newACME makes the manager; its cache (account key, certificates) is
// DIR/acme in the server's state directory, so restarts reuse both.
func newACME(o *acmeOptions, stateDir string, log *slog.Logger) (*acmeCerts, error) {
	var domains []string
	for _, d := range o.domains {
		d = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
		if !strings.Contains(d, ".") || strings.ContainsAny(d, "/: ") {
			return nil, fmt.Errorf("--acme-domain %q: not a DNS name with a dot", d)
		}
		domains = append(domains, d)
	}
	m := &autocert.Manager{
		Prompt:      autocert.AcceptTOS,
		Cache:       autocert.DirCache(filepath.Join(stateDir, "acme")),
		HostPolicy:  hostPolicy(domains),
		Email:       o.email,
		RenewBefore: o.renewBefore,
		Client:      &acme.Client{DirectoryURL: o.directory, UserAgent: "reach-server"},
	}
	return &acmeCerts{m: m, first: domains[0], log: log}, nil
}

// hostPolicy allows domains only. A port is ignored: autocert's HTTP-01
// handler asks with the request's Host, which names one when the CA
// validates on another port than 80 (a test CA, a port forward).
func hostPolicy(domains []string) autocert.HostPolicy {
	allow := autocert.HostWhitelist(domains...)
	return func(ctx context.Context, host string) error {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		return allow(ctx, host)
	}
}

// GetCertificate is the manager's, with the first domain's certificate
// for clients that send no server name (an IP address in the URL).
func (a *acmeCerts) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if hello.ServerName == "" {
		h := *hello
		h.ServerName = a.first
		hello = &h
	}
	return a.m.GetCertificate(hello)
}

// start serves HTTP-01 challenges on --acme-http (if set) and asks for
// the first domain's certificate at once, in the background, so the
// first browser does not wait for it and a failure shows in the log at
// start. It returns what stops the HTTP listener.
func (a *acmeCerts) start(httpAddr string) (stop func(), err error) {
	stop = func() {}
	if httpAddr != "" {
		ln, err := net.Listen("tcp", httpAddr)
		if err != nil {
			return nil, fmt.Errorf("--acme-http: %w", err)
		}
		a.httpSrv = &http.Server{Handler: a.m.HTTPHandler(nil), ReadHeaderTimeout: 5 * time.Second}
		go a.httpSrv.Serve(ln)
		a.log.Info("ACME HTTP-01 challenges served", "addr", ln.Addr().String())
		stop = func() { a.httpSrv.Close() }
	}
	// Bounded by autocert itself (5 minutes); the process may exit first.
	go func() {
		start := time.Now()
		c, err := a.GetCertificate(&tls.ClientHelloInfo{ServerName: a.first,
			CipherSuites:      []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
			SignatureSchemes:  []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
			SupportedCurves:   []tls.CurveID{tls.CurveP256},
			SupportedVersions: []uint16{tls.VersionTLS13, tls.VersionTLS12}})
		switch {
		case err != nil:
			a.log.Warn("ACME certificate not obtained; tried again at the next handshake", "domain", a.first, "err", err)
		case c.Leaf != nil:
			a.log.Info("ACME certificate ready", "domain", a.first, "issuer", c.Leaf.Issuer.CommonName,
				"not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339), "elapsed", time.Since(start).Round(time.Millisecond))
		}
	}()
	return stop, nil
}
