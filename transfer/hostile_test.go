package transfer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lukechampine.com/blake3"

	"github.com/reachp2p/reach/stream"
)

// expectRefused checks that the hostile sender was told err's reason.
func expectRefused(t *testing.T, answers <-chan error, want error) {
	t.Helper()
	select {
	case a := <-answers:
		if !errors.Is(a, ErrRefused) || !errors.Is(a, want) {
			t.Errorf("the sender was told %v", a)
		}
	case <-time.After(5 * time.Second):
		t.Error("the sender was not told")
	}
}

// TestHostileSizeOverflow: a manifest whose sizes add up past int64 (so
// that the sum wraps around below MaxSize) is refused with ErrBadManifest
// before a byte is written: the attack wrote an 8 MiB file under a 1 MiB
// limit. Negative sizes and sized symlinks, which could lower the sum, are
// refused too.
func TestHostileSizeOverflow(t *testing.T) {
	leakCheck(t)
	big := randBytes(8 << 20)
	bigEntry := Entry{Path: "big", Type: TypeFile, Size: int64(len(big)), Mode: 0o644, Hash: Hash(blake3.Sum256(big))}
	wrap := Entry{Path: "wrap", Type: TypeFile, Size: math.MaxInt64 - int64(len(big)) + 2, Mode: 0o644}
	if m := (Manifest{Entries: []Entry{bigEntry, wrap}}); m.Size() != math.MaxInt64 {
		t.Errorf("Manifest.Size wrapped around: %d", m.Size())
	}
	cases := []struct {
		name    string
		entries []Entry
	}{
		{"overflow", []Entry{bigEntry, wrap}},
		{"negative", []Entry{bigEntry, {Path: "neg", Type: TypeFile, Size: -8 << 20, Mode: 0o644}}},
		{"sized-symlink", []Entry{bigEntry, {Path: "l", Type: TypeSymlink, Size: -8 << 20, Mode: 0o777, Target: "big"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPair(t)
			answers := evilSender(t, p.a, Manifest{Entries: c.entries}, map[int][]byte{0: big})
			out := t.TempDir()
			_, err := receive(t, p, NewID(), ReceiveConfig{Dir: out, MaxSize: 1 << 20, Streams: 1})
			if !errors.Is(err, ErrBadManifest) {
				t.Fatalf("got %v, want ErrBadManifest", err)
			}
			t.Logf("refused: %v", err)
			expectRefused(t, answers, ErrBadManifest)
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("the target has %d entries", len(ents))
			}
		})
	}
}

// TestHostileExistingDir: receiving into a home directory, a sender that
// lists ".ssh" (mode 0777) and ".ssh/authorized_keys" neither changes the
// existing directory's mode nor puts a file in it: ErrExistingDir before
// anything is written, whether the directory holds other files or is
// empty. With Force the file is written but the directory's mode stays.
func TestHostileExistingDir(t *testing.T) {
	leakCheck(t)
	key := []byte("ssh-ed25519 AAAA evil@attacker\n")
	m := Manifest{Entries: []Entry{
		{Path: ".ssh", Type: TypeDir, Mode: 0o777},
		{Path: ".ssh/authorized_keys", Type: TypeFile, Size: int64(len(key)), Mode: 0o666, Hash: Hash(blake3.Sum256(key))},
	}}
	for _, c := range []struct {
		name  string
		files []string // in .ssh before the transfer
		force bool
	}{
		{"with-files", []string{"id_ed25519", "known_hosts"}, false},
		{"empty", nil, false},
		{"force", []string{"id_ed25519"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			home := t.TempDir()
			ssh := filepath.Join(home, ".ssh")
			if err := os.Mkdir(ssh, 0o700); err != nil {
				t.Fatal(err)
			}
			os.Chmod(ssh, 0o700)
			for _, f := range c.files {
				os.WriteFile(filepath.Join(ssh, f), []byte("mine"), 0o600)
			}
			p := newPair(t)
			answers := evilSender(t, p.a, m, map[int][]byte{1: key})
			_, err := receive(t, p, NewID(), ReceiveConfig{Dir: home, Force: c.force, Streams: 1})
			if c.force {
				if err != nil {
					t.Fatalf("with Force: %v", err)
				}
			} else {
				if !errors.Is(err, ErrExistingDir) {
					t.Fatalf("got %v, want ErrExistingDir", err)
				}
				t.Logf("refused: %v", err)
				expectRefused(t, answers, ErrExistingDir)
				if _, err := os.Lstat(filepath.Join(ssh, "authorized_keys")); err == nil {
					t.Error("authorized_keys planted")
				}
				ents, _ := os.ReadDir(ssh)
				if len(ents) != len(c.files) {
					t.Errorf(".ssh holds %d entries, want %d", len(ents), len(c.files))
				}
				if ents, _ := os.ReadDir(home); len(ents) != 1 {
					t.Errorf("home holds %d entries", len(ents))
				}
			}
			if st, err := os.Stat(ssh); err != nil || st.Mode().Perm() != 0o700 {
				t.Errorf(".ssh mode after the transfer: %v (%v), want 0700", st.Mode().Perm(), err)
			}
		})
	}
}

// TestHostileResumeStillWorks: a directory that holds nothing but the
// transfer's own files (an earlier attempt) is not foreign: the transfer
// resumes into it without Force.
func TestHostileResumeStillWorks(t *testing.T) {
	leakCheck(t)
	src, out := t.TempDir(), t.TempDir()
	data := randBytes(1 << 20)
	writeTree(t, src, map[string]node{"r/sub/x": file(data, 0o644), "r/y": file([]byte("y"), 0o644)})
	writeTree(t, out, map[string]node{"r/sub/.x.reachpart": file(data[:1000], 0o600), "r/y": file([]byte("y"), 0o644)})
	o := prepare(t, filepath.Join(src, "r"))
	p := newPair(t)
	p.serve(t, SenderConfig{}, o)
	res, err := receive(t, p, o.ID, ReceiveConfig{Dir: out})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed != 1001 {
		t.Errorf("resumed %d, want 1001", res.Resumed)
	}
	if d := diffTrees(filepath.Join(src, "r"), filepath.Join(out, "r")); d != "" {
		t.Fatal(d)
	}
}

// TestHostileNames: names with terminal escape sequences, other control
// characters or bidirectional overrides are refused with ErrUnsafePath
// before anything is written (TestMaliciousSender's cases run them over
// the wire); Prepare skips such names on the sender.
func TestHostileNames(t *testing.T) {
	for _, p := range []string{"a\x1b]0;pwned\x07", "a\x1b[2J", "new\nline", "tab\tx", "del\x7f", "c1\u009b31m",
		"invoice\u202Efdp.exe", "x\u2066y", "a\u200fb"} {
		if err := checkPath(p); !errors.Is(err, ErrUnsafePath) {
			t.Errorf("%q: got %v, want ErrUnsafePath", p, err)
		}
	}
	for _, p := range []string{"naïve café.md", "日本語/ファイル.txt", "emoji 🎉"} {
		if err := checkPath(p); err != nil {
			t.Errorf("%q refused: %v", p, err)
		}
	}
	if got := printable("bad\x1b[2J\u202Ereason"); strings.ContainsAny(got, "\x1b\u202E") {
		t.Errorf("printable left %q", got)
	}
	src := t.TempDir()
	writeTree(t, src, map[string]node{"t/ok": file([]byte("ok"), 0o644), "t/bad\x1b[2J/x": file([]byte("x"), 0o644),
		"t/bell\a": file([]byte("b"), 0o644)})
	o := prepare(t, filepath.Join(src, "t"))
	if len(o.Skipped) != 2 || len(o.Manifest.Entries) != 2 {
		t.Errorf("skipped %v, entries %v", o.Skipped, o.Manifest.Entries)
	}
}

// frame is a control frame header claiming n bytes, followed by body.
func frame(n uint32, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, n)
	return append(b, body...)
}

// TestHostileControlFrame: a control message longer than its cap is
// refused with ErrFrameTooLarge (wrapped in ErrProtocol) from its length
// alone: a 64 KiB cap for everything but the manifest and the request,
// MaxManifestFrame for those. A receiver offered an oversized manifest
// fails at once; a sender sent an oversized hello drops that stream and
// goes on serving.
func TestHostileControlFrame(t *testing.T) {
	leakCheck(t)
	body := []byte(`{"t":"done","reason":"` + strings.Repeat("x", MaxControlFrame) + `"}`)
	if _, err := readCtrl(bytes.NewReader(frame(uint32(len(body)), body)), MaxControlFrame); !errors.Is(err, ErrFrameTooLarge) || !errors.Is(err, ErrProtocol) {
		t.Errorf("oversized done: got %v", err)
	}
	if _, err := expect(bytes.NewReader(frame(MaxManifestFrame+1, nil)), msgManifest); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversized manifest: got %v", err)
	}
	m := []byte(`{"t":"manifest","manifest":{"entries":[]},"token":"` + strings.Repeat("x", MaxControlFrame) + `"}`)
	if _, err := expect(bytes.NewReader(frame(uint32(len(m)), m)), msgManifest); err != nil {
		t.Errorf("a manifest above MaxControlFrame: %v", err)
	}
	if e := errorMsg(errors.New(strings.Repeat("y", 1<<20))); len(e.Reason) > maxReason+3 {
		t.Errorf("error reason of %d bytes", len(e.Reason))
	}

	t.Run("receiver", func(t *testing.T) {
		p := newPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		t.Cleanup(func() { cancel(); <-done })
		go func() {
			defer close(done)
			st, err := p.a.Accept(ctx)
			if err != nil {
				return
			}
			defer st.Close()
			readCtrl(st, MaxControlFrame)
			st.Write(frame(math.MaxUint32, []byte(`{"t":"manifest"`))) // and never the rest
			<-ctx.Done()
		}()
		start := time.Now()
		_, err := receive(t, p, NewID(), ReceiveConfig{Dir: t.TempDir()})
		if !errors.Is(err, ErrFrameTooLarge) {
			t.Fatalf("got %v, want ErrFrameTooLarge", err)
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Errorf("took %v", el)
		}
	})

	t.Run("sender", func(t *testing.T) {
		src := t.TempDir()
		writeTree(t, src, map[string]node{"s/a": file(randBytes(5000), 0o644)})
		o := prepare(t, filepath.Join(src, "s"))
		p := newPair(t)
		p.serve(t, SenderConfig{}, o)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		st, err := p.sess.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		hello := []byte(`{"t":"hello","v":1,"transfer":"` + o.ID.String() + `","pad":"` + strings.Repeat("x", 1<<20) + `"}`)
		go st.Write(frame(uint32(len(hello)), hello))
		if err := waitClosed(st); err != nil {
			t.Fatal(err)
		}
		out := t.TempDir()
		if _, err := receive(t, p, o.ID, ReceiveConfig{Dir: out}); err != nil {
			t.Fatalf("the sender did not survive: %v", err)
		}
		if d := diffTrees(filepath.Join(src, "s"), filepath.Join(out, "s")); d != "" {
			t.Fatal(d)
		}
	})
}

// waitClosed reads st until the peer ends it, for at most 10 s.
func waitClosed(st *stream.Stream) error {
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, st)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errors.New("the sender kept the stream with an oversized hello open")
	}
	return nil
}
