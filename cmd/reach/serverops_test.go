package main

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// lockedBuffer is a bytes.Buffer safe for a process's writes and the
// test's reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestParsePublicAddr(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.7":          "203.0.113.7:0",
		"203.0.113.7:5000":     "203.0.113.7:5000",
		"2001:db8::1":          "[2001:db8::1]:0",
		"[2001:db8::1]":        "[2001:db8::1]:0",
		"[2001:db8::1]:443":    "[2001:db8::1]:443",
		"::ffff:203.0.113.7":   "203.0.113.7:0",
		"[::ffff:1.2.3.4]:900": "1.2.3.4:900",
	} {
		got, err := parsePublicAddr(in)
		if err != nil || got != netip.MustParseAddrPort(want) {
			t.Errorf("parsePublicAddr(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "example.com", "0.0.0.0", "::", "[::]:1", "1.2.3.4:0", "1.2.3.4:x", "fe80::1%eth0", "1.2.3.4:70000"} {
		if _, err := parsePublicAddr(bad); !errors.Is(err, ErrBadPublicAddr) {
			t.Errorf("parsePublicAddr(%q): %v, want ErrBadPublicAddr", bad, err)
		}
	}
}

// TestServerPublicAddr: with --public-addr the ready line names only that
// host (with the bound port), a second one is logged, and the server
// still listens where --listen says.
func TestServerPublicAddr(t *testing.T) {
	bin := reachBinary(t)
	var stderr lockedBuffer
	sa, cmd := runServerEnv(t, bin, []string{"STATE_DIRECTORY=" + t.TempDir()}, &stderr,
		"--listen", "127.0.0.1:0", "--tls-port", "0", "--public-addr", "203.0.113.7", "--public-addr", "[2001:db8::1]:5000")
	if sa.Host != "203.0.113.7" || sa.Port == 0 || sa.TCPPort != 0 {
		t.Errorf("connect string %v, want host 203.0.113.7 and the bound port", sa)
	}
	want := "also advertised\" connect=reach://" + sa.ID.String() + "@[2001:db8::1]:5000"
	if deadline := time.Now().Add(2 * time.Second); !strings.Contains(stderr.String(), want) {
		for time.Now().Before(deadline) && !strings.Contains(stderr.String(), want) {
			time.Sleep(20 * time.Millisecond)
		}
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	// The listen address is unchanged: a client reaches it on loopback.
	local := sa
	local.Host = "127.0.0.1"
	key, _ := identity.GenerateKey()
	c, err := rendezvous.NewClient(rendezvous.ClientConfig{Key: key, Servers: []rendezvous.ServerAddr{local}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("register on the listen address: %v", err)
	}
	c.Close()
	stopServer(t, cmd)
}
