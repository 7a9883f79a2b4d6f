package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

// peerFlags are the flags shared by listen, dial and ping.
type peerFlags struct {
	key        string
	servers    multiFlag
	strategies string
	relayToken string
	net        netFlags // --proxy, --turn, --port
	cmd        string   // the command, for usage errors
	jsonOut    bool
	verbose    bool
	// jsonTo is where JSON events go: stdout (nil), or stderr when stdout
	// carries the stream (listen, dial).
	jsonTo io.Writer
	ev     *events // the command's JSON events (events())
	// caller: a command that only dials (dial, ping, recv): when another
	// reach process here holds the default key, it takes a one-time key
	// rather than push that process offline.
	caller bool
}

// events returns the command's JSON event writer (on with --json).
func (p *peerFlags) events() *events {
	if p.ev == nil {
		w := p.jsonTo
		if w == nil {
			w = os.Stdout
		}
		p.ev = &events{on: p.jsonOut, w: w}
	}
	return p.ev
}

// pathEvent is the JSON event for a session that changed paths: every
// PathMoved after "connected" (relay to direct, direct to relay, a new
// address). "path" is the direct address, absent while on a relay.
func pathEvent(e reach.PathEvent) map[string]any {
	m := map[string]any{"event": "path", "strategy": e.Strategy, "peer": e.Peer.String()}
	if e.Path.IsValid() {
		m["path"] = e.Path.String()
	}
	if e.Err != nil {
		m["reason"] = e.Err.Error()
	}
	return m
}

// connectedEvent is the JSON event for a session that is up: its
// strategy, the peer, "transport" ("udp": QUIC; "tcp": TLS+yamux over a
// TCP path, or over a relayed stream when both peers' relay links are TCP)
// and "path", the direct address (absent while the session is
// forwarded: relay, supernode, TURN), as in pathEvent.
func connectedEvent(s *reach.Session) map[string]any {
	m := map[string]any{"event": "connected", "remote": s.RemotePeer().String(), "transport": s.Transport()}
	// A session that came straight to a listener's socket has no
	// strategy (the listener cannot tell direct from hole-punched):
	// absent rather than "".
	if st := s.Strategy(); st != "" {
		m["strategy"] = st
	}
	if p := s.RemoteAddr(); p.IsValid() {
		m["path"] = p.String()
	}
	return m
}

// pathText is a session's path for events and messages: its direct
// address, or its strategy's name while it is forwarded.
func pathText(s *reach.Session) string {
	if p := s.RemoteAddr(); p.IsValid() {
		return p.String()
	}
	return s.Strategy()
}

func (p *peerFlags) register(fs *flag.FlagSet, withJSON bool) {
	fs.StringVar(&p.key, "key", "", "key `FILE` (created if missing; default: $REACH_KEY, else the default key, see reach id)")
	fs.Var(&p.servers, "server", "rendezvous connect string `CS` (repeatable; default $REACH_SERVER)")
	fs.StringVar(&p.strategies, "strategies", "", "comma-separated ladder `LIST`, e.g. direct,holepunch (default: all)")
	fs.StringVar(&p.relayToken, "relay-token", "", "`TOKEN` for a relay that requires one (reach server token; default $REACH_RELAY_TOKEN)")
	fs.BoolVar(&p.verbose, "v", false, "debug logs on stderr")
	p.net.register(fs)
	p.cmd = fs.Name()
	if withJSON {
		where := "stdout"
		if p.jsonTo == os.Stderr {
			where = "stderr (stdout carries the stream)"
		}
		fs.BoolVar(&p.jsonOut, "json", false, "JSON events, one per line, on "+where+" (docs/cli.md)")
	}
}

// node starts a node from the flags.
func (p *peerFlags) node(ctx context.Context) (*reach.Node, error) { return p.nodeWith(ctx, nil) }

// nodeWith starts a node from the flags, with mod's changes to its Config.
func (p *peerFlags) nodeWith(ctx context.Context, mod func(*reach.Config)) (*reach.Node, error) {
	cfg, err := p.config(mod)
	if err != nil {
		return nil, err
	}
	n, err := reach.New(ctx, cfg)
	if err != nil && !cfg.LAN && lanCommands[p.cmd] && errors.Is(err, rendezvous.ErrNoServer) && ctx.Err() == nil {
		// None of the servers answered: peers on this LAN may still be
		// found (those whose servers did not answer either).
		if !p.jsonOut {
			fmt.Fprintf(os.Stderr, "%s; finding peers on the local network (mDNS)\n", message(err))
		}
		cfg.Servers, cfg.LAN = nil, true
		return reach.New(ctx, cfg)
	}
	return n, err
}

// lanCommands work without a server, between peers on one LAN
// (reach.Config.LAN).
var lanCommands = map[string]bool{"listen": true, "dial": true, "ping": true}

// config is the node's Config from the flags, with mod's changes.
func (p *peerFlags) config(mod func(*reach.Config)) (reach.Config, error) {
	servers := []string(p.servers)
	if len(servers) == 0 {
		if env := os.Getenv("REACH_SERVER"); env != "" {
			servers = strings.Fields(strings.ReplaceAll(env, ",", " "))
		}
	}
	lan := false
	if len(servers) == 0 {
		if !lanCommands[p.cmd] {
			return reach.Config{}, errors.New("no server: pass --server CS or set REACH_SERVER")
		}
		// No server: peers on the same LAN find each other by mDNS.
		lan = true
		if !p.jsonOut {
			fmt.Fprintln(os.Stderr, "no server: finding peers on the local network (mDNS)")
		}
	}
	cfg := reach.Config{Servers: servers, LAN: lan}
	if err := p.net.apply(&cfg, os.Getenv); err != nil {
		return reach.Config{}, &usageError{cmd: p.cmd, err: err}
	}
	if p.jsonOut {
		ev := p.events()
		cfg.OnPathEvent = func(e reach.PathEvent) {
			if e.Kind == reach.PathMoved {
				ev.emit(pathEvent(e))
			}
		}
	}
	k, err := loadKeyFor(p.key, p.caller)
	if err != nil {
		return reach.Config{}, err
	}
	cfg.Key = k
	tok := p.relayToken
	if tok == "" {
		tok = os.Getenv("REACH_RELAY_TOKEN")
	}
	if tok != "" {
		cfg.RelayToken = func() string { return tok }
	}
	if p.strategies != "" {
		cfg.Strategies = strings.Split(p.strategies, ",")
	}
	if p.verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if mod != nil {
		mod(&cfg)
	}
	return cfg, nil
}

// events writes JSON events, one a line, to w when enabled.
type events struct {
	on bool
	w  io.Writer
	mu sync.Mutex
}

func (e *events) emit(kv map[string]any) {
	if !e.on {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	json.NewEncoder(e.w).Encode(kv)
}

// errString is err for a JSON event: null, or the message the command
// prints for it.
func errString(err error) any {
	if err == nil {
		return nil
	}
	return message(err)
}

const pingHelp = `usage: reach ping [flags] PEER

Connects to PEER (a peer ID, as reach listen or reach id prints it) through
the ladder, says how (strategy and path), then measures the round trip
--count times over the session. Exits 1 if no ping was answered.

With --json, one event a line on stdout: connected, then pong (seq,
rtt_ms, strategy, path) or timeout for each ping; see docs/cli.md.
`

func runPing(args []string) error {
	fs := newFlagSet("ping", pingHelp)
	pf := peerFlags{caller: true}
	pf.register(fs, true)
	count := fs.Int("count", 4, "number of pings")
	interval := fs.Duration("interval", time.Second, "time between pings")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on connection setup")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("ping", "ping takes one PEER, got %d arguments", fs.NArg())
	}
	peer, err := identity.ParsePeerID(fs.Arg(0))
	if err != nil {
		return err
	}
	ev := pf.events()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	start := time.Now()
	n, err := pf.node(ctx)
	if err != nil {
		return err
	}
	defer n.Close()
	sess, err := n.DialSession(ctx, peer)
	if err != nil {
		err = rejected(n, replaced(n, err))
		ev.emit(map[string]any{"event": "error", "error": message(err)})
		return err
	}
	connected := connectedEvent(sess)
	connected["elapsed_ms"] = time.Since(start).Milliseconds()
	ev.emit(connected)
	if !pf.jsonOut {
		fmt.Printf("connected to %s via %s (%s) in %v\n", peer.Short(), sess.Strategy(), pathText(sess), time.Since(start).Round(time.Millisecond))
	}
	var failed int
	for i := 1; i <= *count; i++ {
		if i > 1 {
			time.Sleep(*interval)
		}
		pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
		rtt, err := sess.Ping(pctx)
		pcancel()
		if err != nil {
			failed++
			ev.emit(map[string]any{"event": "timeout", "seq": i, "error": message(err)})
			if !pf.jsonOut {
				fmt.Printf("seq=%d error: %v\n", i, err)
			}
			continue
		}
		pong := connectedEvent(sess)
		pong["event"], pong["seq"], pong["rtt_ms"] = "pong", i, float64(rtt.Microseconds())/1000
		delete(pong, "remote")
		ev.emit(pong)
		if !pf.jsonOut {
			fmt.Printf("seq=%d rtt=%.2fms path=%s strategy=%s\n", i, float64(rtt.Microseconds())/1000, pathText(sess), sess.Strategy())
		}
	}
	if failed == *count {
		return fmt.Errorf("no answer to %d pings", failed)
	}
	return nil
}
