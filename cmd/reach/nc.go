package main

// reach listen and reach dial: one stream between stdin/stdout and a peer,
// like netcat, with TCP's half-close (keep.go: listen --keep).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/stream"
)

// errInterrupted: SIGINT or SIGTERM ended the command (exit 130).
var errInterrupted = errors.New("interrupted")

// pipe copies stdin to c, half-closing c at stdin's EOF, and c to stdout,
// until both directions are done: a peer that half-closed its side (as
// `reach listen </dev/null` does at once) still gets the whole of stdin.
// It returns early with the error when a direction fails or the session
// ends (the peer aborted, was interrupted, or closed the stream).
func pipe(c *stream.Stream, stdin io.Reader, stdout io.Writer) error {
	return pipeWith(c, func() error {
		_, err := io.Copy(c, stdin)
		return err
	}, stdout)
}

// pipeWith is pipe with send writing the sending direction (nil at its
// end: pipeWith half-closes c).
func pipeWith(c *stream.Stream, send func() error, stdout io.Writer) error {
	up := make(chan error, 1)
	go func() {
		err := send()
		if err == nil {
			err = c.CloseWrite()
		}
		up <- err
	}()
	down := make(chan error, 1)
	go func() {
		_, err := io.Copy(stdout, c)
		down <- err
	}()
	done := c.Session().Done()
	for up != nil || down != nil {
		select {
		case err := <-up:
			if err != nil {
				return fmt.Errorf("sending: %w", err)
			}
			up = nil
		case err := <-down:
			if err != nil {
				return err
			}
			down = nil
		case <-done:
			done = nil
			// Reading from the stream ends at once now; reading stdin
			// may not (a terminal).
			if down != nil {
				if err := <-down; err != nil {
					return err
				}
				down = nil
			}
			if up != nil {
				select {
				case err := <-up:
					if err != nil {
						return fmt.Errorf("sending: %w", err)
					}
					up = nil
				case <-time.After(100 * time.Millisecond):
					if err := c.Session().Err(); err != nil {
						return err
					}
					return stream.ErrPeerClosed
				}
			}
		}
	}
	return nil
}

// abortOnSignal aborts sess and n when ctx (a signal context) ends:
// the peer learns at once (stream.ErrPeerInterrupted) instead of after
// its idle timeout. wait returns once that is done, if it happened.
func abortOnSignal(ctx context.Context, n *reach.Node, sess *stream.Session) (wait, stop func()) {
	done := make(chan struct{})
	stopf := context.AfterFunc(ctx, func() {
		defer close(done)
		sess.CloseWithError(uint64(stream.CodeInterrupted), "interrupted")
		n.Abort()
	})
	return func() { <-done }, func() { stopf() }
}

const listenHelp = `usage: reach listen [flags]

Registers with the server under this node's peer ID (printed on stderr as
"listening <peer-id>"), accepts one stream from the first peer that dials
it, and copies stdin to the stream and the stream to stdout, like nc -l,
with TCP's half-close: at the end of stdin it sends EOF and keeps reading.
It exits once both directions are done and the peer has read everything.
Ctrl-C (or SIGTERM) aborts the session, and the peer learns at once.

With --forward HOST:PORT it exposes a TCP service instead (like the
remote end of ssh -L): every stream any dialler opens (reach dial --local,
or a plain reach dial) is connected to a new TCP connection to HOST:PORT,
bytes copied both ways with half-close, many at once (--max-conns; more
are refused), until interrupted. Diallers cannot choose the target. When
the connection to HOST:PORT fails, the dialler's stream is aborted (reach
dial --local resets its TCP connection) and a "forward:" line is logged;
the listener goes on. It prints "forwarding streams to HOST:PORT" after
the listening line, then whom it serves.

Without --keep, a dialler that comes while the first is served is refused
at once (its dial fails: "the listener serves another dialler"). With
--keep it serves dialler after dialler, one at a time, like nc -lk, until
interrupted: the others wait their turn (at most 64 streams wait; more
are refused), each dialler's bytes reach stdout whole before the next
one's, and each gets the part of stdin that comes while it is served;
once stdin has ended, every later dialler gets the end of data at once
(reach listen --keep </dev/null >> log collects from many). A dialler that
fails is logged ("dialler PEER failed ...") and the next one served.

--allow PEER (repeatable) and --allow-file FILE (one peer ID a line; text
after # is a comment) restrict who may connect, with or without
--forward: other peers' introductions are refused (their dial fails at
once: "refused this node", with their peer ID to add) and a stream that
comes another way is closed with code 0x112; each refused peer is logged
("refused PEER ..."), at most once a minute. Without them any peer that
knows this node's ID may connect. With --supernode, the list is about who
may connect to this listener; the supernode forwards for any pair of peers
the server introduces (reach supernode --allow restricts that).

If another process registers the same key with the server, this one is
offline from then on: it says so and exits 1.

With --json, one event a line on stderr (stdout carries the stream):
connected, path (each time the session moves), closed; with --keep:
connected and dialler_done for each dialler, closed; with --forward:
forwarding, then connected for each dialler's session, forward_error for
each failed connection, closed; refused for each refused peer; see
docs/cli.md.
`

func runListen(args []string) error {
	fs := newFlagSet("listen", listenHelp)
	pf := peerFlags{jsonTo: os.Stderr}
	pf.register(fs, true)
	volunteer := fs.Bool("supernode", false, "also volunteer as a supernode (forward for peers that cannot punch through; see reach supernode)")
	forward := fs.String("forward", "", "connect every stream a dialler opens to a new TCP connection to `HOST:PORT`,\n"+
		"many at once, until interrupted (instead of stdin/stdout)")
	keep := fs.Bool("keep", false, "serve dialler after dialler on stdin/stdout, one at a time, until interrupted\n"+
		"(with --forward: always)")
	maxConns := fs.Int("max-conns", defaultMaxConns, "with --forward: streams carried at once; more are refused")
	var allowIDs, allowFiles multiFlag
	fs.Var(&allowIDs, "allow", "serve only this `PEER` (repeatable; default: any peer that knows this node's ID)")
	fs.Var(&allowFiles, "allow-file", "serve only the peers listed in `FILE`, one peer ID a line, # comments (repeatable)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("listen", "listen takes no arguments, got %q", fs.Arg(0))
	}
	ev := pf.events()
	allow, err := loadAllow(ev, allowIDs, allowFiles)
	if err != nil {
		return err
	}
	if *forward != "" {
		if err := forwardTarget(*forward); err != nil {
			return err
		}
		if *maxConns < 1 {
			return usagef("listen", "--max-conns must be at least 1, got %d", *maxConns)
		}
	}
	sig, stopSig := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSig()
	ctx, cancel := context.WithTimeout(sig, 30*time.Second)
	n, err := pf.nodeWith(ctx, func(c *reach.Config) {
		c.Supernode.Enable = *volunteer
		if allow != nil {
			c.Accept = allow.accept
		}
	})
	cancel()
	if err != nil {
		return interrupted(sig, err)
	}
	defer n.Abort() // after Close, a no-op
	fmt.Fprintf(os.Stderr, "listening %s\n", n.ID())
	go allow.watch(sig)
	if *volunteer {
		go reportSupernode(n)
	}
	if *forward != "" {
		return forwardListen(sig, n, ev, *forward, *maxConns, allow)
	}
	if *keep {
		return keepListen(sig, n, ev, allow, os.Stdin, os.Stdout)
	}
	var c *stream.Stream
	for {
		c, err = n.Accept(sig)
		if err != nil {
			err = interrupted(sig, replaced(n, err))
			ev.emit(map[string]any{"event": "error", "error": message(err)})
			return err
		}
		if allow.allows(c.Session().RemotePeer()) {
			break
		}
		refuse(c, allow)
	}
	go refuseOthers(sig, n, allow)
	sess := c.Session()
	ev.emit(connectedEvent(sess))
	wait, stop := abortOnSignal(sig, n, sess)
	defer stop()
	out := &countingWriter{w: os.Stdout}
	err = pipe(c, os.Stdin, out)
	switch {
	case sig.Err() != nil:
		wait()
		err = errInterrupted
	case out.err != nil:
		err = outputFailed(sess, out.err)
	case err == nil:
		// Close waits until the peer has read everything we sent.
		c.Close()
		err = interrupted(sig, n.Close())
	default:
		err = listenError(err)
	}
	ev.emit(map[string]any{"event": "closed", "error": errString(err)})
	return err
}

const dialHelp = `usage: reach dial [flags] PEER

Connects to PEER (the peer ID a reach listen printed) through the ladder
(direct, port mapping, hole punching, supernode, relay: the first path
that works) and copies stdin to the stream and the stream to stdout, like
nc, with TCP's half-close. It exits once both directions are done and the
peer has read everything. Ctrl-C (or SIGTERM) aborts the session, and the
peer learns at once.

With --local ADDR:PORT it forwards a local TCP port instead (like ssh
-L): it connects to PEER (a reach listen --forward), listens on ADDR:PORT
(a bare PORT means 127.0.0.1:PORT; port 0 picks a free one), prints
"forwarding ADDR:PORT -> PEER" on stderr, and carries each accepted TCP
connection on a stream of its own on that one session, with half-close,
many at once, until interrupted. A session that ended is dialled again at
the next connection. A connection the listener could not serve is reset,
with a "forward:" line on stderr.

With --json, one event a line on stderr (stdout carries the stream):
connected (strategy, path, elapsed_ms), path (each time the session
moves), closed; with --local: connected, forwarding (local, remote),
connected again for each new session, forward_error for each failed
connection, closed; see docs/cli.md.
`

func runDial(args []string) error {
	fs := newFlagSet("dial", dialHelp)
	pf := peerFlags{jsonTo: os.Stderr, caller: true}
	pf.register(fs, true)
	timeout := fs.Duration("timeout", 30*time.Second, "bound on connection setup")
	local := fs.String("local", "", "listen on TCP `ADDR:PORT` (a bare PORT: 127.0.0.1) and carry each connection\n"+
		"on a stream of its own to PEER, until interrupted (instead of stdin/stdout)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("dial", "dial takes one PEER, got %d arguments", fs.NArg())
	}
	if *local != "" {
		addr, err := localAddr(*local)
		if err != nil {
			return err
		}
		*local = addr
	}
	peer, err := identity.ParsePeerID(fs.Arg(0))
	if err != nil {
		return err
	}
	ev := pf.events()
	sig, stopSig := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSig()
	ctx, cancel := context.WithTimeout(sig, *timeout)
	defer cancel()
	start := time.Now()
	n, err := pf.node(ctx)
	if err != nil {
		err = interrupted(sig, err)
		ev.emit(map[string]any{"event": "error", "error": message(err)})
		return err
	}
	defer n.Abort() // after Close, a no-op
	sess, err := n.DialSession(ctx, peer)
	if err != nil {
		err = interrupted(sig, rejected(n, replaced(n, err)))
		ev.emit(map[string]any{"event": "error", "error": message(err)})
		return err
	}
	if *local != "" {
		cancel()
		connected := connectedEvent(sess)
		connected["elapsed_ms"] = time.Since(start).Milliseconds()
		ev.emit(connected)
		return forwardDial(sig, n, ev, peer, sess, *local, *timeout)
	}
	wait, stop := abortOnSignal(sig, n, sess)
	defer stop()
	c, err := sess.OpenStream(ctx)
	if err != nil {
		return interrupted(sig, err)
	}
	connected := connectedEvent(sess)
	connected["elapsed_ms"] = time.Since(start).Milliseconds()
	ev.emit(connected)
	out := &countingWriter{w: os.Stdout}
	err = pipe(c, os.Stdin, out)
	switch {
	case sig.Err() != nil:
		wait()
		err = errInterrupted
	case out.err != nil:
		err = outputFailed(sess, out.err)
	case err == nil:
		c.Close()
		err = interrupted(sig, n.Close())
	default:
		err = listenError(err)
	}
	ev.emit(map[string]any{"event": "closed", "error": errString(err)})
	return err
}

// interrupted is errInterrupted when a signal ended the command (and err
// is a consequence), else err.
func interrupted(sig context.Context, err error) error {
	if err != nil && sig.Err() != nil {
		return errInterrupted
	}
	return err
}
