package pathsock

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/quic-go/quic-go"
)

// hsPath is a handshake-only path in memory (a rendezvous server's first
// flight): it forwards long-header packets and sends the others straight
// to data, when set (the address the server saw the peer at).
type hsPath struct {
	memPath
	from        *Conn
	data        netip.AddrPort
	long, short atomic.Int64
}

func (h *hsPath) HandshakeOnly() {}

func (h *hsPath) Send(b []byte) error {
	if b[0]&0x80 == 0 {
		h.short.Add(1)
		if h.data.IsValid() {
			_, err := h.from.udp.WriteToUDPAddrPort(b, h.data)
			return err
		}
		return nil
	}
	h.long.Add(1)
	return h.memPath.Send(b)
}

// TestHandshakeOverHandshakeOnlyPath: a session's handshake goes over a
// handshake-only path and its data never does: the listening side sends
// its short-header packets where the path says, the dialler to its direct
// address once it has one.
func TestHandshakeOverHandshakeOnlyPath(t *testing.T) {
	p := newPair(t)
	ab := &hsPath{memPath: memPath{to: p.b, as: p.bPeer}, from: p.a}
	ba := &hsPath{memPath: memPath{to: p.a, as: p.aPeer}, from: p.b, data: p.aReal}
	if err := p.a.SetFallback(p.aPeer, ab); err != nil {
		t.Fatal(err)
	}
	if err := p.b.SetFallback(p.bPeer, ba); err != nil {
		t.Fatal(err)
	}
	// b knows where a's packets will come from.
	if err := p.b.AddAlias(p.bPeer, p.aReal); err != nil {
		t.Fatal(err)
	}
	ta, tb := &quic.Transport{Conn: p.a}, &quic.Transport{Conn: p.b}
	// The handshake completes over the paths alone: a has no direct
	// address yet.
	client, server := session(t, ta, tb, p.aPeer)
	if ab.long.Load() == 0 || ba.long.Load() == 0 {
		t.Fatalf("handshake packets over the path: %d and %d", ab.long.Load(), ba.long.Load())
	}
	if p.a.Fallback(p.aPeer) {
		t.Fatal("Fallback moved to a handshake-only path")
	}
	// The answer came: a sends straight to b from now on.
	if err := p.a.SetDirect(p.aPeer, p.bReal); err != nil {
		t.Fatal(err)
	}
	before := ab.short.Load()
	echo(t, client, server, []byte("data never takes the server's path"))
	if n := ab.short.Load() - before; n != 0 {
		t.Errorf("a gave the handshake-only path %d short-header packets after it had a direct address", n)
	}
	if n := ba.short.Load(); n == 0 {
		t.Errorf("b's short-header packets did not go where its path said")
	}
	if got := server.RemoteAddr().(interface{ String() string }).String(); got != p.bPeer.String() {
		t.Errorf("the server sees %v, want the virtual %v (no migration)", got, p.bPeer)
	}
	// The path is the peer's no more once the session is up.
	p.b.ClearFallback(p.bPeer, ba)
	if _, fwd, _ := p.b.Current(p.bPeer); fwd != nil {
		t.Fatalf("ClearFallback left %v", fwd)
	}
}

// TestSetName: an anonymous address takes a name, from an address that
// had it if need be; a named or adopted one cannot be renamed.
func TestSetName(t *testing.T) {
	c, _ := listen(t)
	anon, _ := c.AddPeer()
	old, _ := c.Key("peer")
	if err := c.SetName(anon, "peer"); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Lookup("peer"); got != anon {
		t.Fatalf("Lookup = %v, want %v", got, anon)
	}
	if c.Name(old) != "" {
		t.Fatalf("the old address kept its name")
	}
	if err := c.SetName(anon, "other"); !errors.Is(err, ErrNamed) {
		t.Fatalf("renaming: %v, want ErrNamed", err)
	}
	real := netip.MustParseAddrPort("192.0.2.1:9")
	if _, err := c.Adopt(real, "adopted"); err != nil {
		t.Fatal(err)
	}
	other, _ := c.AddPeer()
	if err := c.SetName(other, "adopted"); !errors.Is(err, ErrNamed) {
		t.Fatalf("taking an adopted name: %v, want ErrNamed", err)
	}
	if err := c.SetName(netip.MustParseAddrPort("240.9.9.9:1"), "x"); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("unknown: %v", err)
	}
}
