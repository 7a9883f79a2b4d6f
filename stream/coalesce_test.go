package stream

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// recordingConn records each Write.
type recordingConn struct {
	net.Conn
	writes [][]byte
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

func yamuxHeader(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderLen)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:8], 1)
	binary.BigEndian.PutUint32(h[8:12], length)
	return h
}

// TestCoalesceConn: a data frame's header goes out with its body in one
// write; a window update (no body) and a data frame without a body at
// once; each Write reports the bytes the caller gave it.
func TestCoalesceConn(t *testing.T) {
	rc := &recordingConn{}
	c := &coalesceConn{Conn: rc}
	body := bytes.Repeat([]byte("x"), 1000)
	steps := []struct {
		p     []byte
		wantN int
	}{
		{yamuxHeader(0, 1000), yamuxHeaderLen},  // held
		{body, len(body)},                       // with the header
		{yamuxHeader(1, 65536), yamuxHeaderLen}, // window update: at once
		{yamuxHeader(0, 0), yamuxHeaderLen},     // data, FIN only: at once
	}
	for i, st := range steps {
		if n, err := c.Write(st.p); n != st.wantN || err != nil {
			t.Fatalf("write %d: %d, %v; want %d", i, n, err, st.wantN)
		}
	}
	want := [][]byte{append(yamuxHeader(0, 1000), body...), yamuxHeader(1, 65536), yamuxHeader(0, 0)}
	if len(rc.writes) != len(want) {
		t.Fatalf("%d writes, want %d", len(rc.writes), len(want))
	}
	for i := range want {
		if !bytes.Equal(rc.writes[i], want[i]) {
			t.Errorf("write %d: %d bytes, want %d", i, len(rc.writes[i]), len(want[i]))
		}
	}
}

// TestYamuxWindow: a TCP path's stream window follows the handshake's
// round trip between the floor and the configured most (never below
// yamux's least).
func TestYamuxWindow(t *testing.T) {
	for _, tc := range []struct {
		hs   time.Duration
		want uint64
	}{
		{0, floorYamuxWindow},
		{200 * time.Microsecond, floorYamuxWindow},
		{20 * time.Millisecond, 20 * yamuxWindowRate / 1000},
		{80 * time.Millisecond, 80 * yamuxWindowRate / 1000},
		{time.Second, DefaultStreamReceiveWindow},
	} {
		if got := yamuxWindow(DefaultStreamReceiveWindow, tc.hs); got != tc.want {
			t.Errorf("handshake %v: window %d, want %d", tc.hs, got, tc.want)
		}
	}
	// A configured window below the floor is kept, down to yamux's least.
	if got := yamuxWindow(512<<10, 0); got != 512<<10 {
		t.Errorf("StreamReceiveWindow 512 KiB: window %d", got)
	}
	if got := yamuxWindow(64<<10, 0); got != minYamuxWindow {
		t.Errorf("StreamReceiveWindow 64 KiB: window %d, want yamux's least %d", got, minYamuxWindow)
	}
}
