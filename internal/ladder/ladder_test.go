package ladder

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testHost is a node's host without servers, on a loopback socket.
func testHost(t *testing.T) *rung.Host {
	t.Helper()
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := sock.Listen(sock.Config{Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return &rung.Host{
		Key: k, Socket: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Context: ctx, Go: func(f func()) { go f() }, Local: true,
		Server:   func() rendezvous.ServerAddr { return rendezvous.ServerAddr{} },
		Observed: func() netip.AddrPort { return netip.AddrPort{} },
		Accepted: func(*stream.Session) bool { return false },
		Event:    func(rung.Event) {},
	}
}

func closeAll(l *Ladder) {
	for _, r := range l.All {
		r.Close()
	}
}

func TestBuild(t *testing.T) {
	want := []string{"direct", "direct-tcp", "upnp", "holepunch", "holepunch-tcp", "supernode", "turn", "relay"}
	if !slices.Equal(Names(), want) {
		t.Fatalf("Names = %v, want %v", Names(), want)
	}
	h := testHost(t)
	l, err := Build(h, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(l)
	var got []string
	for i, e := range l.Dial {
		got = append(got, e.Rung.Name())
		if l.All[i] != e.Rung {
			t.Errorf("Dial[%d] is not All[%d]", i, i)
		}
		if e.Forwards != Forwards(e.Rung.Name()) {
			t.Errorf("%s: Forwards %v in the entry, %v in the table", e.Rung.Name(), e.Forwards, Forwards(e.Rung.Name()))
		}
		if e.HeadStart <= 0 {
			t.Errorf("%s: head start %v", e.Rung.Name(), e.HeadStart)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("default dial ladder %v, want %v", got, want)
	}
	for _, n := range []string{"supernode", "turn", "relay"} {
		if !Forwards(n) {
			t.Errorf("%s does not forward", n)
		}
	}
	for _, n := range []string{"direct", "direct-tcp", "upnp", "holepunch", "nonsense"} {
		if Forwards(n) {
			t.Errorf("%s forwards", n)
		}
	}
	var better []string
	for _, e := range l.Better() {
		better = append(better, e.Rung.Name())
	}
	if !slices.Equal(better, []string{"direct", "direct-tcp", "upnp", "holepunch", "holepunch-tcp"}) {
		t.Errorf("Better = %v", better)
	}
}

// TestBuildSubset: Config.Strategies restricts the dial ladder, keeps the
// table's order, and leaves every rung serving the node's peers.
func TestBuildSubset(t *testing.T) {
	l, err := Build(testHost(t), Options{HeadStart: 50 * time.Millisecond}, []string{"relay", "direct"})
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(l)
	if len(l.All) != len(table) {
		t.Errorf("All has %d rungs, want %d", len(l.All), len(table))
	}
	if len(l.Dial) != 2 || l.Dial[0].Rung.Name() != "direct" || l.Dial[1].Rung.Name() != "relay" {
		t.Fatalf("dial ladder %v", l.Dial)
	}
	if l.Dial[0].HeadStart != 50*time.Millisecond {
		t.Errorf("direct head start %v, want Options.HeadStart", l.Dial[0].HeadStart)
	}
}

func TestBuildUnknown(t *testing.T) {
	_, err := Build(testHost(t), Options{}, []string{"direct", "teleport"})
	if !errors.Is(err, ErrUnknown) {
		t.Fatalf("err = %v, want ErrUnknown", err)
	}
	for _, n := range Names() {
		if !Known(n) {
			t.Errorf("Known(%q) = false", n)
		}
	}
}

// TestStatusWithoutServers: a node without servers reports empty rung
// state, and refuses to volunteer with the named error.
func TestStatusWithoutServers(t *testing.T) {
	h := testHost(t)
	l, err := Build(h, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range l.All {
		if err := r.Start(context.Background()); err != nil {
			t.Fatalf("start %s: %v", r.Name(), err)
		}
	}
	defer closeAll(l)
	st := l.Status()
	if st.RelayTransport != "" || st.TURN.IsValid() || st.PortMapping.External.IsValid() || st.Supernode.Volunteering {
		t.Errorf("status %+v", st)
	}
	if _, err := l.WaitSupernode(context.Background()); !errors.Is(err, rendezvous.ErrNotAdmitted) {
		t.Errorf("WaitSupernode = %v, want ErrNotAdmitted", err)
	}
}
