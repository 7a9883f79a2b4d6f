package transfer

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"lukechampine.com/blake3"
)

// evilSender speaks the sender's side of the protocol with whatever
// manifest and file contents the test gives it, ignoring every rule. It
// serves streams from n until the test ends and reports the receiver's
// answer to the manifest (its request, or its error) on the channel.
func evilSender(t *testing.T, n StreamAcceptor, m Manifest, data map[int][]byte) <-chan error {
	answers := make(chan error, 8)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for {
			st, err := n.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				stop := context.AfterFunc(ctx, func() { st.Close() })
				defer stop()
				first, err := readCtrl(st, MaxControlFrame)
				if err != nil {
					return
				}
				if first.T == msgHello {
					writeCtrl(st, &ctrl{T: msgManifest, Token: "evil", Manifest: &m})
					_, err := expect(st, msgRequest)
					answers <- err
					readCtrl(st, MaxControlFrame) // done or an error
					return
				}
				// A data stream: every file of data, from offset zero.
				bw := bufio.NewWriter(st)
				for i, b := range data {
					bw.Write(appendFileHeader(nil, i, 0, int64(len(b))))
					bw.Write(b)
				}
				bw.WriteByte(recEnd)
				bw.Flush()
				st.CloseWrite()
				st.SetReadDeadline(time.Now().Add(5 * time.Second))
				st.Read(make([]byte, 1))
			}()
		}
	}()
	return answers
}

// TestMaliciousSender: manifests with "..", absolute paths, symlinks
// leading out, device files and malformed trees are refused with named
// errors before any data flows, the sender is told why, and nothing is
// written outside the target directory (nor inside it).
func TestMaliciousSender(t *testing.T) {
	leakCheck(t)
	hash := Hash(blake3.Sum256([]byte("pwned")))
	f := func(p string) Entry { return Entry{Path: p, Type: TypeFile, Size: 5, Mode: 0o644, Hash: hash} }
	d := func(p string) Entry { return Entry{Path: p, Type: TypeDir, Mode: 0o755} }
	l := func(p, target string) Entry { return Entry{Path: p, Type: TypeSymlink, Mode: 0o777, Target: target} }
	cases := []struct {
		name    string
		entries []Entry
		want    error
	}{
		{"dotdot", []Entry{f("../escape")}, ErrUnsafePath},
		{"dotdot-inside", []Entry{d("a"), f("a/../../escape")}, ErrUnsafePath},
		{"absolute", []Entry{f("/tmp/escape")}, ErrUnsafePath},
		{"symlink-out", []Entry{l("link", "../../escape")}, ErrUnsafePath},
		{"symlink-absolute", []Entry{l("link", "/etc")}, ErrUnsafePath},
		{"symlink-dotdot-after-name", []Entry{d("a"), l("a/b", "c/../../..")}, ErrUnsafePath},
		{"file-through-symlink", []Entry{l("link", "."), f("link/x")}, ErrBadManifest},
		{"backslash", []Entry{f(`..\escape`)}, ErrUnsafePath},
		{"unclean", []Entry{f("./x")}, ErrUnsafePath},
		{"empty", []Entry{f("")}, ErrUnsafePath},
		{"part-name", []Entry{f(".x.reachpart")}, ErrUnsafePath},
		{"device", []Entry{{Path: "dev", Type: "device", Mode: 0o644}}, ErrSpecialFile},
		{"setuid", []Entry{{Path: "suid", Type: TypeFile, Size: 5, Mode: 0o4755, Hash: hash}}, ErrSpecialFile},
		{"duplicate", []Entry{f("x"), f("x")}, ErrBadManifest},
		{"orphan", []Entry{f("nodir/x")}, ErrBadManifest},
		{"terminal-escape", []Entry{f("x\x1b]0;pwned\x07\x1b[2J")}, ErrUnsafePath},
		{"newline", []Entry{f("x\nreceived 0 files")}, ErrUnsafePath},
		{"del", []Entry{f("x\x7f")}, ErrUnsafePath},
		{"bidi-override", []Entry{f("invoice\u202Efdp.exe")}, ErrUnsafePath},
		{"symlink-target-escape", []Entry{f("x"), l("link", "x\x1b[2J")}, ErrUnsafePath},
		{"negative-size", []Entry{{Path: "x", Type: TypeFile, Size: -1, Mode: 0o644, Hash: hash}}, ErrBadManifest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPair(t)
			answers := evilSender(t, p.a, Manifest{Entries: c.entries}, map[int][]byte{0: []byte("pwned")})
			parent := t.TempDir()
			out := filepath.Join(parent, "out")
			_, err := receive(t, p, NewID(), ReceiveConfig{Dir: out, Force: true})
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			t.Logf("refused: %v", err)
			select {
			case a := <-answers:
				if !errors.Is(a, ErrRefused) || !errors.Is(a, c.want) {
					t.Errorf("the sender was told %v", a)
				}
			case <-time.After(5 * time.Second):
				t.Error("the sender was not told")
			}
			ents, _ := os.ReadDir(parent)
			if len(ents) != 1 || ents[0].Name() != "out" {
				t.Errorf("entries next to the target: %v", ents)
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("the target has %d entries", len(ents))
			}
		})
	}
}

// TestMaliciousData: a file whose content does not match its hash is not
// put in place (ErrHashMismatch) and its temporary file is removed; records
// for files that were not requested are refused.
func TestMaliciousData(t *testing.T) {
	leakCheck(t)
	good := []byte("hello")
	m := Manifest{Entries: []Entry{{Path: "x", Type: TypeFile, Size: 5, Mode: 0o644, Hash: Hash(blake3.Sum256(good))}}}
	t.Run("hash", func(t *testing.T) {
		p := newPair(t)
		evilSender(t, p.a, m, map[int][]byte{0: []byte("pwned")})
		out := t.TempDir()
		_, err := receive(t, p, NewID(), ReceiveConfig{Dir: out, Streams: 1})
		if !errors.Is(err, ErrHashMismatch) {
			t.Fatalf("got %v, want ErrHashMismatch", err)
		}
		if ents, _ := os.ReadDir(out); len(ents) != 0 {
			t.Errorf("the target has %v", ents)
		}
	})
	t.Run("unrequested", func(t *testing.T) {
		p := newPair(t)
		evilSender(t, p.a, m, map[int][]byte{0: good, 7: good})
		_, err := receive(t, p, NewID(), ReceiveConfig{Dir: t.TempDir(), Streams: 1})
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("got %v, want ErrProtocol", err)
		}
	})
}

// TestPlantedSymlink: a symlink already in the target directory that leads
// outside is never written through: without Force the transfer stops with
// ErrExists, with Force the link itself is replaced.
func TestPlantedSymlink(t *testing.T) {
	leakCheck(t)
	src, parent := t.TempDir(), t.TempDir()
	writeTree(t, src, map[string]node{"evil/x": file([]byte("data"), 0o644)})
	outside := filepath.Join(parent, "outside")
	out := filepath.Join(parent, "out")
	os.MkdirAll(outside, 0o755)
	os.MkdirAll(out, 0o755)
	if err := os.Symlink("../outside", filepath.Join(out, "evil")); err != nil {
		t.Fatal(err)
	}
	o := prepare(t, filepath.Join(src, "evil"))
	p := newPair(t)
	p.serve(t, SenderConfig{}, o)
	if _, err := receive(t, p, o.ID, ReceiveConfig{Dir: out}); !errors.Is(err, ErrExists) {
		t.Fatalf("got %v, want ErrExists", err)
	}
	if _, err := receive(t, p, o.ID, ReceiveConfig{Dir: out, Force: true}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("written outside: %v", ents)
	}
	if st, err := os.Lstat(filepath.Join(out, "evil")); err != nil || !st.IsDir() {
		t.Errorf("evil is not a directory now: %v", err)
	}
	// And os.Root stops a write through a link that the checks miss.
	root, _ := os.OpenRoot(out)
	defer root.Close()
	os.Symlink("../outside", filepath.Join(out, "evil2"))
	if _, err := root.Create("evil2/y"); rootErr("evil2/y", err) == nil || !errors.Is(rootErr("evil2/y", err), ErrUnsafePath) {
		t.Errorf("os.Root let a write through a link out: %v", err)
	}
}
