// Command reach is the CLI of the reach SDK: it runs the public server,
// connects peers like netcat, pings them, sends files, runs the demo and
// drives the NAT lab. Its commands, their output and exit codes are a
// contract; see docs/cli.md.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/reachp2p/reach/stream"
)

type command struct {
	name, summary string
	run           func(args []string) error
}

// commands is the list of subcommands, in help order. Each lives in its
// own file as a func(args []string) error.
var commands = []command{
	{"server", "run the public server: rendezvous, STUN and relay on one UDP+TCP port", runServer},
	{"demo", "embedded server and two peers in one process: connect, move data, print the result", runDemo},
	{"id", "print the peer ID of the key in use (created if missing)", runID},
	{"listen", "accept one stream and copy it to stdout, stdin to it (like nc -l); --forward exposes a TCP service", runListen},
	{"dial", "connect to a peer, stdin to the stream, the stream to stdout (like nc); --local forwards a TCP port", runDial},
	{"ping", "measure the round trip to a peer and show the path", runPing},
	{"send", "offer files and folders: print a ticket, serve it until the receiver has everything", runSend},
	{"recv", "fetch what a ticket offers: verified, resumable", runRecv},
	{"supernode", "volunteer as a supernode: forward for peers that cannot punch through (needs open ports)", runSupernode},
	{"netcheck", "diagnose this network: addresses, NAT mapping, port mapping, UDP to each server", runNetcheck},
	{"lab", "build NAT lab topologies for manual experiments (root)", runLab},
	{"version", "print the version", runVersion},
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: reach <command> [flags] [arguments]

reach connects two programs across NATs and firewalls: one side listens,
the other dials its peer ID; the server (reach server) introduces them.

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-10s %s\n", "help", "print this help, or a command's (reach help COMMAND)")
	fmt.Fprint(w, `
Run 'reach COMMAND --help' for a command's flags. Peers use the key given by
--key FILE, else $REACH_KEY, else a default key in the user's config
directory; the server by --server CS, else $REACH_SERVER. Exit codes: 0 ok,
1 error, 2 usage, 3 the peer went away, 130 interrupted. See docs/cli.md.
`)
}

func main() { os.Exit(run(os.Args[1:])) }

// run runs the command line args and returns the exit code.
func run(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help":
		usage(os.Stdout)
		return 0
	case "-version", "--version":
		fmt.Println(version())
		return 0
	case "help":
		return fail(runHelp(args[1:]))
	}
	if strings.HasPrefix(args[0], "-") {
		return fail(&usageError{err: fmt.Errorf("unknown flag %q (flags go after the command)", args[0])})
	}
	for _, c := range commands {
		if c.name == args[0] {
			return fail(c.run(args[1:]))
		}
	}
	return fail(&usageError{err: fmt.Errorf("unknown command %q", args[0])})
}

// fail prints err (one line, and a hint for a usage error) on stderr and
// returns the exit code.
func fail(err error) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	fmt.Fprintf(os.Stderr, "reach: %s\n", message(err))
	var ue *usageError
	if errors.As(err, &ue) {
		help := "reach --help"
		if ue.cmd != "" {
			help = "reach " + ue.cmd + " --help"
		}
		fmt.Fprintf(os.Stderr, "run '%s' for usage\n", help)
	}
	return exitCode(err)
}

func runVersion(args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		fmt.Println("usage: reach version\n\nPrints the version of this build (module version, or VCS revision), the Go\nversion, OS and architecture.")
		return errHelp
	}
	if len(args) > 0 {
		return usagef("version", "unexpected argument %q", args[0])
	}
	fmt.Println(version())
	return nil
}

func runHelp(args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		usage(os.Stdout)
		return nil
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(append(args[1:len(args):len(args)], "--help"))
		}
	}
	if args[0] == "help" {
		usage(os.Stdout)
		return nil
	}
	return &usageError{err: fmt.Errorf("unknown command %q", args[0])}
}

// Exit codes (docs/cli.md, "Exit codes").
const (
	exitError       = 1   // any other failure
	exitUsage       = 2   // no or unknown command, bad flag or argument
	exitPeerGone    = 3   // the peer was interrupted, aborted, or closed while we still sent
	exitInterrupted = 130 // SIGINT or SIGTERM (128 + SIGINT, as shells report it)
)

func exitCode(err error) int {
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, errInterrupted):
		return exitInterrupted
	case errors.Is(err, stream.ErrPeerInterrupted), errors.Is(err, stream.ErrPeerAborted), errors.Is(err, stream.ErrPeerClosed):
		return exitPeerGone
	}
	return exitError
}
