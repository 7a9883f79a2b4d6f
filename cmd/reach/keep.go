package main

// reach listen --keep: dialler after dialler on stdin/stdout, one at a
// time, like nc -lk; and the plain listener's refusal of a second dialler
// while it serves the first.

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/stream"
)

// codeListenBusy: a listener without --keep serves one dialler, and a
// stream from another is closed with this code (before anything is read,
// so nothing the dialler sent is taken and dropped).
const codeListenBusy = codeForwardConnect + 3

// errListenBusy: the dialler's stream was refused by a listener busy with
// another dialler.
var errListenBusy = errors.New("the listener serves another dialler (reach listen serves one; reach listen --keep serves them in turn)")

// stdinFeed is stdin read once, in chunks, for the diallers listen --keep
// serves in turn: each takes what comes while it is served, what one did
// not take (its stream failed) goes to the next, and once stdin has ended
// every later dialler gets the end of data at once.
type stdinFeed struct {
	chunks  chan []byte // closed at the end of stdin
	err     error       // a read error other than EOF; set before chunks is closed
	pending []byte      // read but not yet written; owned by the turn being served
}

// feedChunk is the most a stdinFeed reads ahead (one chunk, held until a
// dialler takes it).
const feedChunk = 32 << 10

func newStdinFeed(r io.Reader) *stdinFeed {
	f := &stdinFeed{chunks: make(chan []byte)}
	go func() {
		for {
			buf := make([]byte, feedChunk)
			n, err := r.Read(buf)
			if n > 0 {
				f.chunks <- buf[:n]
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					f.err = fmt.Errorf("%w: %w", errReadStdin, err)
				}
				close(f.chunks)
				return
			}
		}
	}()
	return f
}

// errReadStdin: reading stdin failed (not at its end): listen --keep
// cannot go on.
var errReadStdin = errors.New("reading stdin")

// errTurnOver: the dialler's turn ended before stdin did.
var errTurnOver = errors.New("the dialler's turn is over")

// sendTo writes stdin to c until stdin ends (nil: the caller half-closes)
// or stop is closed (errTurnOver) or a write fails; bytes a failed write
// did not take stay for the next dialler. Only one sendTo runs at a time.
func (f *stdinFeed) sendTo(c io.Writer, stop <-chan struct{}) error {
	for {
		if len(f.pending) == 0 {
			select {
			case b, ok := <-f.chunks:
				if !ok {
					return f.err
				}
				f.pending = b
			case <-stop:
				return errTurnOver
			}
		}
		n, err := c.Write(f.pending)
		f.pending = f.pending[n:]
		if err != nil {
			return err
		}
	}
}

// countingWriter counts what reaches w and keeps w's first error, to tell
// a failing stdout (fatal for the listener) from a failing dialler.
type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// keepListen serves reach listen --keep: it accepts the streams of the
// diallers allow allows one at a time (others wait in the node's accept
// queue, Config.AcceptQueue, and beyond it are refused), copies each to
// stdout whole before the next, and gives each the part of stdin that
// comes while it is served. A dialler that fails is logged and the next
// one served; it returns when sig ends (errInterrupted), stdout fails or
// the node is replaced.
func keepListen(sig context.Context, n *reach.Node, ev *events, allow *allowList, stdin io.Reader, stdout io.Writer) error {
	fmt.Fprintf(logOut, "serving %s, one dialler at a time, until interrupted\n", allow.describe())
	feed := newStdinFeed(stdin)
	stop := context.AfterFunc(sig, func() { abortAll(n) })
	defer stop()
	closed := func(err error) error {
		ev.emit(map[string]any{"event": "closed", "error": errString(err)})
		return err
	}
	for {
		c, err := n.Accept(sig)
		if err != nil {
			if sig.Err() != nil {
				return closed(errInterrupted)
			}
			return closed(replaced(n, err))
		}
		sess := c.Session()
		peer := sess.RemotePeer()
		if !allow.allows(peer) {
			refuse(c, allow)
			continue
		}
		ev.emit(connectedEvent(sess))
		out := &countingWriter{w: stdout}
		var sent int64
		turnOver := make(chan struct{})
		sending := make(chan struct{})
		err = pipeWith(c, func() error {
			defer close(sending)
			cw := &countingWriter{w: c}
			defer func() { sent = cw.n }()
			return feed.sendTo(cw, turnOver)
		}, out)
		close(turnOver)
		if err != nil {
			// Both directions end now: a sendTo blocked in Write returns.
			c.Abort()
		} else {
			c.Close()
		}
		<-sending
		if sig.Err() != nil {
			return closed(errInterrupted)
		}
		if out.err != nil {
			return closed(outputFailed(sess, out.err))
		}
		if errors.Is(err, errReadStdin) {
			return closed(err)
		}
		turnDone(ev, peer, out.n, sent, listenError(err))
	}
}

// turnDone reports the end of one dialler's turn: a line on stderr and a
// dialler_done event.
func turnDone(ev *events, peer identity.PeerID, received, sent int64, err error) {
	if err != nil {
		fmt.Fprintf(logOut, "dialler %s failed after %s received, %s sent: %s\n", peer.Short(), humanBytes(received), humanBytes(sent), message(err))
	} else {
		fmt.Fprintf(logOut, "dialler %s done: %s received, %s sent\n", peer.Short(), humanBytes(received), humanBytes(sent))
	}
	ev.emit(map[string]any{"event": "dialler_done", "peer": peer.String(), "received": received, "sent": sent, "error": errString(err)})
}

// refuseOthers closes, until n is closed or ctx ends, every stream but
// the one a plain listener serves, with codeListenBusy (peers allow does
// not allow are refused as such), so that a second dialler fails at once
// instead of having its data taken and dropped.
func refuseOthers(ctx context.Context, n *reach.Node, allow *allowList) {
	for {
		c, err := n.Accept(ctx)
		if err != nil {
			return
		}
		if !allow.allows(c.Session().RemotePeer()) {
			refuse(c, allow)
			continue
		}
		c.CloseWithError(codeListenBusy)
		fmt.Fprintf(logOut, "refused a stream from %s: already serving a dialler (--keep serves them in turn)\n", c.Session().RemotePeer().Short())
	}
}

// listenError names what a peer's error code means on stdin/stdout (listen,
// dial): forwardError's, codeListenBusy and codeOutputFailed.
func listenError(err error) error {
	var pe *stream.PeerError
	if errors.As(err, &pe) && !pe.Session && pe.Code == codeListenBusy {
		return errListenBusy
	}
	if errors.As(err, &pe) && pe.Session && pe.Code == codeOutputFailed {
		return &outputError{reason: pe.Reason}
	}
	return forwardError(err)
}
