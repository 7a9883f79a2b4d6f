package stream

// Closing without losing data, aborting, and the errors a peer's close or
// abort gives.
//
// QUIC discards a stream's unread data when its connection closes, so a
// session cannot simply close once its streams are closed: the peer may
// not have read what this side wrote. Session.Close therefore asks the
// peer first, on a "drain" stream (type 0x03):
//
//	closer -> peer: uvarint n, then n uvarint stream IDs, then FIN
//	peer -> closer: one byte 0x00 once it has finished reading, then FIN
//
// The IDs are the closer's streams that carry nothing from it (no data
// was written on them and their write side is still open, so not even a
// FIN is on its way): the peer need not wait for those. A FIN counts: a
// peer reading the stream waits for its EOF (a listener with nothing to
// send half-closes at once, and its dialler must read EOF, not the
// session's end). The peer
// answers once every other stream it holds has finished reading: read to
// EOF (on QUIC everything but the EOF is enough: the final size tells),
// failed, or closed by its application. The closer then closes the
// session. Streams the closer opened reach the peer before the drain
// stream (both backends hand streams to AcceptStream in the order they
// were opened), so the peer knows every stream it has to wait for.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
)

// ErrorCode is an application error code: the code with which a stream is
// aborted (Stream.CloseWithError) or a session closed
// (Session.CloseWithError). The peer's Read and Write calls then fail with
// a *PeerError carrying it. Codes below CodeApplication are reach's own.
type ErrorCode uint64

// Error codes.
const (
	// CodeNone is a normal close: a session's Close, or a stream's Close
	// while the peer was still sending (ErrPeerClosed).
	CodeNone ErrorCode = 0
	// CodeAborted: Abort, or a Close that gave up after its timeout
	// (ErrPeerAborted).
	CodeAborted ErrorCode = 1
	// CodeInterrupted: the peer's program was interrupted, for example by
	// Ctrl-C (ErrPeerInterrupted).
	CodeInterrupted ErrorCode = 2
	// CodeRefused: the peer refused the stream before reading any of it,
	// its accept queue being full (ErrPeerRefused).
	CodeRefused ErrorCode = 3
	// CodeApplication is the first code free for applications and for the
	// packages built on this one.
	CodeApplication ErrorCode = 0x100
)

// Named errors of closing. Test with errors.Is.
var (
	// ErrPeerClosed: the peer closed the stream while this side was still
	// writing, or closed the session while this side was still using it.
	ErrPeerClosed = errors.New("stream: the peer closed the connection")
	// ErrPeerAborted: the peer aborted the stream or the session; data in
	// flight is lost.
	ErrPeerAborted = errors.New("stream: the peer aborted the connection")
	// ErrPeerInterrupted: the peer's program was interrupted (Ctrl-C) and
	// closed the session.
	ErrPeerInterrupted = errors.New("stream: the peer was interrupted")
	// ErrPeerRefused: the peer refused the stream unread (its application
	// was not accepting streams fast enough); nothing written on it was
	// delivered.
	ErrPeerRefused = errors.New("stream: the peer refused the stream (its accept queue was full)")
	// ErrCloseTimeout: Session.Close waited Config.CloseTimeout for the
	// peer to read what this side wrote, then closed anyway; the peer may
	// have lost the unread part.
	ErrCloseTimeout = errors.New("stream: close: the peer did not finish reading in time")
)

// PeerError is the error of a Read or Write after the peer aborted the
// stream or closed the session. errors.Is matches it against
// ErrPeerClosed, ErrPeerAborted, ErrPeerInterrupted or ErrPeerRefused by
// its code; it unwraps to the transport's error.
type PeerError struct {
	// Code is the peer's error code.
	Code ErrorCode
	// Session: the peer closed the whole session, not only this stream.
	Session bool
	// Reason is the peer's reason for closing the session (QUIC only).
	Reason string
	// Err is the transport's error (a *quic.StreamError,
	// *quic.ApplicationError or yamux.ErrConnectionReset).
	Err error
}

func (e *PeerError) Error() string {
	what := "stream"
	if e.Session {
		what = "session"
	}
	var s string
	switch e.Code {
	case CodeNone:
		s = "stream: the peer closed the " + what
	case CodeAborted:
		s = "stream: the peer aborted the " + what
	case CodeInterrupted:
		s = "stream: the peer was interrupted"
	case CodeRefused:
		s = "stream: the peer refused the " + what + " (its accept queue was full)"
	default:
		s = fmt.Sprintf("stream: the peer closed the %s with error code %#x", what, uint64(e.Code))
	}
	if e.Reason != "" && e.Code != CodeInterrupted {
		s += " (" + e.Reason + ")"
	}
	return s
}

func (e *PeerError) Unwrap() error { return e.Err }

// Is reports whether target is the named error of e's code.
func (e *PeerError) Is(target error) bool {
	switch target {
	case ErrPeerClosed:
		return e.Code == CodeNone
	case ErrPeerAborted:
		return e.Code == CodeAborted
	case ErrPeerInterrupted:
		return e.Code == CodeInterrupted
	case ErrPeerRefused:
		return e.Code == CodeRefused
	}
	return false
}

// peerError turns the transport's report of a remote close or abort into
// a *PeerError; other errors pass unchanged.
func peerError(err error) error {
	var pe *PeerError
	if err == nil || errors.As(err, &pe) {
		return err
	}
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote {
		return &PeerError{Code: ErrorCode(se.ErrorCode), Err: err}
	}
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote {
		return &PeerError{Code: ErrorCode(ae.ErrorCode), Session: true, Reason: ae.ErrorMessage, Err: err}
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// CloseWithError closes the stream at once in both directions and gives
// the peer code: unlike Close, data written but not yet delivered is
// discarded, and the peer's Read and Write calls fail with a *PeerError
// carrying code. On TLS+yamux sessions too (a yamux RST carrying the
// code; a peer running a reach from before that sees CodeAborted's
// error, and codes of 2^32-1 and up arrive as CodeAborted). After Close it
// does nothing.
func (s *Stream) CloseWithError(code ErrorCode) error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.raw.SetReadDeadline(aLongTimeAgo)
		s.raw.SetWriteDeadline(aLongTimeAgo)
		s.raw.reset(uint64(code))
		s.wmu.Lock()
		s.wclosed = true
		s.wmu.Unlock()
		s.readEnded()
		s.writeEnded()
	})
	return nil
}

// Abort is CloseWithError(CodeAborted): the peer sees ErrPeerAborted.
func (s *Stream) Abort() error { return s.CloseWithError(CodeAborted) }

// track registers an application stream until both its directions are
// over; false once Close has begun.
func (s *Session) track(st *Stream) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.live[st] = struct{}{}
	return true
}

// rawRead reads from the backend stream, counting what it consumed.
func (s *Stream) rawRead(p []byte) (int, error) {
	n, err := s.raw.Read(p)
	if n > 0 {
		s.consumed.Add(int64(n))
		s.checkConsumed()
	}
	return n, err
}

type rawReader struct{ s *Stream }

func (r rawReader) Read(p []byte) (int, error) { return r.s.rawRead(p) }

// checkConsumed ends reading once everything the peer sends has been
// read: only EOF is left, which the application need not read for the
// peer's Close to be satisfied.
func (s *Stream) checkConsumed() {
	if s.allRead() {
		s.readEnded()
	}
}

// allRead: the peer's final size is known and everything up to it has
// been read.
func (s *Stream) allRead() bool {
	f := s.final.Load()
	return f >= 0 && s.consumed.Load() >= f
}

// isReset: err is the peer's (or our) abandoning of the stream.
func isReset(err error) bool {
	var se *quic.StreamError
	return errors.As(err, &se) || errors.Is(err, yamux.ErrConnectionReset)
}

func (s *Stream) readFailed(err error) {
	if !isTimeout(err) {
		s.readEnded()
	}
}

// readEnded records that nothing more will be read from the stream.
func (s *Stream) readEnded() {
	s.readOnce.Do(func() {
		close(s.readEnd)
		s.forgetIfDone()
	})
}

// writeEnded records that nothing more will be written to the stream.
func (s *Stream) writeEnded() {
	if s.wend.CompareAndSwap(false, true) {
		s.forgetIfDone()
	}
}

func (s *Stream) forgetIfDone() {
	if !s.wend.Load() {
		return
	}
	select {
	case <-s.readEnd:
	default:
		return
	}
	s.sess.mu.Lock()
	delete(s.sess.live, s)
	s.sess.mu.Unlock()
}

// Close closes the session without losing what this side wrote: it closes
// every stream still open (as Stream.Close does: data written so far is
// still sent, then EOF), waits until the peer has read everything this
// side wrote, at most Config.CloseTimeout (DefaultCloseTimeout, 10 s),
// then closes the session. When the timeout passes first, the session is
// aborted (the peer sees ErrPeerAborted) and Close returns an error
// wrapping ErrCloseTimeout. A session on which nothing was ever written
// closes at once. The peer must be running AcceptStream (a Node always
// does). From the start of Close, OpenStream fails and streams the peer
// opens are closed. Concurrent and later calls wait for the first and
// return its result. Abort or CloseWithError end a waiting Close.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.drain()
		close(s.closeDone)
	})
	<-s.closeDone
	return s.closeErr
}

// Abort closes the session at once, discarding what the peer has not
// read yet: the peer's Read and Write calls fail with ErrPeerAborted.
func (s *Session) Abort() error {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	return s.CloseWithError(uint64(CodeAborted), "")
}

// Err returns nil while the session is open, then why it ended: a
// *PeerError when the peer closed or aborted it (errors.Is
// ErrPeerInterrupted, ...), else the transport's reason (an idle timeout,
// this side's close).
func (s *Session) Err() error {
	ctx := s.b.context()
	if ctx.Err() == nil {
		return nil
	}
	return peerError(context.Cause(ctx))
}

// drain is Close's work.
func (s *Session) drain() error {
	s.mu.Lock()
	s.closing = true
	var open []*Stream
	var skip []int64
	for st := range s.live {
		open = append(open, st)
		if !st.wrote.Load() {
			skip = append(skip, st.raw.id())
		}
	}
	s.mu.Unlock()
	for _, st := range open {
		st.Close()
	}
	if s.closeTimeout < 0 || !s.wrote.Load() || s.b.context().Err() != nil {
		return s.CloseWithError(uint64(CodeNone), "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.closeTimeout)
	defer cancel()
	// Someone must accept the peer's streams meanwhile: its own drain
	// request (when both sides close at once) and its pings; AcceptStream
	// closes the peer's new application streams while closing.
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if _, err := s.AcceptStream(ctx); err != nil {
				return
			}
		}
	})
	defer wg.Wait()
	err := s.askDrain(ctx, skip)
	if errors.Is(err, ErrCloseTimeout) {
		s.CloseWithError(uint64(CodeAborted), "close timeout")
	} else {
		s.CloseWithError(uint64(CodeNone), "")
	}
	cancel()
	return err
}

// maxDrainList bounds the stream IDs of one drain request the peer reads.
const maxDrainList = 1 << 16

// askDrain sends the drain request and waits for the answer, until ctx
// ends or the session closes.
func (s *Session) askDrain(ctx context.Context, skip []int64) error {
	st, err := s.openStream(ctx, streamTypeDrain)
	if err != nil {
		return s.drainFailed(ctx, err)
	}
	defer st.raw.abortRead()
	if len(skip) > maxDrainList {
		skip = skip[:maxDrainList] // the peer waits for the rest too: slower, never lossy
	}
	buf := binary.AppendUvarint(nil, uint64(len(skip)))
	for _, id := range skip {
		buf = binary.AppendUvarint(buf, uint64(id))
	}
	dl, _ := ctx.Deadline()
	st.raw.SetWriteDeadline(dl)
	st.raw.SetReadDeadline(dl)
	if _, err := st.raw.Write(buf); err != nil {
		return s.drainFailed(ctx, err)
	}
	st.raw.closeWrite()
	var b [1]byte
	if _, err := io.ReadFull(st.raw, b[:]); err != nil {
		return s.drainFailed(ctx, err)
	}
	return nil
}

// drainFailed explains why no answer came: the peer closed the session
// first (nil for a normal close: it had what it wanted), the timeout, or
// another failure.
func (s *Session) drainFailed(ctx context.Context, err error) error {
	if ctx.Err() != nil || isTimeout(err) {
		return fmt.Errorf("%w (%v)", ErrCloseTimeout, s.closeTimeout)
	}
	var pe *PeerError
	if err = peerError(err); errors.As(err, &pe) && pe.Session {
		if pe.Code == CodeNone {
			return nil
		}
		return fmt.Errorf("stream: close: %w", pe)
	}
	// The session may be ending under us; the backend may not know yet.
	select {
	case <-s.Done():
	case <-time.After(100 * time.Millisecond):
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil // the peer ends the drain stream unanswered only when its session ends
		}
		return fmt.Errorf("stream: close: %w", err)
	}
	if cause := peerError(context.Cause(s.b.context())); errors.As(cause, &pe) && pe.Code != CodeNone {
		return fmt.Errorf("stream: close: %w", pe)
	}
	return nil
}

// serveDrain answers the peer's drain request once this side has finished
// reading every stream the peer may have written to.
func (s *Session) serveDrain(st *Stream) {
	defer st.raw.closeWrite()
	st.raw.SetReadDeadline(time.Now().Add(pingHeaderWait))
	r := bufio.NewReader(io.LimitReader(st.raw, (maxDrainList+1)*binary.MaxVarintLen64))
	skip := map[int64]bool{}
	if n, err := binary.ReadUvarint(r); err == nil {
		for range min(n, maxDrainList) {
			id, err := binary.ReadUvarint(r)
			if err != nil {
				break
			}
			skip[int64(id)] = true
		}
	}
	st.raw.abortRead()
	s.mu.Lock()
	var wait []*Stream
	for ls := range s.live {
		if !skip[ls.raw.id()] {
			wait = append(wait, ls)
		}
	}
	s.mu.Unlock()
	for _, ls := range wait {
		select {
		case <-ls.readEnd:
		case <-s.Done():
			return
		}
	}
	st.raw.SetWriteDeadline(time.Now().Add(pingHeaderWait))
	st.raw.Write([]byte{0})
}
