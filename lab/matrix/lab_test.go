package matrix

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

// tlog writes log lines to t.Log.
type tlog struct{ t testing.TB }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestLabMatrixShort is the CI variant of the matrix: ShortPairs, one
// dial per direction, 20 ms on every access link. Every direction must
// connect, and none may take a worse kind of path than possible (a
// forwarder where the peers could have their own path). Another
// peer-to-peer rung than the best (SeverityRung: e.g.
// holepunch's optimistic dial beating direct to an open peer by a few
// milliseconds on a busy machine, the same path) is logged, not failed;
// docs/matrix.md tracks it. The table goes to the test log and, with
// REACH_MATRIX_OUT set, the three files to that folder.
func TestLabMatrixShort(t *testing.T) {
	lab := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, lab, Config{
		Pairs:      ShortPairs(),
		Runs:       1,
		Size:       1 << 20,
		Logger:     slog.New(slog.NewTextHandler(tlog{t}, nil)),
		NodeLogger: slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	md := res.Markdown()
	t.Log("\n" + md)
	for _, d := range res.Directions {
		switch {
		case d.Connected < len(d.Attempts):
			t.Errorf("%s -> %s: %d of %d connected: %s", d.Dialer, d.Listener, d.Connected, len(d.Attempts), d.Reason)
		case d.Severity == SeverityRung:
			t.Logf("%s -> %s: another peer-to-peer rung won: %s", d.Dialer, d.Listener, d.Reason)
		case d.Worse:
			t.Errorf("%s -> %s: worse than possible: %s", d.Dialer, d.Listener, d.Reason)
		}
	}
	if dir := os.Getenv("REACH_MATRIX_OUT"); dir != "" {
		if err := res.WriteFiles(dir); err != nil {
			t.Fatal(err)
		}
		t.Logf("written to %s", filepath.Join(dir, "matrix.{md,json,png}"))
	}
}
