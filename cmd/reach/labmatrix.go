package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/reachp2p/reach/lab/matrix"
	"github.com/reachp2p/reach/lab/natlab"
)

// labMatrix runs `reach lab matrix`: the connectivity matrix in one lab,
// with progress on stderr and the Markdown report on stdout.
func labMatrix(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lab matrix", flag.ContinueOnError)
	out := fs.String("out", "matrix-out", "folder for matrix.md, matrix.json and matrix.png")
	delay := fs.Duration("delay", 20*time.Millisecond, "one-way delay on every access link (0: none)")
	runs := fs.Int("runs", 3, "dials per direction, each with two fresh nodes")
	pairs := fs.String("pairs", "full", "full: every pair of kinds (45 pairs, 81 directions); short: the CI's representative pairs")
	size := fs.Int("size", 4<<20, "bytes sent on one stream per dial to measure throughput (0: none)")
	timeout := fs.Duration("timeout", time.Hour, "give up after this long (what was measured is still written)")
	verbose := fs.Bool("v", false, "log every attempt and the nodes' warnings to stderr")
	from := fs.String("from", "", "render a matrix.json written earlier into --out instead of measuring (no lab, no root)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("lab matrix takes no arguments, got %q", fs.Args())
	}
	if *from != "" {
		return renderMatrix(*from, *out)
	}
	cfg := matrix.Config{Runs: *runs, Size: *size, Delay: *delay}
	if *delay == 0 {
		cfg.Delay = -1
	}
	if *size == 0 {
		cfg.Size = -1
	}
	switch *pairs {
	case "full":
		cfg.Pairs = matrix.FullPairs()
	case "short":
		cfg.Pairs = matrix.ShortPairs()
	default:
		return fmt.Errorf("--pairs: %q is neither short nor full", *pairs)
	}
	if *verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		cfg.NodeLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	done := 0
	total := len(cfg.Pairs) * 2
	for _, p := range cfg.Pairs {
		if p.A == p.B {
			total--
		}
	}
	cfg.OnDirection = func(d matrix.Direction) {
		done++
		flag := ""
		if d.Worse {
			flag = "  WORSE: " + d.Reason
		}
		fmt.Fprintf(os.Stderr, "[%2d/%d] %-15s -> %-15s %d/%d %-10s median %6.0f ms  %4.1f RTT  %5.0f Mbit/s%s\n",
			done, total, d.Dialer, d.Listener, d.Connected, len(d.Attempts), d.Strategy, d.ConnectMedianMS, d.ConnectRTTs, d.Mbps, flag)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	lab, err := natlab.New(ctx, natlab.Config{})
	if err != nil {
		return err
	}
	defer lab.Close()
	fmt.Fprintf(os.Stderr, "lab %s: building the topology, then %d directions × %d dials\n", lab.ID(), total, cfg.Runs)
	res, err := matrix.Run(ctx, lab, cfg)
	if res == nil {
		return err
	}
	res.Commit = gitCommit()
	if werr := res.WriteFiles(*out); werr != nil {
		return werr
	}
	fmt.Print(res.Markdown())
	fmt.Fprintf(os.Stderr, "\nwrote %s, %s and %s in %s (%s)\n", matrix.MarkdownFile, matrix.JSONFile, matrix.PNGFile, *out, res.Duration)
	if err != nil {
		return fmt.Errorf("matrix stopped early (%w); the files hold what was measured", err)
	}
	return nil
}

// renderMatrix writes the report files of a result read from a JSON file.
func renderMatrix(from, out string) error {
	f, err := os.Open(from)
	if err != nil {
		return err
	}
	defer f.Close()
	res, err := matrix.ReadJSON(f)
	if err != nil {
		return err
	}
	if err := res.WriteFiles(out); err != nil {
		return err
	}
	fmt.Print(res.Markdown())
	return nil
}

// gitCommit names the checkout's commit, if the command runs in one.
func gitCommit() string {
	b, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	c := strings.TrimSpace(string(b))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		c += " (with local changes)"
	}
	return c
}
