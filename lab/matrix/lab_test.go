package matrix

import (
	"context"
	"log/slog"
	"os"
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

// TestLabMatrixShort is the CI variant of the matrix: the short pairs of
// every variant (Variant.Short), each variant in a lab of its own as a
// subtest: main's ShortPairs at 20 ms on every access link, one dial per
// direction; linux-host port-restricted with itself and linux-host
// restricted cone against linux-host symmetric with no delay at all, the
// former also with the server far away; symmetric against linux-host
// port-restricted, dual-stack. Those have two dials per direction (both
// hosts of a self-pair dial once). Every direction must connect, and
// none may take a worse kind of path than possible (a forwarder where the
// peers could have their own path, IPv4 where both have IPv6). Another
// peer-to-peer rung than the best (SeverityRung: e.g. holepunch's
// optimistic dial beating direct to an open peer by a few milliseconds on
// a busy machine, the same path) is logged, not failed; docs/matrix.md
// tracks it. The tables go to the test log and, with REACH_MATRIX_OUT
// set, the report's files to that folder.
func TestLabMatrixShort(t *testing.T) {
	natlab.Require(t)
	rep := &Report{Started: time.Now()}
	for _, v := range Variants() {
		t.Run(v.Name, func(t *testing.T) {
			runs := 2
			if v.Name == VariantMain {
				runs = 1
			}
			res := runShort(t, v, runs)
			rep.Variants = append(rep.Variants, res)
		})
	}
	rep.Duration = time.Since(rep.Started).Round(time.Second).String()
	if dir := os.Getenv("REACH_MATRIX_OUT"); dir != "" {
		if err := rep.WriteFiles(dir); err != nil {
			t.Fatal(err)
		}
		t.Logf("written to %s", dir)
	}
}

// runShort measures v's short pairs in a lab of its own and fails t for
// every direction that did not connect or took a worse kind of path.
func runShort(t *testing.T, v Variant, runs int) *Result {
	lab := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, lab, v.Config(Config{
		Runs:       runs,
		Size:       1 << 20,
		Logger:     slog.New(slog.NewTextHandler(tlog{t}, nil)),
		NodeLogger: slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, true))
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + res.Markdown())
	if got, want := len(res.Directions), Directions(v.Short); got != want {
		t.Errorf("%d directions measured, want %d", got, want)
	}
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
	return res
}
