package main

// TCP port forwarding over reach sessions: reach listen --forward HOST:PORT
// connects each stream a dialler opens to HOST:PORT; reach dial --local
// ADDR:PORT PEER carries each TCP connection accepted on ADDR:PORT on a
// stream of its own to PEER. Bytes are copied both ways with TCP's
// half-close, like ssh -L.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/stream"
)

// Stream error codes of a forwarding listener, sent to the dialler when it
// gives up a stream before copying anything.
const (
	// codeForwardConnect: the listener could not connect to its target.
	codeForwardConnect = stream.CodeApplication + 0x10
	// codeForwardBusy: the listener already carries --max-conns streams.
	codeForwardBusy = stream.CodeApplication + 0x11
)

// Defaults of the forwarding flags.
const (
	defaultMaxConns       = 256              // listen --max-conns
	forwardConnectTimeout = 10 * time.Second // listen: connecting to the target
)

// logOut is where forwarding's human lines go: stderr (tests that run
// forwardListen in process send them to t.Log).
var logOut io.Writer = os.Stderr

// Named errors of forwarding.
var (
	// errForwardConnect: the listener's side could not connect to its
	// target (the dialler's stream was aborted with codeForwardConnect).
	errForwardConnect = errors.New("the listener could not connect to its forward target")
	// errForwardBusy: the listener refused the stream, at its --max-conns.
	errForwardBusy = errors.New("the listener is at its connection limit (--max-conns)")
)

// forwardError names what a listener's abort code means, for the
// dialler's log; other errors are returned as they are.
func forwardError(err error) error {
	var pe *stream.PeerError
	if errors.As(err, &pe) && pe.Code == codeForwardDenied {
		return errForwardDenied
	}
	if errors.As(err, &pe) && !pe.Session {
		switch pe.Code {
		case codeForwardConnect:
			return errForwardConnect
		case codeForwardBusy:
			return errForwardBusy
		}
	}
	return err
}

// splice copies between a TCP connection and a stream in both directions
// until both are done, passing each end of input on as a half-close
// (CloseWrite), then closes both. When either side fails (a reset, an
// abort, the session's end) it aborts the other: the stream with
// stream.Abort, the TCP connection with a reset (RST), so that an error is
// never passed on as a clean EOF. It returns the first error, from the
// stream side when both failed.
func splice(tc *net.TCPConn, s *stream.Stream) error {
	var (
		once     sync.Once
		firstErr error
	)
	fail := func(err error) {
		once.Do(func() {
			firstErr = err
			s.Abort()
			tc.SetLinger(0) // Close sends RST
			tc.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // TCP to stream
		defer wg.Done()
		if _, err := io.Copy(s, tc); err != nil {
			fail(err)
			return
		}
		if err := s.CloseWrite(); err != nil {
			fail(err)
		}
	}()
	go func() { // stream to TCP
		defer wg.Done()
		if _, err := io.Copy(tc, s); err != nil {
			fail(err)
			return
		}
		if err := tc.CloseWrite(); err != nil {
			fail(err)
		}
	}()
	wg.Wait()
	once.Do(func() {})
	tc.Close()
	s.Close()
	return firstErr
}

// forwardTarget checks a --forward HOST:PORT.
func forwardTarget(target string) error {
	host, port, err := net.SplitHostPort(target)
	if err != nil || host == "" || port == "" {
		return usagef("listen", "--forward wants HOST:PORT, got %q", target)
	}
	return nil
}

// localAddr reads a --local ADDR:PORT; a bare PORT is on 127.0.0.1, so
// that the forward is not open to the network by accident.
func localAddr(s string) (string, error) {
	if !strings.Contains(s, ":") {
		s = "127.0.0.1:" + s
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return "", usagef("dial", "--local wants ADDR:PORT or PORT, got %q", s)
	}
	return s, nil
}

// abortAll ends every session of n with CodeInterrupted (the peers learn
// at once) and aborts n.
func abortAll(n *reach.Node) {
	for _, s := range n.Sessions() {
		s.CloseWithError(uint64(stream.CodeInterrupted), "interrupted")
	}
	n.Abort()
}

// forwardListen serves reach listen --forward: each accepted stream from
// a dialler that allow allows is connected to a new TCP connection to
// target, at most maxConns at once, until sig ends (or the node is
// replaced). A stream from another peer is refused with
// codeForwardDenied, and its session closed.
func forwardListen(sig context.Context, n *reach.Node, ev *events, target string, maxConns int, allow *allowList) error {
	fmt.Fprintf(logOut, "forwarding streams to %s\n", target)
	fmt.Fprintf(logOut, "serving %s\n", allow.describe())
	ev.emit(map[string]any{"event": "forwarding", "target": target, "max_conns": maxConns, "allowed_peers": allowCount(allow)})
	slots := make(chan struct{}, maxConns)
	var (
		mu   sync.Mutex
		seen = map[*stream.Session]bool{}
		wg   sync.WaitGroup
	)
	stop := context.AfterFunc(sig, func() { abortAll(n) })
	defer stop()
	dialer := net.Dialer{Timeout: forwardConnectTimeout}
	for {
		c, err := n.Accept(sig)
		if err != nil {
			if sig.Err() != nil {
				wg.Wait()
				ev.emit(map[string]any{"event": "closed", "error": errString(errInterrupted)})
				return errInterrupted
			}
			err = replaced(n, err)
			ev.emit(map[string]any{"event": "error", "error": message(err)})
			return err
		}
		sess := c.Session()
		peer := sess.RemotePeer()
		if !allow.allows(peer) {
			// The introduction was refused already (Config.Accept);
			// this is a session that came another way (a direct path).
			refuse(c, allow)
			continue
		}
		mu.Lock()
		if !seen[sess] {
			seen[sess] = true
			ev.emit(connectedEvent(sess))
			context.AfterFunc(sess.Context(), func() {
				mu.Lock()
				delete(seen, sess)
				mu.Unlock()
			})
		}
		mu.Unlock()
		select {
		case slots <- struct{}{}:
		default:
			c.CloseWithError(codeForwardBusy)
			logForward(ev, peer, "", fmt.Errorf("refused a stream: %d connections open (--max-conns)", maxConns))
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			ctx, cancel := context.WithTimeout(sig, forwardConnectTimeout)
			tc, err := dialer.DialContext(ctx, "tcp", target)
			cancel()
			if err != nil {
				c.CloseWithError(codeForwardConnect)
				logForward(ev, peer, "", fmt.Errorf("connect %s: %w", target, unwrapOp(err)))
				return
			}
			if err := splice(tc.(*net.TCPConn), c); err != nil && sig.Err() == nil {
				logForward(ev, peer, "", err)
			}
		}()
	}
}

// unwrapOp drops a *net.OpError's "dial tcp 127.0.0.1:1: " part (the
// caller names the target itself).
func unwrapOp(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			return se.Err
		}
		return oe.Err
	}
	return err
}

// logForward reports a connection that failed: a line on stderr (a
// "forward_error" event with --json) naming the peer (listen) or the local
// connection (dial).
func logForward(ev *events, peer identity.PeerID, local string, err error) {
	e := map[string]any{"event": "forward_error", "error": message(err)}
	who := local
	if local != "" {
		e["local"] = local
	} else {
		e["peer"] = peer.String()
		who = "stream from " + peer.Short()
	}
	if ev.on {
		ev.emit(e)
		return
	}
	fmt.Fprintf(logOut, "forward: %s: %s\n", who, message(err))
}

// forwardDial serves reach dial --local: it listens on local and carries
// each accepted TCP connection on a stream of its own, on one session to
// peer (sess, already up; dialled again when it has ended), until sig
// ends.
func forwardDial(sig context.Context, n *reach.Node, ev *events, peer identity.PeerID, sess *reach.Session,
	local string, timeout time.Duration) error {
	ln, err := net.Listen("tcp", local)
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Fprintf(logOut, "forwarding %s -> %s\n", ln.Addr(), peer)
	ev.emit(map[string]any{"event": "forwarding", "local": ln.Addr().String(), "remote": peer.String()})
	stop := context.AfterFunc(sig, func() {
		ln.Close()
		abortAll(n)
	})
	defer stop()

	var mu sync.Mutex // holds sess; held while dialling again
	session := func() (*reach.Session, error) {
		mu.Lock()
		defer mu.Unlock()
		if sess != nil && sess.Context().Err() == nil {
			return sess, nil
		}
		ctx, cancel := context.WithTimeout(sig, timeout)
		defer cancel()
		start := time.Now()
		s, err := n.DialSession(ctx, peer)
		if err != nil {
			return nil, rejected(n, replaced(n, err))
		}
		sess = s
		connected := connectedEvent(s)
		connected["elapsed_ms"] = time.Since(start).Milliseconds()
		ev.emit(connected)
		return s, nil
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if sig.Err() != nil {
				ev.emit(map[string]any{"event": "closed", "error": errString(errInterrupted)})
				return errInterrupted
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		tc := conn.(*net.TCPConn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			from := tc.RemoteAddr().String()
			c, err := openForward(sig, session)
			if err != nil {
				tc.SetLinger(0)
				tc.Close()
				if sig.Err() == nil {
					logForward(ev, peer, from, err)
				}
				return
			}
			if err := splice(tc, c); err != nil && sig.Err() == nil {
				logForward(ev, peer, from, forwardError(err))
			}
		}()
	}
}

// openForward opens a stream on the session, dialling a new session once
// when the one it had ended meanwhile.
func openForward(ctx context.Context, session func() (*reach.Session, error)) (*stream.Stream, error) {
	for attempt := 0; ; attempt++ {
		s, err := session()
		if err != nil {
			return nil, err
		}
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := s.OpenStream(octx)
		cancel()
		if err == nil {
			return c, nil
		}
		if attempt == 1 || s.Context().Err() == nil {
			return nil, err
		}
	}
}
