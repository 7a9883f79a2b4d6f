package pathsock

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// InterceptToken routes by token among handlers that share a first byte
// and a source; unknown tokens and short datagrams are dropped; remove
// takes away only its own handler, and the last one the Intercept.
func TestInterceptToken(t *testing.T) {
	c := New(udpLoopback(t))
	from := netip.MustParseAddrPort("192.0.2.1:4950")
	got := make(chan string, 16)
	handler := func(name string) InterceptFunc {
		return func(b []byte, _ netip.AddrPort) (int, netip.AddrPort) {
			got <- name
			return 0, netip.AddrPort{}
		}
	}
	dgram := func(token uint64) []byte {
		b := []byte{0x2d}
		b = binary.BigEndian.AppendUint64(b, token)
		return append(b, "payload"...)
	}
	rmA := c.InterceptToken(0x2d, from, 1, handler("a"))
	rmB := c.InterceptToken(0x2d, from, 2, handler("b"))
	take := func(b []byte) (string, bool) {
		h := c.icpt.lookup(b[0], from)
		if h == nil {
			return "", false
		}
		h(b, from)
		select {
		case name := <-got:
			return name, true
		case <-time.After(10 * time.Millisecond):
			return "", true
		}
	}
	for _, tc := range []struct {
		b    []byte
		want string
	}{{dgram(1), "a"}, {dgram(2), "b"}, {dgram(3), ""}, {[]byte{0x2d, 0, 0}, ""}} {
		if name, ok := take(tc.b); !ok || name != tc.want {
			t.Errorf("datagram %x went to %q (intercepted %v), want %q", tc.b, name, ok, tc.want)
		}
	}
	// A newer handler for token 1; the old one's remove leaves it.
	rmA2 := c.InterceptToken(0x2d, from, 1, handler("a2"))
	rmA()
	if name, _ := take(dgram(1)); name != "a2" {
		t.Errorf("token 1 went to %q after the old handler's remove, want a2", name)
	}
	rmA2()
	rmB()
	if _, ok := take(dgram(2)); ok {
		t.Error("the Intercept stayed after the last handler's remove")
	}
	if n := len(c.tokens.byKey); n != 0 {
		t.Errorf("%d token demuxes left, want 0", n)
	}
}
