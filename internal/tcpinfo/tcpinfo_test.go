package tcpinfo

import (
	"net"
	"testing"
)

// TestRTT: a loopback TCP connection that carried a round trip has a
// round-trip time on Linux (zero elsewhere); a connection that is not TCP
// has none.
func TestRTT(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 1)
		c.Read(b)
		c.Write(b)
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{1})
	c.Read(make([]byte, 1))
	if got := RTT(c); Supported && got <= 0 || !Supported && got != 0 {
		t.Errorf("RTT of a loopback TCP connection: %v (supported: %v)", got, Supported)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := RTT(a); got != 0 {
		t.Errorf("RTT of a pipe: %v, want 0", got)
	}
}
