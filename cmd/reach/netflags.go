package main

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"net/url"
	"strings"

	"github.com/reachp2p/reach"
)

// Named errors of the network flags.
var (
	// errBadProxy: a --proxy that is not http://[user:password@]host:port
	// (or "none").
	errBadProxy = errors.New("--proxy: want http://[user:password@]host:port, or none")
	// errBadTURN: a --turn that is not a turn: or turns: URL.
	errBadTURN = errors.New("--turn: want turn:host[:port][?transport=tcp] or turns:host[:port]")
	// errTURNCredentials: --turn without credentials, or with both kinds.
	errTURNCredentials = errors.New("--turn needs --turn-user and --turn-password ($REACH_TURN_PASSWORD), or --turn-secret ($REACH_TURN_SECRET)")
)

// netFlags are the flags of every command that runs a node (listen, dial,
// ping, send, recv, supernode) about its network: the proxy for its TCP
// connections to servers, TURN servers to relay through, and a fixed UDP
// port an operator can forward.
type netFlags struct {
	proxy                              string
	turn                               multiFlag
	turnUser, turnPassword, turnSecret string
	port                               uint
}

func (nf *netFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&nf.proxy, "proxy", "", "HTTP CONNECT proxy `URL` (http://[user:password@]host:port) for the TCP connections to servers (TLS signalling, the relay's TLS and WebSocket links); none: no proxy (default: $HTTPS_PROXY and $NO_PROXY)")
	fs.Var(&nf.turn, "turn", "TURN server `URL` to relay through (turn:host:port, turn:host:port?transport=tcp, turns:host:port); repeatable, tried in order")
	fs.StringVar(&nf.turnUser, "turn-user", "", "TURN long-term credential `USER` (with --turn-password)")
	fs.StringVar(&nf.turnPassword, "turn-password", "", "TURN `PASSWORD` (default $REACH_TURN_PASSWORD)")
	fs.StringVar(&nf.turnSecret, "turn-secret", "", "TURN REST API shared `SECRET` (coturn use-auth-secret; default $REACH_TURN_SECRET): the node derives its own credentials")
	fs.UintVar(&nf.port, "port", 0, "fixed UDP `PORT` for the node's socket, on every interface, so it can be forwarded on a router (0: a random port)")
}

// apply sets cfg's fields from the flags; getenv reads the environment's
// defaults of the secrets.
func (nf *netFlags) apply(cfg *reach.Config, getenv func(string) string) error {
	switch nf.proxy {
	case "":
	case "none":
		cfg.IgnoreProxyEnvironment = true
	default:
		u, err := url.Parse(nf.proxy)
		if err != nil || u.Scheme != "http" || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("%w: %q", errBadProxy, nf.proxy)
		}
		cfg.Proxy = u
	}
	if nf.port > 65535 {
		return fmt.Errorf("--port %d: not a port", nf.port)
	}
	if nf.port != 0 {
		cfg.ListenAddr = netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(nf.port))
	}
	password, secret := nf.turnPassword, nf.turnSecret
	if password == "" {
		password = getenv("REACH_TURN_PASSWORD")
	}
	if secret == "" {
		secret = getenv("REACH_TURN_SECRET")
	}
	if len(nf.turn) == 0 {
		if nf.turnUser != "" || nf.turnPassword != "" || nf.turnSecret != "" {
			return fmt.Errorf("--turn-user, --turn-password and --turn-secret need --turn")
		}
		return nil
	}
	longTerm := nf.turnUser != "" && password != ""
	if longTerm == (secret != "") {
		return errTURNCredentials
	}
	for _, u := range nf.turn {
		scheme, rest, _ := strings.Cut(u, ":")
		if (scheme != "turn" && scheme != "turns") || rest == "" || strings.HasPrefix(rest, "//") {
			return fmt.Errorf("%w: %q", errBadTURN, u)
		}
		srv := reach.TURNServer{URL: u, Secret: secret}
		if longTerm {
			srv = reach.TURNServer{URL: u, Username: nf.turnUser, Password: password}
		}
		cfg.TURN = append(cfg.TURN, srv)
	}
	return nil
}
