package main

// Helpers shared by the tests of every platform (the lab tests, in the
// files built on Linux only, use them too).

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// testLogger is a logger whose lines go to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tLogWriter struct{ t testing.TB }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// lineWatcher collects a process's output and waits for a line with a
// prefix.
type lineWatcher struct {
	mu    sync.Mutex
	lines []string
	all   bytes.Buffer
	added chan struct{}
}

func watch(r io.Reader) *lineWatcher {
	w := &lineWatcher{added: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			w.mu.Lock()
			w.lines = append(w.lines, sc.Text())
			w.all.WriteString(sc.Text() + "\n")
			w.mu.Unlock()
			select {
			case w.added <- struct{}{}:
			default:
			}
		}
	}()
	return w
}

func (w *lineWatcher) wait(t *testing.T, prefix string, d time.Duration) string {
	t.Helper()
	return w.match(t, "starting with", prefix, func(l string) bool { return strings.HasPrefix(l, prefix) }, d)
}

// match waits for a line that ok accepts (what and s describe it).
func (w *lineWatcher) match(t *testing.T, what, s string, ok func(string) bool, d time.Duration) string {
	t.Helper()
	deadline := time.After(d)
	for {
		w.mu.Lock()
		for _, l := range w.lines {
			if ok(l) {
				w.mu.Unlock()
				return l
			}
		}
		w.mu.Unlock()
		select {
		case <-w.added:
		case <-deadline:
			t.Fatalf("no line %s %q within %v; output:\n%s", what, s, d, w.String())
		}
	}
}

func (w *lineWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

// waitFor waits for a line containing sub and returns it.
func (w *lineWatcher) waitFor(t *testing.T, sub string, d time.Duration) string {
	t.Helper()
	return w.match(t, "containing", sub, func(l string) bool { return strings.Contains(l, sub) }, d)
}
