// Package proxy opens TCP tunnels through HTTP proxies (HTTP CONNECT,
// RFC 9110 section 9.3.6), the only way out of strict corporate networks.
// reach uses it for its connections to the server: rendezvous over TLS and
// the relay's TLS and WebSocket links. The proxy comes from reach.Config
// or from the environment (HTTPS_PROXY, NO_PROXY), with the standard
// library's rules (FromEnvironment).
//
// A proxy URL's user information becomes Basic proxy authentication
// (Proxy-Authorization). A proxy that wants credentials, or refuses the
// ones given, answers 407: ErrAuth. One that refuses the tunnel answers
// 403: ErrRefused. Both come as a *StatusError with the proxy's answer.
package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Named errors.
var (
	// ErrAuth: the proxy requires authentication, or refused the
	// credentials given (HTTP 407).
	ErrAuth = errors.New("proxy: authentication required or refused (407)")
	// ErrRefused: the proxy refused the tunnel (HTTP 403: a policy
	// forbids the destination or the port).
	ErrRefused = errors.New("proxy: tunnel refused (403)")
	// ErrProxy: the proxy answered CONNECT with another failure status.
	ErrProxy = errors.New("proxy: CONNECT failed")
)

// StatusError is a proxy's failure answer to CONNECT. It unwraps to
// ErrAuth (407), ErrRefused (403) or ErrProxy (any other status).
type StatusError struct {
	Proxy      string // the proxy's host:port
	Target     string // the host:port the tunnel was for
	StatusCode int
	Status     string // e.g. "407 Proxy Authentication Required"
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("proxy %s: CONNECT %s: %s", e.Proxy, e.Target, e.Status)
}

// Unwrap returns the named error for the status.
func (e *StatusError) Unwrap() error {
	switch e.StatusCode {
	case http.StatusProxyAuthRequired:
		return ErrAuth
	case http.StatusForbidden:
		return ErrRefused
	}
	return ErrProxy
}

// Dialer opens TCP connections through an HTTP proxy with CONNECT.
type Dialer struct {
	// URL is the proxy: http://[user:password@]host:port, or https:// for
	// a proxy that itself speaks TLS (verified with the system roots).
	// With user information the dialer sends Basic credentials. Nil:
	// connections are dialled directly.
	URL *url.URL
	// DialTCP opens the TCP connection to the proxy. Nil: a net.Dialer.
	DialTCP func(ctx context.Context, network, addr string) (net.Conn, error)
}

// DialContext opens a tunnel to addr (host:port) through the proxy and
// returns it as a net.Conn whose bytes go to addr unchanged. ctx bounds
// the setup only. Errors: a *StatusError (ErrAuth, ErrRefused, ErrProxy)
// when the proxy answers with a failure, or the error of the connection
// to the proxy.
func (d Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	dial := d.DialTCP
	if dial == nil {
		var nd net.Dialer
		dial = nd.DialContext
	}
	if d.URL == nil {
		return dial(ctx, network, addr)
	}
	proxyAddr := hostPort(d.URL)
	c, err := dial(ctx, network, proxyAddr)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", proxyAddr, err)
	}
	if d.URL.Scheme == "https" {
		tc := tls.Client(c, &tls.Config{ServerName: d.URL.Hostname()})
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("proxy %s: %w", proxyAddr, err)
		}
		c = tc
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	conn, err := connect(c, d.URL, proxyAddr, addr)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return conn, nil
}

// connect sends CONNECT on c and reads the answer.
func connect(c net.Conn, u *url.URL, proxyAddr, addr string) (net.Conn, error) {
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: addr},
		Host:   addr,
		Header: http.Header{},
	}
	if u.User != nil {
		pw, _ := u.User.Password()
		cred := base64.StdEncoding.EncodeToString([]byte(u.User.Username() + ":" + pw))
		req.Header.Set("Proxy-Authorization", "Basic "+cred)
	}
	if err := req.Write(c); err != nil {
		return nil, fmt.Errorf("proxy %s: %w", proxyAddr, err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: reading the CONNECT answer: %w", proxyAddr, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return nil, &StatusError{Proxy: proxyAddr, Target: addr, StatusCode: resp.StatusCode, Status: resp.Status}
	}
	if br.Buffered() > 0 {
		// Bytes from the destination already arrived behind the answer.
		return &bufferedConn{Conn: c, r: br}, nil
	}
	return c, nil
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// FromEnvironment returns the proxy for TLS connections to addr
// (host:port) as http.ProxyFromEnvironment decides it for
// https://addr: HTTPS_PROXY (or https_proxy), unless NO_PROXY covers addr;
// nil when none applies. Loopback destinations never use a proxy. Like
// net/http, it reads the environment once per process.
func FromEnvironment(addr string) (*url.URL, error) {
	return http.ProxyFromEnvironment(&http.Request{URL: &url.URL{Scheme: "https", Host: addr}})
}

// Func returns the DialTCP function a reach component should use for
// addr's connections: through the proxy that pick chooses for the
// destination (nil: direct), each over dial (nil: a net.Dialer).
func Func(pick func(addr string) (*url.URL, error), dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		u, err := pick(addr)
		if err != nil {
			return nil, fmt.Errorf("proxy for %s: %w", addr, err)
		}
		return Dialer{URL: u, DialTCP: dial}.DialContext(ctx, network, addr)
	}
}
