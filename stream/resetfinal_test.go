package stream

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// closedRaw is a QUIC stream of a session the peer closed with code: its
// final size is known (0), and its reads fail with the session's error,
// then (reset) with the stream's reset, as quic-go's do when a
// RESET_STREAM and the CONNECTION_CLOSE after it were both handled
// before the blocked read woke.
type closedRaw struct {
	code   quic.ApplicationErrorCode
	wasRst bool // the peer reset the stream before it closed the session
	reads  int
}

func (r *closedRaw) Read([]byte) (int, error) {
	r.reads++
	if r.wasRst && r.reads > 1 {
		return 0, &quic.StreamError{ErrorCode: quic.StreamErrorCode(r.code), Remote: true}
	}
	return 0, &quic.ApplicationError{ErrorCode: r.code, Remote: true}
}
func (r *closedRaw) Write(p []byte) (int, error)      { return len(p), nil }
func (r *closedRaw) SetReadDeadline(time.Time) error  { return nil }
func (r *closedRaw) SetWriteDeadline(time.Time) error { return nil }
func (r *closedRaw) closeWrite() error                { return nil }
func (r *closedRaw) abortRead()                       {}
func (r *closedRaw) reset(uint64)                     {}
func (r *closedRaw) onFinalSize(f func(int64))        { f(0) }
func (r *closedRaw) id() int64                        { return 4 }

// TestReadResetBeforeSessionClose: a stream the peer reset with a code
// and whose session it then closed reads as the peer's error with that
// code, not as a clean EOF (the reset's final size looked like a FIN's:
// cmd/reach's TestForwardDeniedStream read "" and no error once in CI),
// while a stream whose FIN came before the session closed still reads
// io.EOF.
func TestReadResetBeforeSessionClose(t *testing.T) {
	for _, c := range []struct {
		name  string
		reset bool
	}{{"reset", true}, {"fin", false}} {
		t.Run(c.name, func(t *testing.T) {
			st := (&Session{}).newStream(&closedRaw{code: 0x112, wasRst: c.reset})
			st.hdrDone.Store(true)
			_, err := st.Read(make([]byte, 16))
			var pe *PeerError
			switch {
			case c.reset && (!errors.As(err, &pe) || pe.Code != 0x112 || pe.Session):
				t.Fatalf("read: %v; want the peer's reset of the stream with code 0x112", err)
			case !c.reset && err != io.EOF:
				t.Fatalf("read: %v; want io.EOF (the FIN came, every byte was read)", err)
			}
		})
	}
}
