package natlab

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

// Require skips the test with a one-line reason when the lab cannot run
// here (not root, tools missing). With REACH_LAB_REQUIRED=1 in the
// environment (CI sets it) it fails the test instead, so CI cannot pass by
// skipping the lab.
func Require(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("REACH_LAB_REQUIRED") == "1" {
			t.Fatalf("lab test cannot run but REACH_LAB_REQUIRED=1: %v", err)
		}
		t.Skipf("skipping lab test: %v", err)
	}
}

// NewT creates a lab for a test: it skips when the lab is unavailable,
// routes the lab's log to t.Log, dumps every router's state to the test log
// when the test fails, and closes the lab when the test ends.
func NewT(t testing.TB) *Lab {
	t.Helper()
	Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := New(ctx, Config{Logger: TestLogger(t)})
	if err != nil {
		t.Fatalf("natlab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			t.Logf("lab state at failure:\n%s", l.Dump(ctx))
			cancel()
		}
		if err := l.Close(); err != nil {
			t.Errorf("natlab close: %v", err)
		}
	})
	return l
}

// TestLogger returns a logger that writes to t.Log, debug lines included.
func TestLogger(t testing.TB) *slog.Logger { return TestLoggerLevel(t, slog.LevelDebug) }

// TestLoggerLevel returns a logger that writes records of level min and
// above to t.Log: benchmarks print their whole log, and the nodes' debug
// lines would bury the figures.
func TestLoggerLevel(t testing.TB, min slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: min}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
