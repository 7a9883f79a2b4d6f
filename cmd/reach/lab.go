//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

const labUsage = `usage: reach lab up|classify|matrix|down [flags] [arguments]

  reach lab up [--delay D] [--loss P] [--rate BPS] KIND_A KIND_B
                                build a server host and two peers behind the given
                                kinds, print them, keep them up until Ctrl-C
  reach lab classify            build every router type, print RFC 4787 mapping and
                                filtering as observed, tear down
  reach lab matrix [--variants all|main,zero-delay,far-server,ipv6] [--out DIR] [--runs N]
                   [--pairs short|full] [--delay 20ms] [--size BYTES]
                                the connectivity matrix: every pair of kinds (with the
                                linux-host variants and symmetric+upnp) dialled both ways,
                                in four topologies (see lab matrix -h); writes matrix.md,
                                matrix.json and the heatmaps to DIR
                                (--from matrix.json: render an earlier run again)
  reach lab down [--stale]      remove every lab namespace (--stale: only those whose process is gone)
kinds: %s
Needs root. See docs/lab.md.
`

func kindNames() string {
	var s []string
	for _, k := range append(natlab.Kinds(), natlab.MoreKinds()...) {
		s = append(s, string(k))
	}
	return strings.Join(s, ", ")
}

func runLab(args []string) error {
	if len(args) == 0 {
		return usagef("lab", "lab needs a command: up, classify, matrix or down")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Printf(labUsage, kindNames())
		return errHelp
	}
	if len(args) > 1 && args[0] != "matrix" && args[0] != "up" {
		switch args[1] {
		case "-h", "-help", "--help":
			fmt.Printf(labUsage, kindNames())
			return errHelp
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "down":
		// --stale: only labs whose owning process is gone (safe while
		// other lab tests run on the machine).
		all := !(len(args) > 1 && args[1] == "--stale")
		removed, err := natlab.Cleanup(ctx, all)
		for _, ns := range removed {
			fmt.Println("removed", ns)
		}
		return err
	case "classify":
		return labClassify(ctx)
	case "matrix":
		return labMatrix(ctx, args[1:])
	case "up":
		fs := newFlagSet("lab up", fmt.Sprintf(`usage: reach lab up [--delay D] [--loss P] [--rate BPS] KIND_A KIND_B

Builds a server host and two peers behind routers of the given kinds,
prints them, and keeps them up until Ctrl-C. Needs root.
kinds: %s
`, kindNames()))
		var imp natlab.Impairment
		fs.DurationVar(&imp.Delay, "delay", 0, "one-way delay on each peer's access link (its router's WAN, or its own link if open)")
		fs.Float64Var(&imp.Loss, "loss", 0, "share of packets dropped on each peer's access link, 0..1")
		fs.Int64Var(&imp.Rate, "rate", 0, "bit/s limit on each peer's access link (0: none)")
		if err := parseFlags(fs, args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 2 {
			return usagef("lab up", "lab up takes two KINDs, got %d arguments", fs.NArg())
		}
		return labUp(ctx, fs.Arg(0), fs.Arg(1), imp)
	}
	return usagef("lab", "unknown lab command %q", args[0])
}

func labUp(ctx context.Context, a, b string, imp natlab.Impairment) error {
	ka, err := natlab.ParseKind(a)
	if err != nil {
		return err
	}
	kb, err := natlab.ParseKind(b)
	if err != nil {
		return err
	}
	lab, err := natlab.New(ctx, natlab.Config{})
	if err != nil {
		return err
	}
	defer lab.Close()
	srv, err := lab.AddPublicHost(ctx, "server")
	if err != nil {
		return err
	}
	for _, p := range []struct {
		name string
		kind natlab.Kind
	}{{"peera", ka}, {"peerb", kb}} {
		site, err := lab.AddSite(ctx, p.name, p.kind)
		if err != nil {
			return err
		}
		if imp != (natlab.Impairment{}) {
			link := site.Host
			if site.Router != nil {
				link = &site.Router.Host
			}
			if err := link.Impair(ctx, imp); err != nil {
				return err
			}
		}
	}
	fmt.Print(lab.Describe())
	fmt.Printf("\ntry:\n  ip netns exec %s go run ./cmd/reach server --listen %s\n", srv.Namespace(), srv.Addr())
	fmt.Printf("  ip netns exec %speera bash\n", natlab.Prefix+lab.ID()+"-")
	fmt.Println("\nlab is up; Ctrl-C tears it down")
	<-ctx.Done()
	return nil
}

func labClassify(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	lab, err := natlab.New(ctx, natlab.Config{})
	if err != nil {
		return err
	}
	defer lab.Close()
	var pubs [3]*natlab.Host
	for i := range pubs {
		if pubs[i], err = lab.AddPublicHost(ctx, fmt.Sprintf("pub%d", i)); err != nil {
			return err
		}
	}
	var errs []error
	for i, k := range append(natlab.Kinds()[1:], natlab.MoreKinds()...) {
		site, err := lab.AddSite(ctx, fmt.Sprintf("h%d", i), k)
		if err != nil {
			return err
		}
		c, err := natlab.Classify(site.Host, pubs[0], pubs[1], pubs[2])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
			continue
		}
		fmt.Printf("%-21s %s\n", k, c)
	}
	return errors.Join(errs...)
}
