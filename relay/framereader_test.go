package relay

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"
)

// choppy hands out its bytes in random pieces, with a deadline error
// (nothing read) now and then, as a TLS connection under a read deadline
// may.
type choppy struct {
	b   []byte
	rnd *rand.Rand
}

func (c *choppy) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	if c.rnd.IntN(4) == 0 {
		return 0, os.ErrDeadlineExceeded
	}
	n := min(len(p), len(c.b), 1+c.rnd.IntN(20000))
	copy(p, c.b[:n])
	c.b = c.b[n:]
	return n, nil
}

// TestFrameReader: frames of every size up to the largest, read through
// pieces and deadline errors, come out whole and in order, from a pooled
// buffer (a link that parks, released between frames as when it parks)
// and from an own one (a link that cannot park, its buffer grown for a
// stream's DATA frame).
func TestFrameReader(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	var stream []byte
	var want [][]byte
	var types []byte
	for range 2000 {
		typ, n := byte(framePacket), rnd.IntN(maxFrameBody+1)
		if rnd.IntN(5) == 0 {
			typ, n = frameData, rnd.IntN(streamHeader+streamChunk+1)
		}
		body := make([]byte, n)
		for i := range body {
			body[i] = byte(rnd.Uint32())
		}
		stream = appendFrame(stream, typ, body)
		want = append(want, body)
		types = append(types, typ)
	}
	for _, own := range []bool{false, true} {
		f := frameReader{own: own}
		r := &choppy{b: stream, rnd: rnd}
		for i := 0; i < len(want); {
			typ, body, err := f.next(r)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if f.empty() {
					f.release()
				}
				continue
			}
			if err != nil {
				t.Fatalf("own %v: frame %d: %v", own, i, err)
			}
			if typ != types[i] || !bytes.Equal(body, want[i]) {
				t.Fatalf("own %v: frame %d changed (type %d, %d bytes, want %d)", own, i, typ, len(body), len(want[i]))
			}
			i++
		}
		if _, _, err := f.next(r); err != io.EOF {
			t.Fatalf("own %v: after the last frame: %v, want EOF", own, err)
		}
		f.drop()
	}
	// A frame too large for its type is refused.
	f := frameReader{}
	bad := []byte{framePacket, 0xff, 0xff}
	if _, _, err := f.next(bytes.NewReader(bad)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("an oversized frame: %v, want ErrProtocol", err)
	}
}
