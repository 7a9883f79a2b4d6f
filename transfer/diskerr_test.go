package transfer

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// smallFS mounts a tmpfs of 1 MiB (opts added) for the test; it needs
// root, as the lab tests do.
func smallFS(t *testing.T, opts string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"+opts); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// TestReceiverDiskErrors: a receiver whose disk fills up, or which may
// not write, reports that by name on both sides (ErrDiskFull,
// ErrPermission through errors.Is), not as a reset stream; after a full
// disk the partial file is kept and the message says so.
func TestReceiverDiskErrors(t *testing.T) {
	for _, tc := range []struct {
		name, opts string
		want       error
	}{
		{"full", "", ErrDiskFull},
		{"readonly", ",ro", ErrPermission},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			out := smallFS(t, tc.opts)
			src := t.TempDir()
			writeTree(t, src, map[string]node{"d/big": file(randBytes(4<<20), 0o644)})
			o := prepare(t, filepath.Join(src, "d"))
			p := newPair(t)
			sent := make(chan SendResult, 1)
			p.serve(t, SenderConfig{Done: func(r SendResult) { sent <- r }}, o)
			_, err := receive(t, p, o.ID, ReceiveConfig{Dir: out})
			t.Logf("receiver: %v", err)
			if !errors.Is(err, tc.want) {
				t.Fatalf("receiver error %v, want %v", err, tc.want)
			}
			if _, theirs := errors.AsType[*RemoteError](err); theirs {
				t.Errorf("the receiver blames the sender for its own disk: %v", err)
			}
			r := <-sent
			t.Logf("sender: %v", r.Err)
			if !errors.Is(r.Err, tc.want) || strings.Contains(r.Err.Error(), "canceled") {
				t.Errorf("sender error %v, want %v", r.Err, tc.want)
			}
			if tc.want == ErrDiskFull {
				fe, ok := errors.AsType[*FileError](err)
				if !ok || fe.Partial == "" {
					t.Fatalf("no partial file named in %v", err)
				}
				if _, err := os.Stat(filepath.Join(out, filepath.FromSlash(fe.Partial))); err != nil {
					t.Errorf("partial file: %v", err)
				}
			}
		})
	}
}
