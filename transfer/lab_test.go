package transfer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"lukechampine.com/blake3"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabMaliciousSender: in the NAT lab (the sender behind a full-cone
// NAT, the receiver behind a port-restricted one, hole punched), a sender
// that offers "../escape", an absolute path or a symlink leading out is
// refused with ErrUnsafePath, is told so, and nothing is written outside
// the target directory or in it. (TestMaliciousSender covers more cases
// on loopback.)
func TestLabMaliciousSender(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := l.AddPublicHost(ctx, "srv")
	if err != nil {
		t.Fatal(err)
	}
	_, cs := reachlab.StartServer(t, srv)
	sa, err := l.AddSite(ctx, "evil", natlab.Kind(natlab.FullCone))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := l.AddSite(ctx, "victim", natlab.Kind(natlab.PortRestricted))
	if err != nil {
		t.Fatal(err)
	}
	hash := Hash(blake3.Sum256([]byte("pwned")))
	cases := map[string]Entry{
		"dotdot":      {Path: "../escape", Type: TypeFile, Size: 5, Mode: 0o644, Hash: hash},
		"absolute":    {Path: filepath.Join(t.TempDir(), "escape"), Type: TypeFile, Size: 5, Mode: 0o644, Hash: hash},
		"symlink-out": {Path: "escape", Type: TypeSymlink, Mode: 0o777, Target: "../../../../etc"},
	}
	for name, e := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := reach.Config{Servers: []string{cs}}
			na := reachlab.NewNode(t, sa.Host, cfg)
			nb := reachlab.NewNode(t, sb.Host, cfg)
			answers := evilSender(t, na, Manifest{Entries: []Entry{e}}, map[int][]byte{0: []byte("pwned")})
			tk, err := NewTicket(na.ID(), NewID(), cs)
			if err != nil {
				t.Fatal(err)
			}
			parent := t.TempDir()
			out := filepath.Join(parent, "out")
			_, err = Receive(ctx, nb, tk, ReceiveConfig{Dir: out, Force: true, Logger: testLogger(t)})
			var ue *UnsafePathError
			if !errors.Is(err, ErrUnsafePath) || !errors.As(err, &ue) {
				t.Fatalf("got %v, want an *UnsafePathError", err)
			}
			t.Logf("refused: %v", err)
			if a := <-answers; !errors.Is(a, ErrUnsafePath) {
				t.Errorf("the sender was told %v", a)
			}
			if ents, _ := os.ReadDir(parent); len(ents) != 1 {
				t.Errorf("next to the target: %v", ents)
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("in the target: %v", ents)
			}
			if _, err := os.Lstat(e.Path); err == nil && filepath.IsAbs(e.Path) {
				t.Errorf("%s was written", e.Path)
			}
		})
	}
}
