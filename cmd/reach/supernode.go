package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/supernode"
)

const supernodeHelp = `usage: reach supernode [--key FILE] --server CS [--max-sessions N]
                       [--rate BYTES/s] [--total-rate BYTES/s] [--allow PEER]...
                       [--status 30s] [-v]

Runs a node that only volunteers as a supernode: it forwards (encrypted)
packets for pairs of peers that cannot punch through to each other, so the
hosted relay does not have to. Run it on a host that peers can reach from
outside: a public address, a full-cone NAT or a port forward of its UDP
port. The server admits it only after dialling it back.

Once admitted it prints exactly

    supernode <peer-id>

on stderr; if the server does not admit it, one line with the reason, and
it exits with status 1. Then, every --status interval, one line: whom it
forwards for and how much. SIGINT or SIGTERM stops it.

It keeps its peer ID: it uses the key given by --key, else $REACH_KEY,
else the default key (see reach id). Give it a key of its own if a
reach listen with the default key runs on the same host: two processes
with one key push each other off the server.
`

func runSupernode(args []string) error {
	fs := newFlagSet("supernode", supernodeHelp)
	var pf peerFlags
	pf.register(fs, false)
	var cfg supernode.Config
	var allow multiFlag
	fs.IntVar(&cfg.MaxSessions, "max-sessions", 8, "pairs of peers served at once")
	fs.IntVar(&cfg.SessionRate, "rate", 0, "bytes per second one peer may send through it (0: no limit)")
	fs.IntVar(&cfg.TotalRate, "total-rate", 0, "bytes per second for everyone together (0: no limit)")
	fs.Var(&allow, "allow", "serve only these peers (repeatable; default: any peer the server introduces)")
	every := fs.Duration("status", 30*time.Second, "how often to print a status line (0: never)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("supernode", "supernode takes no arguments, got %q", fs.Arg(0))
	}
	for _, a := range allow {
		id, err := identity.ParsePeerID(a)
		if err != nil {
			return fmt.Errorf("--allow %s: %w", a, err)
		}
		cfg.Allow = append(cfg.Allow, id)
	}
	cfg.Enable = true
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	n, err := pf.nodeWith(sctx, func(c *reach.Config) { c.Supernode = cfg })
	cancel()
	if err != nil {
		return err
	}
	defer n.Close()
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	st, err := n.WaitSupernode(wctx)
	cancel()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = errors.New("the server did not answer the volunteer offer within 15s (does it support supernodes?)")
		}
		return fmt.Errorf("not admitted: %w", err)
	}
	fmt.Fprintf(os.Stderr, "supernode %s\n", n.ID())
	slog.Debug("admitted", "observed", st.Observed)
	var tick <-chan time.Time
	if *every > 0 {
		t := time.NewTicker(*every)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick:
			fmt.Fprintln(os.Stderr, statusLine(n.Status().Supernode))
		}
	}
}

// statusLine is one line about what a node does as a supernode.
func statusLine(st supernode.Status) string {
	state := "admitted at " + st.Observed.String()
	if !st.Admitted {
		state = "not admitted"
		if st.Err != nil {
			state += ": " + st.Err.Error()
		}
	}
	var peers []string
	for _, p := range st.Peers {
		peers = append(peers, fmt.Sprintf("%s(%s %.1f MB)", p.Peer.Short(), p.Transport, float64(p.Bytes)/1e6))
	}
	if len(peers) == 0 {
		peers = []string{"none"}
	}
	return fmt.Sprintf("supernode: %s; %d pairs, %.1f MB forwarded, %d dropped; peers: %s",
		state, st.Sessions, float64(st.Bytes)/1e6, st.Drops, strings.Join(peers, " "))
}

// reportSupernode prints the server's verdict for `reach listen
// --supernode` (one line), then a status line when the node serves.
func reportSupernode(n *reach.Node) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	_, err := n.WaitSupernode(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "supernode: not admitted: %v\n", err)
		return
	}
	fmt.Fprintf(os.Stderr, "supernode %s\n", n.ID())
}
