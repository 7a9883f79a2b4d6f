package main

// reach send -: stdin offered as one file. An offer's manifest carries
// each file's size and hash before anything is sent, so stdin is read to
// its end into a temporary file first (bounded by the disk of $TMPDIR).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/term"
)

// defaultStdinName is the name under which reach send - offers stdin.
const defaultStdinName = "stdin"

// errStdinTwice: "-" was given more than once.
var errStdinTwice = errors.New("'-' (stdin) can be given once")

// stdinName checks a --name for stdin: one path element that a receiver
// can write.
func stdinName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) || strings.ContainsRune(name, 0) {
		return usagef("send", "--name wants a file name (no '/'), got %q", name)
	}
	return nil
}

// spoolStdin replaces a "-" among paths by a temporary file named name
// holding all of stdin, read until its end or ctx's. cleanup removes the
// file; it is a no-op when paths hold no "-".
func spoolStdin(ctx context.Context, paths []string, name string) (out []string, cleanup func(), err error) {
	cleanup = func() {}
	idx := -1
	for i, p := range paths {
		if p == "-" {
			if idx >= 0 {
				return nil, cleanup, &usageError{cmd: "send", err: errStdinTwice}
			}
			idx = i
		}
	}
	if idx < 0 {
		return paths, cleanup, nil
	}
	dir, err := os.MkdirTemp("", "reach-send-")
	if err != nil {
		return nil, cleanup, fmt.Errorf("stdin: %w", err)
	}
	cleanup = func() { os.RemoveAll(dir) }
	file := filepath.Join(dir, name)
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		cleanup()
		return nil, func() {}, fmt.Errorf("stdin: %w", err)
	}
	if term.IsTerminal(int(os.Stdin.Fd())) {
		fmt.Fprintln(os.Stderr, "reading stdin until its end (Ctrl-D)")
	}
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(f, os.Stdin)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		err = errInterrupted
	}
	if err != nil {
		cleanup()
		return nil, func() {}, fmt.Errorf("stdin: %w", err)
	}
	out = append([]string(nil), paths...)
	out[idx] = file
	return out, cleanup, nil
}
