//go:build linux

package main

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// smallDisk mounts a 1 MiB tmpfs (opts added) for the test; it needs root.
func smallDisk(t *testing.T, opts string) string {
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

// TestCLIDiskErrors: a receiver whose disk is full or read-only says so,
// and so does the other side, each in one line, never "stream canceled"
// or "aborted": reach recv into a 1 MiB disk (the partial file is kept,
// and said so) or a read-only one, and reach listen or reach dial whose
// stdout is a file on a full disk.
func TestCLIDiskErrors(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	big := make([]byte, 3<<20)
	rand.Read(big)

	recv := func(t *testing.T, opts, want, sendWant string) string {
		src := t.TempDir()
		if err := os.WriteFile(filepath.Join(src, "big.bin"), big, 0o644); err != nil {
			t.Fatal(err)
		}
		key, _ := ncKey(t, "send")
		send := startProc(t, nil, nil, bin, "send", "--server", cs, "--key", key, filepath.Join(src, "big.bin"))
		code := strings.Fields(send.stderr.wait(t, "  reach recv ", 30*time.Second))[2]
		out := smallDisk(t, opts)
		_, errOut, exit := runReach(t, nil, "recv", "--yes", "--server", cs, "--out", out, code)
		if exit != exitError || !strings.Contains(errOut, "reach: "+want) || strings.Count(strings.TrimSpace(errOut), "reach: ") != 1 {
			t.Errorf("recv: exit %d, stderr %q; want 1 and one line saying %q", exit, errOut, want)
		}
		line := send.stderr.waitFor(t, " stopped: ", 10*time.Second)
		if !strings.Contains(line, " stopped: the peer reported: "+sendWant) {
			t.Errorf("send said %q, want the receiver's %q", line, sendWant)
		}
		return errOut
	}
	t.Run("recv/full", func(t *testing.T) {
		errOut := recv(t, "", "no space left on the receiver's disk: big.bin:", "no space left on the receiver's disk")
		if !strings.Contains(errOut, "(what arrived is kept in .big.bin.reachpart; receive again to resume)") {
			t.Errorf("recv does not say where the partial file is: %q", errOut)
		}
	})
	t.Run("recv/read-only", func(t *testing.T) {
		recv(t, ",ro", "the receiver may not write there:", "the receiver may not write there")
	})

	// listen or dial with its stdout on a full disk: the other side sends
	// 3 MiB.
	for _, full := range []string{"listen", "dial"} {
		t.Run(full+"/full", func(t *testing.T) {
			f, err := os.Create(filepath.Join(smallDisk(t, ""), "out"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			lisKey, lisID := ncKey(t, "lis")
			dialKey, _ := ncKey(t, "dial")
			var lisIn, dialIn *bytes.Reader
			var lisOut, dialOut *os.File
			if full == "listen" {
				lisIn, dialIn, lisOut = bytes.NewReader(nil), bytes.NewReader(big), f
			} else {
				lisIn, dialIn, dialOut = bytes.NewReader(big), bytes.NewReader(nil), f
			}
			lis := startProc(t, lisIn, fileOrDiscard(lisOut), bin, "listen", "--key", lisKey, "--server", cs)
			lis.stderr.wait(t, "listening ", 15*time.Second)
			dial := startProc(t, dialIn, fileOrDiscard(dialOut), bin, "dial", "--key", dialKey, "--server", cs, lisID.String())
			hit, other := lis, dial
			if full == "dial" {
				hit, other = dial, lis
			}
			if code := hit.exit(t, 30*time.Second); code != exitError {
				t.Errorf("%s (full disk) exited %d, want %d", full, code, exitError)
			}
			if code := other.exit(t, 10*time.Second); code != exitError {
				t.Errorf("the other side exited %d, want %d", code, exitError)
			}
			if s := strings.TrimSpace(hit.stderr.String()); !strings.HasSuffix(s, "\nreach: writing stdout: no space left on device") &&
				s != "reach: writing stdout: no space left on device" {
				t.Errorf("%s (full disk) said:\n%s", full, s)
			}
			if s := strings.TrimSpace(other.stderr.String()); !strings.HasSuffix(s, "reach: the peer could not write what it received to its output: no space left on device") {
				t.Errorf("the other side said:\n%s", s)
			}
		})
	}
}

// fileOrDiscard is f as a child's stdout (the file itself, so the child
// writes to the full disk), or nil (discarded) when f is nil.
func fileOrDiscard(f *os.File) io.Writer {
	if f == nil {
		return io.Discard
	}
	return f
}
