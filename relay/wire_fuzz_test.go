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

// Fuzz targets for what a relay link parses: frames (both sides), the
// client's handling of WELCOME, ERROR and the control frames, and tokens
// (docs/security.md, "Fuzzing").

func fuzzPeer(b byte) identity.PeerID {
	k, err := identity.KeyFromSeed(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		panic(err)
	}
	return k.ID()
}

// fuzzFrames is a valid stream of every frame type.
func fuzzFrames() [][]byte {
	p := fuzzPeer(1)
	return [][]byte{
		appendFrame(nil, frameHello, []byte(NewToken([]byte("s"), p, time.Unix(2e9, 0)))),
		appendFrame(nil, frameWelcome, []byte{0x05, 0xac, 0, 10}),
		appendFrame(nil, framePacket, p[:], []byte("quic pkt")), // small: the fuzzer minimizes what it finds, slowly for long inputs
		appendFrame(nil, frameNotice, p[:], []byte{noticeSessionLimit}),
		appendFrame(nil, framePing, []byte("12345678")),
		appendFrame(nil, framePong, []byte("12345678")),
		appendFrame(nil, frameAllow),
		appendFrame(nil, frameAllow, p[:]),
		appendFrame(nil, frameWelcome, []byte{0x05, 0xac, 0, 10, welcomeConsent}),
		appendFrame(nil, frameError, []byte{codeFull}, []byte("relay is full")),
	}
}

// FuzzReadFrame reads a byte stream as frames, reusing the buffer as the
// links do. Properties: only known types come out; no body is longer than
// maxFrameBody, and the buffer never grows past one frame; the bodies
// together are no longer than the input; errors are I/O errors or wrap
// ErrProtocol; re-encoded frames read back the same. (DATA frames of
// relayed streams may be longer: up to maxBody(frameData).)
func FuzzReadFrame(f *testing.F) {
	all := bytes.Join(fuzzFrames(), nil)
	for _, fr := range fuzzFrames() {
		f.Add(fr)
	}
	f.Add(all)
	f.Add([]byte{0, 0, 0})
	f.Add([]byte{frameAllow + 1, 0, 0})
	f.Add([]byte{framePacket, 0xff, 0xff})
	f.Add([]byte{framePacket, 0x05, 0xcc, 1, 2})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		var buf, out []byte
		total := 0
		type frame struct {
			typ  byte
			body []byte
		}
		var frames []frame
		for {
			typ, body, b, err := readFrame(r, buf)
			buf = b
			if cap(buf) > frameHeader+maxBody(frameData) {
				t.Fatalf("buffer grew to %d bytes", cap(buf))
			}
			if err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			if typ < frameHello || typ > lastFrameType || typ == frameChallenge || typ == frameResponse {
				t.Fatalf("unknown type 0x%02x returned", typ)
			}
			if len(body) > maxBody(typ) {
				t.Fatalf("body of %d bytes", len(body))
			}
			total += frameHeader + len(body)
			if total > len(in) {
				t.Fatalf("%d bytes of frames from %d bytes", total, len(in))
			}
			frames = append(frames, frame{typ, bytes.Clone(body)})
			out = appendFrame(out, typ, body)
		}
		r = bytes.NewReader(out)
		for i, want := range frames {
			typ, body, _, err := readFrame(r, nil)
			if err != nil || typ != want.typ || !bytes.Equal(body, want.body) {
				t.Fatalf("frame %d reads back as 0x%02x %x %v", i, typ, body, err)
			}
		}
		if _, _, _, err := readFrame(r, nil); err != io.EOF {
			t.Fatalf("re-encoded stream does not end: %v", err)
		}
	})
}

type fuzzHandler struct {
	t       *testing.T
	packets int
}

func (h *fuzzHandler) Packet(from identity.PeerID, pkt []byte) {
	if len(pkt) > maxFrameBody-identityLen {
		h.t.Fatalf("packet of %d bytes", len(pkt))
	}
	h.packets++
}

func (h *fuzzHandler) Notice(peer identity.PeerID, err error) {
	if err != ErrPeerNotConnected && err != ErrRelayFull && err != ErrNotAllowed {
		h.t.Fatalf("notice with error %v", err)
	}
}

// FuzzLinkControl plays a relay server's byte stream to a client link:
// hello (WELCOME or ERROR), then the control loop. Properties: hello
// succeeds only on a WELCOME and sets a keepalive below 2^16 s; a server
// error unwraps to a named error; the control loop ends with the link
// failed with an error; every PING is answered with a PONG with the same
// body, and the link writes nothing else.
func FuzzLinkControl(f *testing.F) {
	fr := fuzzFrames()
	f.Add(bytes.Join(fr[1:], nil))
	f.Add(bytes.Join(fr[1:6], nil))
	f.Add(fr[6])
	f.Add(append(bytes.Clone(fr[1]), framePacket, 0, 1, 9))
	f.Add(append(bytes.Clone(fr[1]), frameNotice, 0, 1, 9))
	f.Add(append(bytes.Clone(fr[1]), frameHello, 0, 0))
	f.Add([]byte{frameWelcome, 0, 3, 1, 2, 3})
	f.Add([]byte{frameError, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		var ctl bytes.Buffer
		h := &fuzzHandler{t: t}
		closed := 0
		l := &link{
			transport:      "fuzz",
			h:              h,
			log:            slog.New(slog.DiscardHandler),
			ctl:            &ctl,
			closeTransport: func() { closed++ },
			done:           make(chan struct{}),
		}
		r := bytes.NewReader(in)
		noDeadline := func(time.Time) error { return nil }
		err := l.hello(context.Background(), "tok", false, nil, r, noDeadline)
		hello := appendFrame(nil, frameHello, []byte("tok"))
		if !bytes.HasPrefix(ctl.Bytes(), hello) {
			t.Fatalf("hello wrote %x", ctl.Bytes())
		}
		ctl.Reset()
		if err != nil {
			var se *ServerError
			if errors.As(err, &se) {
				if u := se.Unwrap(); u == nil || se.Error() == "" {
					t.Fatalf("server error %v unwraps to nil", se)
				}
			} else if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrProtocol) {
				t.Fatalf("hello: unexpected error %v", err)
			}
			return
		}
		if in[0] != frameWelcome || l.keepalive < 0 || l.keepalive > 0xffff*time.Second {
			t.Fatalf("hello accepted frame 0x%02x, keepalive %v", in[0], l.keepalive)
		}
		rest := in[len(in)-r.Len():]
		l.readControl(r, noDeadline)
		if l.Err() == nil || closed != 1 {
			t.Fatalf("control loop ended with link error %v, transport closed %d times", l.Err(), closed)
		}
		// The pongs are the pings, in order.
		var pings []byte
		fr := bytes.NewReader(rest)
		for {
			typ, body, _, err := readFrame(fr, nil)
			if err != nil {
				break
			}
			if typ == framePing {
				pings = appendFrame(pings, framePong, body)
			}
			// The frames the control loop goes on after; any other
			// (an ERROR with a code, DETACH on a link that cannot
			// detach, a frame a server does not send) ends it.
			switch {
			case typ == framePacket, typ == frameNotice, typ == framePing, typ == framePong,
				typ == frameError && len(body) == 0:
				continue
			}
			break
		}
		if !bytes.Equal(ctl.Bytes(), pings) {
			t.Fatalf("link wrote %x, want the pongs %x", ctl.Bytes(), pings)
		}
	})
}

// FuzzCheckToken checks arbitrary relay tokens. Properties: the result is
// nil or a named error; an accepted token is refused for another peer and
// under other secrets; a token made by NewToken is accepted before its
// expiry, with the secret among others, and expired from its expiry on.
func FuzzCheckToken(f *testing.F) {
	secret := []byte("relay secret")
	now := time.Unix(1_800_000_000, 0)
	f.Add(secret, NewToken(secret, fuzzPeer(1), now.Add(time.Hour)), now.Unix())
	f.Add(secret, NewToken(secret, fuzzPeer(1), now.Add(-time.Hour)), now.Unix())
	f.Add([]byte{}, NewToken(nil, fuzzPeer(1), now), now.Unix())
	f.Add(secret, "", int64(0))
	f.Add(secret, ":", int64(0))
	f.Add(secret, "+5:abc", int64(1))
	f.Add(secret, "1:2:3", int64(0))
	f.Fuzz(func(t *testing.T, secret []byte, token string, unix int64) {
		peer, other := fuzzPeer(1), fuzzPeer(2)
		at := time.Unix(unix, 0)
		o := otherSecret(secret)
		err := CheckToken([][]byte{o, secret}, peer, token, at)
		switch {
		case err == nil:
			if CheckToken([][]byte{secret}, other, token, at) != ErrBadToken {
				t.Fatalf("token %q accepted for another peer", token)
			}
			if CheckToken([][]byte{o}, peer, token, at) != ErrBadToken && CheckToken([][]byte{secret}, peer, token, at) == nil {
				t.Fatalf("token %q accepted under two secrets", token)
			}
		case err == ErrTokenExpired, err == ErrBadToken:
		default:
			t.Fatalf("error %v is not a named one", err)
		}
		if CheckToken(nil, peer, token, at) != ErrBadToken {
			t.Fatalf("token %q accepted without secrets", token)
		}
		if unix > 0 && unix < 1<<40 {
			tok := NewToken(secret, peer, at)
			if err := CheckToken([][]byte{o, secret}, peer, tok, at.Add(-time.Second)); err != nil {
				t.Fatalf("fresh token %q refused: %v", tok, err)
			}
			if err := CheckToken([][]byte{secret}, peer, tok, at); err != ErrTokenExpired {
				t.Fatalf("token %q at its expiry: %v", tok, err)
			}
		}
	})
}

// otherSecret returns a different HMAC key: not secret with a zero byte
// appended, which HMAC treats as the same key (keys are zero-padded).
func otherSecret(secret []byte) []byte {
	if len(secret) == 0 {
		return []byte{1}
	}
	o := bytes.Clone(secret)
	o[len(o)-1] ^= 0xff
	return o
}
