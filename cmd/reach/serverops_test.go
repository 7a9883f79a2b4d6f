package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
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

func TestServerStateDir(t *testing.T) {
	env := func(vars map[string]string, euid int, cfg string) stateEnv {
		return stateEnv{
			getenv: func(k string) string { return vars[k] },
			euid:   euid,
			userConfigDir: func() (string, error) {
				if cfg == "" {
					return "", errors.New("neither $XDG_CONFIG_HOME nor $HOME is defined")
				}
				return cfg, nil
			},
		}
	}
	sd := map[string]string{"STATE_DIRECTORY": "/var/lib/reach:/var/lib/other"}
	for _, c := range []struct {
		name, flag string
		env        stateEnv
		want       string
	}{
		{"flag wins", "/srv/reach", env(sd, 0, "/home/u/.config"), "/srv/reach"},
		{"systemd", "", env(sd, 1000, "/home/u/.config"), "/var/lib/reach"},
		{"root", "", env(nil, 0, "/root/.config"), rootStateDir},
		{"user", "", env(nil, 1000, "/home/u/.config"), "/home/u/.config/reach-server"},
	} {
		if got, err := serverStateDir(c.flag, c.env); err != nil || got != c.want {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	if _, err := serverStateDir("", env(nil, 1000, "")); !errors.Is(err, errNoStateDir) {
		t.Errorf("no home: %v, want errNoStateDir", err)
	}
}

// TestServerDefaultState: without --state, two runs with the same
// environment print the same connect string, and the key is where the
// docs say (as a user: $XDG_CONFIG_HOME/reach-server; under systemd:
// $STATE_DIRECTORY); --state still wins.
func TestServerDefaultState(t *testing.T) {
	bin := reachBinary(t)
	home := t.TempDir()
	stateEnv := []string{"STATE_DIRECTORY=" + filepath.Join(home, "state")}
	run := func(env []string, args ...string) rendezvous.ServerAddr {
		t.Helper()
		sa, cmd := runServerEnv(t, bin, env, os.Stderr, append([]string{"--listen", "127.0.0.1:0", "--tls-port", "0"}, args...)...)
		stopServer(t, cmd)
		return sa
	}
	first := run(stateEnv)
	if again := run(stateEnv); again.ID != first.ID {
		t.Errorf("restart with the default state: %s, then %s", first.ID, again.ID)
	}
	if _, err := os.Stat(filepath.Join(home, "state", "server.key")); err != nil {
		t.Errorf("key not in $STATE_DIRECTORY: %v", err)
	}
	if other := run(stateEnv, "--state", filepath.Join(home, "flag")); other.ID == first.ID {
		t.Error("--state DIR: the default directory's key")
	}
	if os.Geteuid() != 0 { // as root the default is /var/lib/reach: not in a test
		userEnv := []string{"STATE_DIRECTORY=", "XDG_CONFIG_HOME=" + home, "HOME=" + home}
		a, b := run(userEnv), run(userEnv)
		if a.ID != b.ID {
			t.Errorf("restart with $XDG_CONFIG_HOME: %s, then %s", a.ID, b.ID)
		}
		if _, err := os.Stat(filepath.Join(home, "reach-server", "server.key")); err != nil {
			t.Errorf("key not in $XDG_CONFIG_HOME/reach-server: %v", err)
		}
	}
}

func TestRelaySecrets(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "secrets")
	os.WriteFile(f, []byte("# rotated 2026-11\nnew-secret\r\n\n  old-secret  \n"), 0o600)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("# nothing yet\n\n"), 0o600)
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "REACH_RELAY_SECRET" {
				return v
			}
			return ""
		}
	}
	got, err := relaySecrets([]string{"flag"}, []string{f}, env("env-1\nenv-2"))
	var s []string
	for _, b := range got {
		s = append(s, string(b))
	}
	if err != nil || strings.Join(s, ",") != "flag,new-secret,old-secret,env-1,env-2" {
		t.Errorf("relaySecrets: %q, %v", s, err)
	}
	if _, err := relaySecrets(nil, []string{empty}, env("")); !errors.Is(err, errNoSecret) {
		t.Errorf("a file of comments: %v, want errNoSecret", err)
	}
	if _, err := relaySecrets(nil, nil, env(" \n")); !errors.Is(err, errNoSecret) {
		t.Errorf("a blank $REACH_RELAY_SECRET: %v, want errNoSecret", err)
	}
	if _, err := relaySecrets(nil, []string{filepath.Join(dir, "missing")}, env("")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
	if got, err := relaySecrets(nil, nil, env("")); err != nil || len(got) != 0 {
		t.Errorf("no secrets: %q, %v", got, err)
	}
}

// TestServerRelaySecretFile: a server whose relay secret is in a file
// refuses a CLI dial through the relay without a token, and carries it
// with tokens from `reach server token` (the listener's in
// $REACH_RELAY_TOKEN, the dialler's in --relay-token).
func TestServerRelaySecretFile(t *testing.T) {
	bin := reachBinary(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "relay-secret")
	if err := os.WriteFile(secret, []byte("s3cret-from-a-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sa, _ := runServerEnv(t, bin, []string{"STATE_DIRECTORY=" + dir}, os.Stderr,
		"--listen", "127.0.0.1:0", "--tls-port", "0", "--relay-secret-file", secret)
	cs := sa.String()
	token := func(id identity.PeerID) string {
		out, err := exec.Command(bin, "server", "token", "--relay-secret-file", secret, "--peer", id.String(), "--ttl", "10m").Output()
		if err != nil {
			t.Fatalf("reach server token: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	lisKey, lisID := ncKey(t, "lis")
	dialKey, dialID := ncKey(t, "dial")
	var got lockedBuffer
	lisCmd := exec.Command(bin, "listen", "--key", lisKey, "--server", cs)
	lisCmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir(), "REACH_RELAY_TOKEN="+token(lisID))
	lis := startCmd(t, lisCmd, nil, &got)
	lis.stderr.wait(t, "listening ", 15*time.Second)

	refused := startProc(t, strings.NewReader("no token\n"), io.Discard, bin, "dial", "--strategies", "relay",
		"--timeout", "10s", "--key", dialKey, "--server", cs, lisID.String())
	if code := refused.exit(t, 30*time.Second); code == 0 {
		t.Fatal("dial through the relay without a token exited 0")
	}
	if !strings.Contains(refused.stderr.String(), "bad_token") {
		t.Errorf("dial without a token: stderr lacks bad_token:\n%s", refused.stderr)
	}
	dial := startProc(t, strings.NewReader("hello through the relay\n"), io.Discard, bin, "dial", "--json", "--strategies", "relay",
		"--relay-token", token(dialID), "--key", dialKey, "--server", cs, lisID.String())
	if s := connectedStrategy(t, dial.stderr); s != "relay" {
		t.Fatalf("strategy %q, want relay", s)
	}
	if code := dial.exit(t, 30*time.Second); code != 0 {
		t.Fatalf("dial with --relay-token exited %d", code)
	}
	if code := lis.exit(t, 15*time.Second); code != 0 {
		t.Fatalf("listen exited %d", code)
	}
	if got.String() != "hello through the relay\n" {
		t.Errorf("listener wrote %q", got.String())
	}
}

func TestServerLogger(t *testing.T) {
	var b bytes.Buffer
	l, err := serverLogger(&b, "json", "warn", false)
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.Warn("shown", "k", 1)
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil || m["msg"] != "shown" || m["level"] != "WARN" {
		t.Errorf("json at warn: %q (%v)", b.String(), err)
	}
	b.Reset()
	if l, err = serverLogger(&b, "text", "error", true); err != nil { // -v wins
		t.Fatal(err)
	}
	l.Debug("dbg")
	if !strings.Contains(b.String(), "level=DEBUG msg=dbg") {
		t.Errorf("text with -v: %q", b.String())
	}
	for _, bad := range [][2]string{{"xml", "info"}, {"text", "loud"}} {
		if _, err := serverLogger(&b, bad[0], bad[1], false); !errors.Is(err, errBadLogFlag) {
			t.Errorf("serverLogger(%q, %q): %v, want errBadLogFlag", bad[0], bad[1], err)
		}
	}
}

// TestServerLogFormat: with --log-format json every stderr line is a JSON
// object; a peer's registration is logged at debug only.
func TestServerLogFormat(t *testing.T) {
	bin := reachBinary(t)
	register := func(sa rendezvous.ServerAddr) {
		t.Helper()
		key, _ := identity.GenerateKey()
		c, err := rendezvous.NewClient(rendezvous.ClientConfig{Key: key, Servers: []rendezvous.ServerAddr{sa}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	msgs := func(level string) []string {
		t.Helper()
		var stderr lockedBuffer
		sa, cmd := runServerEnv(t, bin, []string{"STATE_DIRECTORY=" + t.TempDir()}, &stderr,
			"--listen", "127.0.0.1:0", "--tls-port", "0", "--log-format", "json", "--log-level", level)
		register(sa)
		time.Sleep(200 * time.Millisecond) // the server logs the unregistration
		stopServer(t, cmd)
		var out []string
		for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
			var m struct{ Msg, Level string }
			if err := json.Unmarshal([]byte(line), &m); err != nil || m.Msg == "" {
				t.Errorf("--log-format json: stderr line %q is no JSON log record (%v)", line, err)
				continue
			}
			out = append(out, m.Level+" "+m.Msg)
		}
		return out
	}
	debug := strings.Join(msgs("debug"), "\n")
	if !strings.Contains(debug, "DEBUG registered\n") || !strings.Contains(debug, "DEBUG unregistered") {
		t.Errorf("--log-level debug: no registration logged:\n%s", debug)
	}
	info := strings.Join(msgs("info"), "\n")
	if strings.Contains(info, "registered") || !strings.Contains(info, "INFO rendezvous serving UDP") {
		t.Errorf("--log-level info:\n%s", info)
	}
}
