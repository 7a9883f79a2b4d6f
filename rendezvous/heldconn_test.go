package rendezvous

import (
	"bytes"
	"net"
	"testing"
)

// countConn counts the writes that reach it.
type countConn struct {
	net.Conn
	writes int
	got    bytes.Buffer
}

func (c *countConn) Write(b []byte) (int, error) {
	c.writes++
	return c.got.Write(b)
}

// TestHeldConn: writes go straight through unless held; held ones go out
// in one write, in order, at FlushWrites, and writes go through again.
func TestHeldConn(t *testing.T) {
	under := &countConn{}
	c := &heldConn{Conn: under}
	c.Write([]byte("a"))
	if under.writes != 1 {
		t.Fatalf("%d writes through, want 1", under.writes)
	}
	c.HoldWrites()
	for _, s := range []string{"b", "cc", "ddd"} {
		c.Write([]byte(s))
	}
	if under.writes != 1 {
		t.Fatalf("held writes reached the connection (%d writes)", under.writes)
	}
	if err := c.FlushWrites(); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("e"))
	if under.writes != 3 || under.got.String() != "abccddde" {
		t.Errorf("%d writes of %q, want 3 of %q", under.writes, under.got.String(), "abccddde")
	}
	if err := c.FlushWrites(); err != nil || under.writes != 3 {
		t.Errorf("a flush with nothing held wrote (%d writes, %v)", under.writes, err)
	}
}
