package transfer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func prepare(t *testing.T, paths ...string) *Offer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o, err := Prepare(ctx, paths, PrepareConfig{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func receive(t *testing.T, p *pair, id ID, cfg ReceiveConfig) (*ReceiveResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	return ReceiveSession(ctx, p.sess, id, cfg)
}

// TestTree: a tree with nested directories, empty files, unicode names, an
// internal symlink, modes and a 3 MB file arrives identical, in one
// session, with progress and file callbacks; the sender's totals match.
func TestTree(t *testing.T) {
	leakCheck(t)
	src := t.TempDir()
	tree := map[string]node{
		"t/a.txt":                 file([]byte("hello\n"), 0o644),
		"t/empty":                 file(nil, 0o600),
		"t/bin/run.sh":            file([]byte("#!/bin/sh\necho hi\n"), 0o755),
		"t/日本語/ファイル.txt":          file(randBytes(1000), 0o644),
		"t/emoji 🎉/naïve café.md": file(randBytes(10), 0o640),
		"t/deep/1/2/3/4/big.bin":  file(randBytes(3<<20), 0o644),
		"t/deep/1/link":           {link: "2/3/4/big.bin"},
		"t/uplink":                {link: "deep/1"},
		"t/emptydir":              {dir: true},
	}
	writeTree(t, src, tree)
	o := prepare(t, filepath.Join(src, "t"))
	if len(o.Skipped) != 0 {
		t.Fatalf("skipped %v", o.Skipped)
	}
	p := newPair(t)
	var mu sync.Mutex
	var results []SendResult
	s := p.serve(t, SenderConfig{Done: func(r SendResult) { mu.Lock(); results = append(results, r); mu.Unlock() }}, o)

	out := t.TempDir()
	var last Progress
	var files []string
	res, err := receive(t, p, o.ID, ReceiveConfig{
		Dir:      out,
		Progress: func(pr Progress) { mu.Lock(); last = pr; mu.Unlock() },
		FileDone: func(e Entry) { mu.Lock(); files = append(files, e.Path); mu.Unlock() },
		Confirm: func(in Incoming) error {
			if in.Files != 6 || in.Size != o.Manifest.Size() || in.OnDisk != 0 {
				t.Errorf("incoming %+v", in)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := diffTrees(filepath.Join(src, "t"), filepath.Join(out, "t")); d != "" {
		t.Fatal(d)
	}
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(results) == 1 })
	mu.Lock()
	defer mu.Unlock()
	if !last.Done || last.BytesDone != o.Manifest.Size() || last.FilesDone != 6 {
		t.Errorf("last progress %+v", last)
	}
	if len(files) != 6 || res.Files != 6 || res.Bytes != o.Manifest.Size() {
		t.Errorf("files %v, result %+v", files, res)
	}
	if r := results[0]; !r.Complete || r.Err != nil || r.Bytes != o.Manifest.Size() || r.Peer != p.b.ID() {
		t.Errorf("sender result %+v", r)
	}
	if st := s.Stats(); st.Completed != 1 || st.DataBytes != o.Manifest.Size() || st.WireBytes < st.DataBytes {
		t.Errorf("sender stats %+v", st)
	}
	t.Logf("result %+v", res)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestResume: partial files from an earlier attempt are resumed after
// their content when it matches the sender's, and sent whole when it does
// not; finished files are skipped. The sender sends only what is missing.
func TestResume(t *testing.T) {
	leakCheck(t)
	src, out := t.TempDir(), t.TempDir()
	big, other, done := randBytes(5<<20), randBytes(1<<20), randBytes(1000)
	writeTree(t, src, map[string]node{"r/big": file(big, 0o644), "r/other": file(other, 0o644), "r/done": file(done, 0o644)})
	writeTree(t, out, map[string]node{
		"r/.big.reachpart":   file(big[:2<<20], 0o600),                               // a good prefix
		"r/.other.reachpart": file(append(randBytes(100), other[100:300]...), 0o600), // a bad one
		"r/done":             file(done, 0o644),                                      // finished
	})
	o := prepare(t, filepath.Join(src, "r"))
	p := newPair(t)
	s := p.serve(t, SenderConfig{}, o)
	res, err := receive(t, p, o.ID, ReceiveConfig{Dir: out, Confirm: func(in Incoming) error {
		if in.Complete != 1 || in.OnDisk != 1000+2<<20+300 {
			t.Errorf("incoming: complete %d on disk %d", in.Complete, in.OnDisk)
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if d := diffTrees(filepath.Join(src, "r"), filepath.Join(out, "r")); d != "" {
		t.Fatal(d)
	}
	want := int64(3<<20 + 1<<20) // big's rest, other whole
	if st := s.Stats(); st.DataBytes != want {
		t.Errorf("sender sent %d content bytes, want %d", st.DataBytes, want)
	}
	if res.Files != 2 || res.Complete != 1 || res.Bytes != want || res.Resumed != 2<<20+1000 {
		t.Errorf("result %+v", res)
	}
	// A second receive of the same offer: everything is there.
	res, err = receive(t, p, o.ID, ReceiveConfig{Dir: out})
	if err != nil || res.Files != 0 || res.Complete != 3 {
		t.Errorf("second receive: %+v, %v", res, err)
	}
}

// TestExists: files that exist with other content stop the transfer
// before data flows (ErrExists, the sender told too_large... exists);
// with Force they are replaced.
func TestExists(t *testing.T) {
	leakCheck(t)
	src, out := t.TempDir(), t.TempDir()
	writeTree(t, src, map[string]node{"e/x": file([]byte("new"), 0o644), "e/y": file([]byte("same"), 0o644)})
	writeTree(t, out, map[string]node{"e/x": file([]byte("old"), 0o644), "e/y": file([]byte("same"), 0o644)})
	o := prepare(t, filepath.Join(src, "e"))
	p := newPair(t)
	var mu sync.Mutex
	var sendErr error
	p.serve(t, SenderConfig{Done: func(r SendResult) { mu.Lock(); sendErr = r.Err; mu.Unlock() }}, o)
	_, err := receive(t, p, o.ID, ReceiveConfig{Dir: out})
	var ee *ExistsError
	if !errors.As(err, &ee) || !errors.Is(err, ErrExists) || len(ee.Paths) != 1 || ee.Paths[0] != "e/x" {
		t.Fatalf("got %v, want ErrExists for e/x", err)
	}
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return sendErr != nil })
	if mu.Lock(); !errors.Is(sendErr, ErrExists) || !errors.Is(sendErr, ErrRefused) {
		t.Errorf("sender saw %v, want a refusal naming ErrExists", sendErr)
	}
	mu.Unlock()
	if b, _ := os.ReadFile(filepath.Join(out, "e/x")); string(b) != "old" {
		t.Fatalf("e/x overwritten without Force: %q", b)
	}
	if _, err := receive(t, p, o.ID, ReceiveConfig{Dir: out, Force: true}); err != nil {
		t.Fatal(err)
	}
	if d := diffTrees(filepath.Join(src, "e"), filepath.Join(out, "e")); d != "" {
		t.Fatal(d)
	}
}

// TestLimitsAndErrors: MaxSize, Confirm refusing, an unknown transfer, and
// a file that changed after Prepare all fail with their named errors.
func TestLimitsAndErrors(t *testing.T) {
	leakCheck(t)
	src := t.TempDir()
	writeTree(t, src, map[string]node{"l/a": file(randBytes(5000), 0o644)})
	o := prepare(t, filepath.Join(src, "l"))
	p := newPair(t)
	p.serve(t, SenderConfig{}, o)
	out := t.TempDir()
	if _, err := receive(t, p, o.ID, ReceiveConfig{Dir: out, MaxSize: 4999}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("MaxSize: got %v, want ErrTooLarge", err)
	}
	errNo := errors.New("no thanks")
	if _, err := receive(t, p, o.ID, ReceiveConfig{Dir: out, Confirm: func(Incoming) error { return errNo }}); !errors.Is(err, errNo) {
		t.Errorf("Confirm: got %v", err)
	}
	if _, err := receive(t, p, NewID(), ReceiveConfig{Dir: out}); !errors.Is(err, ErrUnknownTransfer) {
		t.Errorf("unknown ID: got %v, want ErrUnknownTransfer", err)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("refused transfers left %d entries in the target", len(ents))
	}
	os.WriteFile(filepath.Join(src, "l/a"), randBytes(100), 0o644)
	if _, err := receive(t, p, o.ID, ReceiveConfig{Dir: out}); !errors.Is(err, ErrChanged) {
		t.Errorf("changed file: got %v, want ErrChanged", err)
	}
	if _, err := os.Stat(filepath.Join(out, "l/a")); err == nil {
		t.Error("a file that changed was put in place")
	}
}

// TestPrepareSkips: special files and symlinks leading out of the offer are
// skipped and reported; two paths with one name are refused.
func TestPrepareSkips(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]node{
		"s/ok":       file([]byte("x"), 0o644),
		"s/out":      {link: "../../etc/passwd"},
		"s/abs":      {link: "/etc/passwd"},
		"s/in":       {link: "ok"},
		"other/s/ok": file(nil, 0o644),
	})
	if err := mkfifo(filepath.Join(src, "s/fifo")); err != nil {
		t.Log("no fifo:", err)
	}
	o := prepare(t, filepath.Join(src, "s"))
	var names []string
	for _, e := range o.Manifest.Entries {
		names = append(names, e.Path)
	}
	if strings.Join(names, ",") != "s,s/in,s/ok" {
		t.Errorf("entries %v", names)
	}
	if len(o.Skipped) < 2 {
		t.Errorf("skipped %v", o.Skipped)
	}
	t.Logf("skipped: %v", o.Skipped)
	_, err := Prepare(context.Background(), []string{filepath.Join(src, "s"), filepath.Join(src, "other/s")}, PrepareConfig{})
	if !errors.Is(err, ErrDuplicatePath) {
		t.Errorf("got %v, want ErrDuplicatePath", err)
	}
}
