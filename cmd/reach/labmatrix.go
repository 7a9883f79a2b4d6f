//go:build linux

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

// labMatrixUsage is the flag set's usage text: what the variants are.
const labMatrixUsage = `usage: reach lab matrix [flags]

The connectivity matrix: every pair of network kinds dialled both ways with
fresh nodes, the winning rung compared with the best possible one. Each
variant runs in a lab of its own, one after the other:
%s
Writes matrix.md (every variant), matrix.json and one heatmap per variant
(matrix.png, matrix-<variant>.png) to --out; the Markdown also goes to
stdout, progress to stderr. Needs root (not with --from).

flags:
`

// labMatrix runs `reach lab matrix`: the connectivity matrix, variant by
// variant, each in a lab of its own, with progress on stderr and the
// Markdown report on stdout.
func labMatrix(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lab matrix", flag.ContinueOnError)
	out := fs.String("out", "matrix-out", "folder for matrix.md, matrix.json and the heatmaps")
	variants := fs.String("variants", "all", "comma-separated variants to run (main, zero-delay, far-server, ipv6), or all")
	delay := fs.Duration("delay", 20*time.Millisecond, "one-way delay on every access link in the main and ipv6 variants (0: none); zero-delay and far-server fix their own")
	runs := fs.Int("runs", 3, "dials per direction, each with two fresh nodes")
	pairs := fs.String("pairs", "full", "full: every pair of each variant's kinds; short: the CI's pairs of each variant; or a comma-separated list of KIND:KIND pairs (e.g. udp-blocked:proxy-only) to run those cells only")
	size := fs.Int("size", 4<<20, "bytes sent on one stream per dial to measure throughput (0: none)")
	timeout := fs.Duration("timeout", time.Hour, "give up after this long (what was measured is still written)")
	verbose := fs.Bool("v", false, "log every attempt and the nodes' warnings to stderr")
	from := fs.String("from", "", "render a matrix.json written earlier into --out instead of measuring (no lab, no root)")
	fs.Usage = func() {
		var vs strings.Builder
		for _, v := range matrix.Variants() {
			fmt.Fprintf(&vs, "  %-11s %s (%d kinds, %d directions)\n", v.Name, v.About, len(v.Kinds), matrix.Directions(v.Pairs()))
		}
		fmt.Fprintf(fs.Output(), labMatrixUsage, vs.String())
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("lab matrix", "lab matrix takes no arguments, got %q", fs.Args())
	}
	if *from != "" {
		return renderMatrix(*from, *out)
	}
	vs, err := matrix.ParseVariants(*variants)
	if err != nil {
		return fmt.Errorf("--variants: %w", err)
	}
	var only []matrix.Pair
	if *pairs != "full" && *pairs != "short" {
		if only, err = matrix.ParsePairs(*pairs); err != nil {
			return fmt.Errorf("--pairs: %q is neither short nor full, nor KIND:KIND pairs: %w", *pairs, err)
		}
	}
	base := matrix.Config{Runs: *runs, Size: *size}
	if *size == 0 {
		base.Size = -1
	}
	if *verbose {
		base.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		base.NodeLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	var cfgs []matrix.Config
	total := 0
	for _, v := range vs {
		if v.Delay == 20*time.Millisecond {
			v.Delay = *delay
			if *delay == 0 {
				v.Delay = -1
			}
		}
		cfg := v.Config(base, *pairs == "short")
		if only != nil {
			cfg.Pairs = only
		}
		if len(cfg.Pairs) == 0 {
			continue
		}
		cfgs = append(cfgs, cfg)
		total += matrix.Directions(cfg.Pairs)
	}
	done := 0
	onDirection := func(variant string) func(matrix.Direction) {
		return func(d matrix.Direction) {
			done++
			flag := ""
			switch {
			case d.Worse:
				flag = "  WORSE: " + d.Reason
			case d.FellBack > 0:
				flag = "  (" + d.Reason + ")"
			}
			fmt.Fprintf(os.Stderr, "[%3d/%d] %-10s %-26s -> %-26s %d/%d %-10s median %6.0f ms  %5.1f RTT  %5.0f Mbit/s%s\n",
				done, total, variant, d.Dialer, d.Listener, d.Connected, len(d.Attempts), d.Strategy, d.ConnectMedianMS, d.ConnectRTTs, d.Mbps, flag)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	rep := &matrix.Report{Started: time.Now(), Commit: gitCommit(), Command: "reach lab matrix " + strings.Join(args, " ")}
	var runErr error
	for _, cfg := range cfgs {
		cfg.OnDirection = onDirection(cfg.Variant)
		res, err := runVariant(ctx, cfg)
		if res != nil {
			res.Commit = rep.Commit
			rep.Variants = append(rep.Variants, res)
		}
		if err != nil {
			runErr = fmt.Errorf("variant %s: %w", cfg.Variant, err)
			break
		}
	}
	rep.Duration = time.Since(rep.Started).Round(time.Second).String()
	rep.Command = strings.TrimSpace(rep.Command)
	if len(rep.Variants) == 0 {
		return runErr
	}
	if werr := rep.WriteFiles(*out); werr != nil {
		return werr
	}
	fmt.Print(rep.Markdown())
	fmt.Fprintf(os.Stderr, "\nwrote %s, %s and the heatmaps in %s (%s, %d flagged)\n", matrix.MarkdownFile, matrix.JSONFile, *out, rep.Duration, rep.Flagged())
	if runErr != nil {
		return fmt.Errorf("matrix stopped early (%w); the files hold what was measured", runErr)
	}
	return nil
}

// runVariant measures one variant in a lab of its own.
func runVariant(ctx context.Context, cfg matrix.Config) (*matrix.Result, error) {
	lab, err := natlab.New(ctx, natlab.Config{})
	if err != nil {
		return nil, err
	}
	defer lab.Close()
	fmt.Fprintf(os.Stderr, "lab %s: variant %s: building the topology, then %d directions × %d dials\n",
		lab.ID(), cfg.Variant, matrix.Directions(cfg.Pairs), max(cfg.Runs, 1))
	return matrix.Run(ctx, lab, cfg)
}

// renderMatrix writes the report files of a result read from a JSON file.
func renderMatrix(from, out string) error {
	f, err := os.Open(from)
	if err != nil {
		return err
	}
	defer f.Close()
	rep, err := matrix.ReadReport(f)
	if err != nil {
		return err
	}
	if err := rep.WriteFiles(out); err != nil {
		return err
	}
	fmt.Print(rep.Markdown())
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
