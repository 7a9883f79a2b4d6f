// Command reach is the CLI of the reach SDK: it runs the public server,
// connects peers like netcat, pings them, runs the demo and drives the NAT
// lab. Its commands and their output are a contract; see README.md.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/reachp2p/reach/stream"
)

type command struct {
	name, summary string
	run           func(args []string) error
}

// commands is the list of subcommands, in help order. Each lives in its
// own file as a func(args []string) error.
var commands = []command{
	// (entries are added here as the commands exist)
	{"server", "run the public server: rendezvous and STUN on one UDP+TCP port", runServer},
	{"demo", "embedded server and two peers in one process: connect, move data, print the result", runDemo},
	{"id", "print the peer ID of a key file, creating the key if missing", runID},
	{"supernode", "volunteer as a supernode: forward for peers that cannot punch through (needs open ports)", runSupernode},
	{"listen", "accept one stream and copy it to stdout, stdin to it (like nc -l)", runListen},
	{"dial", "connect to a peer, stdin to the stream, the stream to stdout (like nc)", runDial},
	{"ping", "measure the round trip to a peer and show the path", runPing},
	{"send", "offer files and folders: print a ticket, serve it until the receiver has everything", runSend},
	{"recv", "fetch what a ticket offers: verified, resumable (--out DIR, --force, --max-size N)", runRecv},
	{"netcheck", "diagnose this network: addresses, NAT mapping, port mapping, UDP to each server", runNetcheck},
	{"lab", "build NAT lab topologies for manual experiments (root)", runLab},
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: reach <command> [flags]")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", c.name, c.summary)
	}
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(exitUsage)
	}
	for _, c := range commands {
		if c.name == os.Args[1] {
			if err := c.run(os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "reach %s: %v\n", c.name, err)
				os.Exit(exitCode(err))
			}
			return
		}
	}
	usage()
	os.Exit(exitUsage)
}

// Exit codes (README.md, "Exit codes").
const (
	exitError       = 1   // any other failure
	exitUsage       = 2   // no or unknown command
	exitPeerGone    = 3   // the peer was interrupted, aborted, or closed while we still sent
	exitInterrupted = 130 // SIGINT or SIGTERM (128 + SIGINT, as shells report it)
)

func exitCode(err error) int {
	switch {
	case errors.Is(err, errInterrupted):
		return exitInterrupted
	case errors.Is(err, stream.ErrPeerInterrupted), errors.Is(err, stream.ErrPeerAborted), errors.Is(err, stream.ErrPeerClosed):
		return exitPeerGone
	}
	return exitError
}
