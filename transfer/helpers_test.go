package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// leakCheck fails the test if it leaves goroutines behind.
func leakCheck(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// pair is two nodes on loopback with a rendezvous server, and a session
// from the receiver (b) to the sender (a).
type pair struct {
	a, b *reach.Node
	sess *stream.Session // b -> a
}

func newPair(t testing.TB) *pair {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, err := rendezvous.StartServer(ctx, rendezvous.ServerConfig{}, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	logger := func(side string) *slog.Logger {
		if _, bench := t.(*testing.B); bench {
			return slog.New(slog.DiscardHandler) // a benchmark prints its whole log
		}
		return natlab.TestLogger(t).With("side", side)
	}
	cfg := reach.Config{Servers: []string{srv.ConnectString()}, ListenAddr: netip.MustParseAddrPort("127.0.0.1:0"),
		Logger: logger("a")}
	a, err := reach.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	cfg.Logger = logger("b")
	b, err := reach.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	sess, err := b.DialSession(ctx, a.ID())
	if err != nil {
		t.Fatal(err)
	}
	return &pair{a: a, b: b, sess: sess}
}

// serve runs a Sender on p.a until the test ends.
func (p *pair) serve(t *testing.T, cfg SenderConfig, offers ...*Offer) *Sender {
	s := NewSender(cfg)
	for _, o := range offers {
		s.Add(o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(ctx, p.a)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// node is one entry of a test tree: a file (content), a dir, or a symlink.
type node struct {
	content []byte
	dir     bool
	link    string
	mode    fs.FileMode
}

func file(content []byte, mode fs.FileMode) node { return node{content: content, mode: mode} }

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// writeTree creates the tree under dir; parents are made as needed.
func writeTree(t testing.TB, dir string, tree map[string]node) {
	t.Helper()
	for p, n := range tree {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case n.dir:
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
		case n.link != "":
			if err := os.Symlink(n.link, full); err != nil {
				t.Fatal(err)
			}
		default:
			mode := n.mode
			if mode == 0 {
				mode = 0o644
			}
			if err := os.WriteFile(full, n.content, mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(full, mode)
		}
	}
}

// diffTrees compares two trees: the same names, types, permission bits,
// file contents and symlink targets. It returns a description of the
// first difference, or "".
func diffTrees(a, b string) string {
	type item struct {
		mode   fs.FileMode
		data   []byte
		target string
	}
	read := func(root string) (map[string]item, error) {
		out := map[string]item{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			info, err := d.Info()
			if err != nil {
				return err
			}
			it := item{mode: info.Mode()}
			switch {
			case info.Mode().IsRegular():
				if it.data, err = os.ReadFile(p); err != nil {
					return err
				}
			case info.Mode()&fs.ModeSymlink != 0:
				if it.target, err = os.Readlink(p); err != nil {
					return err
				}
				it.mode = fs.ModeSymlink // link permissions do not matter
			}
			out[rel] = it
			return nil
		})
		return out, err
	}
	ta, err := read(a)
	if err != nil {
		return err.Error()
	}
	tb, err := read(b)
	if err != nil {
		return err.Error()
	}
	for p, x := range ta {
		y, ok := tb[p]
		switch {
		case !ok:
			return fmt.Sprintf("%q missing in %s", p, b)
		case x.mode != y.mode:
			return fmt.Sprintf("%q: mode %v vs %v", p, x.mode, y.mode)
		case !bytes.Equal(x.data, y.data):
			return fmt.Sprintf("%q: content differs (%d vs %d bytes)", p, len(x.data), len(y.data))
		case x.target != y.target:
			return fmt.Sprintf("%q: symlink %q vs %q", p, x.target, y.target)
		}
	}
	for p := range tb {
		if _, ok := ta[p]; !ok {
			return fmt.Sprintf("%q only in %s", p, b)
		}
	}
	return ""
}

func testLogger(t testing.TB) *slog.Logger { return natlab.TestLogger(t) }

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o644) }
