package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// fakeProxy answers one CONNECT per connection: 407 without the right
// Basic credentials (alice:pw), 403 for port 25, else 200 and an echo.
func fakeProxy(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				u, p, ok := (&http.Request{Header: http.Header{"Authorization": req.Header["Proxy-Authorization"]}}).BasicAuth()
				switch {
				case req.Method != http.MethodConnect:
					io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
				case !ok || u != "alice" || p != "pw":
					io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n")
				case req.Host == "example.test:25":
					io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
				default:
					io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\nhello")
					io.Copy(c, br)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestConnect(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // after the proxy's cleanup
	addr := fakeProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := Dialer{URL: &url.URL{Scheme: "http", User: url.UserPassword("alice", "pw"), Host: addr}}
	c, err := d.DialContext(ctx, "tcp", "example.test:443")
	if err != nil {
		t.Fatal(err)
	}
	// Bytes that came right behind the 200 are not lost.
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
		t.Fatalf("read %q: %v", got, err)
	}
	io.WriteString(c, "ping")
	if _, err := io.ReadFull(c, got[:4]); err != nil || string(got[:4]) != "ping" {
		t.Fatalf("echo %q: %v", got[:4], err)
	}
	c.Close()

	for _, tc := range []struct {
		name   string
		user   *url.Userinfo
		target string
		want   error
		code   int
	}{
		{"no-credentials", nil, "example.test:443", ErrAuth, 407},
		{"wrong-password", url.UserPassword("alice", "nope"), "example.test:443", ErrAuth, 407},
		{"forbidden-port", url.UserPassword("alice", "pw"), "example.test:25", ErrRefused, 403},
	} {
		d := Dialer{URL: &url.URL{Scheme: "http", User: tc.user, Host: addr}}
		_, err := d.DialContext(ctx, "tcp", tc.target)
		var se *StatusError
		if !errors.Is(err, tc.want) || !errors.As(err, &se) || se.StatusCode != tc.code {
			t.Errorf("%s: %v, want %v (%d)", tc.name, err, tc.want, tc.code)
		}
		t.Logf("%s: %v", tc.name, err)
	}
}

func TestFromEnvironmentAndFunc(t *testing.T) {
	addr := fakeProxy(t)
	// Loopback destinations never use a proxy (net/http's rule).
	if u, err := FromEnvironment("127.0.0.1:443"); err != nil || u != nil {
		t.Errorf("loopback: %v %v", u, err)
	}
	pick := func(string) (*url.URL, error) {
		return &url.URL{Scheme: "http", User: url.UserPassword("alice", "pw"), Host: addr}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Func(pick, nil)(ctx, "tcp", "example.test:443")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
