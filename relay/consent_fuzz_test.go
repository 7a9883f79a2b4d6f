package relay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
)

// FuzzConsentHello: hello with consent asked, on any answer; what the link writes
// after HELLO is the empty ALLOW, the ALLOW of each peer it allows and
// the consent PING (then only PONGs), and any error is a named one.
func FuzzConsentHello(f *testing.F) {
	fr := fuzzFrames()
	w := fr[8] // WELCOME with consent
	f.Add(append(bytes.Clone(w), appendFrame(nil, framePong, consentPing)...))
	f.Add(append(append(bytes.Clone(w), fr[2]...), appendFrame(nil, framePong, consentPing)...))
	f.Add(append(append(bytes.Clone(w), fr[4]...), fr[3]...))
	f.Fuzz(func(t *testing.T, in []byte) {
		var ctl bytes.Buffer
		l := &link{transport: "fuzz", h: &fuzzHandler{t: t}, log: slog.New(slog.DiscardHandler), ctl: &ctl,
			closeTransport: func() {}, done: make(chan struct{})}
		p := fuzzPeer(2)
		err := l.hello(context.Background(), "tok", true, func() []identity.PeerID { return []identity.PeerID{p} }, bytes.NewReader(in), func(time.Time) error { return nil })
		if err != nil {
			var se *ServerError
			if !errors.As(err, &se) && err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrProtocol) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		want := appendFrame(nil, frameHello, []byte("tok"))
		if l.consent {
			want = append(want, appendFrame(nil, frameAllow)...)
			want = append(want, appendFrame(nil, frameAllow, p[:])...)
			want = append(want, appendFrame(nil, framePing, consentPing)...)
		}
		if !bytes.HasPrefix(ctl.Bytes(), want) {
			t.Fatalf("wrote %x", ctl.Bytes())
		}
	})
}
