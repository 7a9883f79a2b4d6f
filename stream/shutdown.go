package stream

import (
	"context"
	"fmt"
)

func (s *Session) byeChan() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bye == nil {
		s.bye = make(chan struct{})
	}
	return s.bye
}

func (s *Session) peerSaidBye() {
	ch := s.byeChan()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.byeSeen {
		s.byeSeen = true
		close(ch)
	}
}

// Shutdown closes the session without losing data in flight. Closing a
// QUIC session discards stream data the peer has not acknowledged yet, so
// a program that has finished (every stream written, closed and read to
// EOF) calls Shutdown instead of Close: it tells the peer "done", waits
// until the peer says the same (the peer says it only once it has read
// everything, so by then everything each side sent has arrived), then
// closes. The peer's side must be running AcceptStream (a Node always
// does). When ctx ends first, the session is closed anyway and the error
// says so.
func (s *Session) Shutdown(ctx context.Context) error {
	peerDone := s.byeChan()
	st, err := s.openStream(ctx, streamTypeBye)
	if err == nil {
		st.CloseWrite()
	}
	select {
	case <-peerDone:
		err = nil
	case <-s.Done():
		// The peer closed first: it had everything it wanted.
		err = nil
	case <-ctx.Done():
		err = fmt.Errorf("stream: shutdown: the peer did not finish: %w", ctx.Err())
	}
	if st != nil {
		st.Close()
	}
	s.CloseWithError(0, "done")
	return err
}
