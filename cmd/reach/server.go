package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

const serverHelp = `usage: reach server [--listen IP or IP:PORT] [--state DIR] [-v]

Runs the public reach server: rendezvous (signalling over QUIC on UDP and
over TLS on TCP) and STUN, on the same port number for UDP and TCP
(default %d).

The first line on stdout is exactly

    reach server ready <connect-string>

where the connect string (reach://<server-id>@<host>:<port>) is what peers
need. Its host is the --listen IP; when listening on all interfaces (the
default), it is the first non-loopback global address of this host
(IPv4 preferred), or 127.0.0.1 if there is none. Behind NAT or a load
balancer, give peers the public address with the same ID and port instead.

Without --state the server makes a fresh key (a new connect string) on
every run; with --state DIR it keeps its key in DIR/server.key (mode 0600).
Logs go to stderr. SIGINT or SIGTERM shuts it down cleanly.

Flags:
`

func runServer(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	listen := fs.String("listen", "", "`IP or IP:PORT` to listen on, UDP and TCP (default: all interfaces, port "+strconv.Itoa(rendezvous.DefaultPort)+")")
	state := fs.String("state", "", "`DIR` that keeps the server key, so the connect string survives restarts")
	verbose := fs.Bool("v", false, "debug logging")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), serverHelp, rendezvous.DefaultPort)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	addr, err := parseListen(*listen)
	if err != nil {
		return err
	}
	key, err := serverKey(*state)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rs, err := rendezvous.StartServer(ctx, rendezvous.ServerConfig{Key: key, Logger: logger}, addr)
	if err != nil {
		return err
	}
	if _, err := fmt.Printf("reach server ready %s\n", rs.ConnectString()); err != nil {
		rs.Close()
		return err
	}
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case <-rs.Done():
	}
	return rs.Close()
}

// parseListen accepts "", "IP", "IP:PORT", "[IPv6]:PORT" and ":PORT". An
// empty IP means all interfaces (dual stack); a missing port, DefaultPort.
func parseListen(s string) (netip.AddrPort, error) {
	all := netip.IPv6Unspecified()
	if s == "" {
		return netip.AddrPortFrom(all, rendezvous.DefaultPort), nil
	}
	if ip, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return netip.AddrPortFrom(ip, rendezvous.DefaultPort), nil
	}
	if port, ok := strings.CutPrefix(s, ":"); ok {
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("--listen %q: bad port", s)
		}
		return netip.AddrPortFrom(all, uint16(p)), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--listen %q: want IP or IP:PORT (IPv6 in brackets with a port)", s)
	}
	return ap, nil
}

func serverKey(dir string) (*identity.Key, error) {
	if dir == "" {
		return identity.GenerateKey()
	}
	k, _, err := identity.LoadOrCreateKey(filepath.Join(dir, "server.key"))
	return k, err
}
