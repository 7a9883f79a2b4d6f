package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// ErrBadPublicAddr is a --public-addr that is not IP or IP:PORT.
var ErrBadPublicAddr = errors.New("--public-addr: want IP or IP:PORT (IPv6 in brackets with a port)")

// parsePublicAddr parses a --public-addr value: "IP", "[IPv6]",
// "IP:PORT" or "[IPv6]:PORT". A missing port is zero (the bound port).
// The unspecified address and port 0 are refused: neither can be
// advertised.
func parsePublicAddr(s string) (netip.AddrPort, error) {
	var ap netip.AddrPort
	if ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil && ip.Zone() == "" {
		ap = netip.AddrPortFrom(ip, 0)
	} else {
		ap, err = netip.ParseAddrPort(s)
		if err != nil || ap.Addr().Zone() != "" {
			return netip.AddrPort{}, fmt.Errorf("%w: %q", ErrBadPublicAddr, s)
		}
		if ap.Port() == 0 {
			return netip.AddrPort{}, fmt.Errorf("%w: %q: port 0", ErrBadPublicAddr, s)
		}
	}
	if ap.Addr().IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("%w: %q: the unspecified address", ErrBadPublicAddr, s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// parsePublicAddrs parses every --public-addr.
func parsePublicAddrs(vals []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, v := range vals {
		ap, err := parsePublicAddr(v)
		if err != nil {
			return nil, err
		}
		out = append(out, ap)
	}
	return out, nil
}

// errNoStateDir: no --state, no $STATE_DIRECTORY, and no user
// configuration directory to keep the server's key in.
var errNoStateDir = errors.New("no directory for the server's state: pass --state DIR or set STATE_DIRECTORY")

// rootStateDir is where a server run as root keeps its state by default.
const rootStateDir = "/var/lib/reach"

// stateEnv is what serverStateDir looks at besides the flag, so tests can
// give their own.
type stateEnv struct {
	getenv        func(string) string
	euid          int
	userConfigDir func() (string, error)
}

// osStateEnv is the process's own environment.
func osStateEnv() stateEnv {
	return stateEnv{getenv: os.Getenv, euid: os.Geteuid(), userConfigDir: os.UserConfigDir}
}

// serverStateDir returns the directory that keeps the server's key:
// flag (--state) if set; else $STATE_DIRECTORY (set by systemd's
// StateDirectory=; the first of a colon-separated list); else
// /var/lib/reach when running as root (on Unix); else
// os.UserConfigDir()/reach-server ($XDG_CONFIG_HOME/reach-server or
// ~/.config/reach-server on Linux).
func serverStateDir(flag string, env stateEnv) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if sd := env.getenv("STATE_DIRECTORY"); sd != "" {
		first, _, _ := strings.Cut(sd, ":")
		return first, nil
	}
	if env.euid == 0 {
		return rootStateDir, nil
	}
	dir, err := env.userConfigDir()
	if err != nil {
		return "", fmt.Errorf("%w (%v)", errNoStateDir, err)
	}
	return filepath.Join(dir, "reach-server"), nil
}

// errNoSecret: a --relay-secret-file or $REACH_RELAY_SECRET that holds no
// secret (empty, or only comments): most likely the wrong file, and a
// relay without a secret would be open to everyone.
var errNoSecret = errors.New("holds no secret")

// parseSecrets returns the secrets in text, one a line: each line trimmed
// of spaces (so CRLF files work), empty lines and lines starting with #
// skipped.
func parseSecrets(text string) []string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	return out
}

// relaySecrets gathers the relay secrets: every --relay-secret, then the
// lines of every --relay-secret-file, then the lines of
// $REACH_RELAY_SECRET. The first is the one `reach server token` signs
// with; the relay accepts tokens of any.
func relaySecrets(flags, files []string, getenv func(string) string) ([][]byte, error) {
	var out [][]byte
	for _, s := range flags {
		out = append(out, []byte(s))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--relay-secret-file: %w", err)
		}
		ss := parseSecrets(string(b))
		if len(ss) == 0 {
			return nil, fmt.Errorf("--relay-secret-file %s: %w", f, errNoSecret)
		}
		for _, s := range ss {
			out = append(out, []byte(s))
		}
	}
	if env := getenv("REACH_RELAY_SECRET"); env != "" {
		ss := parseSecrets(env)
		if len(ss) == 0 {
			return nil, fmt.Errorf("$REACH_RELAY_SECRET: %w", errNoSecret)
		}
		for _, s := range ss {
			out = append(out, []byte(s))
		}
	}
	return out, nil
}

// errBadLogFlag is a --log-format or --log-level value the server does
// not know.
var errBadLogFlag = errors.New("unknown value")

// serverLogger makes the server's logger on w: format "text" (logfmt, the
// default) or "json" (one object a line), at level "debug", "info"
// (default), "warn" or "error"; verbose (-v) means debug.
func serverLogger(w io.Writer, format, level string, verbose bool) (*slog.Logger, error) {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "", "info":
		lv = slog.LevelInfo
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		return nil, fmt.Errorf("--log-level %q: %w (debug, info, warn or error)", level, errBadLogFlag)
	}
	if verbose {
		lv = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: %w (text or json)", format, errBadLogFlag)
}
