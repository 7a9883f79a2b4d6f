package stream

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"
)

// pingHeaderWait bounds how long AcceptStream waits for a new stream's type
// byte. The opener sends it with the stream's first frame, so only a
// misbehaving peer makes AcceptStream wait this long.
const pingHeaderWait = 5 * time.Second

// pingSize is the payload of one ping.
const pingSize = 8

// ErrPingMismatch: the echo of a ping did not match what was sent.
var ErrPingMismatch = errors.New("stream: ping echo does not match")

// serviceType reads the type byte of an accepted stream. For the session's
// own services it returns their type; otherwise it returns streamTypeApp
// and leaves the stream as Read expects it (the type consumed and checked,
// or the failure recorded).
func (st *Stream) serviceType() byte {
	st.raw.SetReadDeadline(time.Now().Add(pingHeaderWait))
	defer st.raw.SetReadDeadline(time.Time{})
	st.hdrMu.Lock()
	defer st.hdrMu.Unlock()
	var b [1]byte
	n, err := io.ReadFull(rawReader{st}, b[:])
	if n == 1 && (b[0] == streamTypePing || b[0] == streamTypeBye || b[0] == streamTypeDrain) {
		return b[0]
	}
	switch {
	case n == 1 && b[0] == streamTypeApp:
		st.hdrDone.Store(true)
	case n == 1:
		st.hdrErr = fmt.Errorf("%w: type %#x", ErrBadStreamHeader, b[0])
		st.hdrFailed.Store(true)
		st.raw.abortRead()
		st.hdrDone.Store(true)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		st.hdrErr = io.EOF
		st.hdrFailed.Store(true)
		st.hdrDone.Store(true)
	}
	// Other errors (a slow peer): the first Read tries again.
	return streamTypeApp
}

// serveEcho answers a ping stream: everything read is written back, then
// the stream is closed.
func (st *Stream) serveEcho() {
	defer st.raw.closeWrite()
	st.raw.SetReadDeadline(time.Now().Add(time.Minute))
	io.CopyN(st.raw, st.raw, 64*pingSize)
}

// Ping measures the round trip to the peer at the application level: it
// opens a stream of the session's echo service, sends 8 random bytes and
// waits for them to come back. Every reach session answers pings.
func (s *Session) Ping(ctx context.Context) (time.Duration, error) {
	st, err := s.openStream(ctx, streamTypePing)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		st.raw.SetReadDeadline(dl)
		st.raw.SetWriteDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() {
		st.raw.SetReadDeadline(aLongTimeAgo)
		st.raw.SetWriteDeadline(aLongTimeAgo)
	})
	defer stop()
	out := make([]byte, pingSize)
	rand.Read(out)
	start := time.Now()
	if _, err := st.raw.Write(out); err != nil {
		return 0, fmt.Errorf("stream: ping: %w", err)
	}
	st.raw.closeWrite()
	in := make([]byte, pingSize)
	if _, err := io.ReadFull(st.raw, in); err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("stream: ping: %w", err)
	}
	rtt := time.Since(start)
	if string(in) != string(out) {
		return 0, ErrPingMismatch
	}
	return rtt, nil
}
