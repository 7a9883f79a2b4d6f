package main

// The conventions every command follows: -h/--help prints its usage on
// stdout and exits 0; a bad flag or argument is a usage error (exit 2,
// the message and a hint on stderr); any other error is one line on
// stderr, "reach: " and the innermost meaningful message.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/transfer"
)

// errHelp: the command printed its usage because -h or --help asked for
// it (exit 0).
var errHelp = errors.New("help requested")

// usageError is a bad command line: an unknown flag, a bad flag value, a
// missing or extra argument (exit 2).
type usageError struct {
	cmd string // the command, for the hint ("listen", "lab up")
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef is a usageError of command cmd.
func usagef(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, err: fmt.Errorf(format, args...)}
}

// newFlagSet makes a command's FlagSet; its usage is help (what the
// command does and its arguments), then its flags with their defaults.
func newFlagSet(name, help string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), help)
		fmt.Fprintln(fs.Output(), "\nFlags (-flag and --flag are the same):")
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs. -h or --help prints fs's usage on
// stdout and returns errHelp; a parse error is a *usageError naming the
// flag. The flag package prints nothing itself.
func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(os.Stdout)
		fs.Usage()
		return errHelp
	}
	if err != nil {
		if f, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: "); ok {
			err = fmt.Errorf("unknown flag %s", f)
		}
		return &usageError{cmd: fs.Name(), err: err}
	}
	return nil
}

// version is the build's version: the module version when installed with
// go install m@version, else the VCS revision (with "-dirty" for a
// modified tree) when built in a clone, and the Go version.
func version() string {
	return fmt.Sprintf("reach %s %s %s/%s", buildVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// buildVersion is the module version, or "devel REVISION[-dirty]", or
// "unknown" (version without the Go version and platform).
func buildVersion() string {
	v := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		v = bi.Main.Version
		if v == "" || v == "(devel)" {
			v = "devel"
			var rev, modified string
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					modified = s.Value
				}
			}
			if rev != "" {
				v += " " + rev[:min(12, len(rev))]
				if modified == "true" {
					v += "-dirty"
				}
			}
		}
	}
	return v
}

// packages are the prefixes SDK errors start with; message drops them
// (each layer adds its own, so they repeat).
var packages = map[string]bool{"reach": true, "rendezvous": true, "stream": true, "transfer": true, "relay": true,
	"identity": true, "holepunch": true, "shortcode": true, "mdns": true, "supernode": true, "direct": true, "upnp": true, "turn": true, "ladder": true}

// message is err as one line for a user: the named errors a user meets
// most said plainly, others without the packages' prefixes and repeats.
func message(err error) string {
	var ce *rendezvous.ConnectError
	var ee *transfer.ExistsError
	var re *replacedError
	var rj *rejectedError
	if msg, ok := codeMessage(err); ok {
		return msg
	}
	switch {
	case errors.As(err, &re):
		return re.Error()
	case errors.As(err, &rj):
		return rj.Error()
	case errors.Is(err, reach.ErrSelfDial):
		return "that is this node's own peer ID (both sides use the same key? give one its own with --key FILE or REACH_KEY)"
	case errors.As(err, &ce):
		var msg string
		switch {
		case errors.Is(ce, rendezvous.ErrUnknownPeer):
			msg = fmt.Sprintf("unknown peer %s: it has not registered with this server (is reach listen running there, with the same --server?)", ce.Peer)
		case errors.Is(ce, rendezvous.ErrPeerOffline):
			msg = fmt.Sprintf("peer %s is offline: it registered with this server before but is not connected now", ce.Peer)
		default:
			msg = fmt.Sprintf("peer %s: %s", ce.Peer, trimPrefixes(ce.Unwrap().Error()))
		}
		if ce.Reason != "" {
			msg += " (" + ce.Reason + ")"
		}
		return msg
	case errors.As(err, &ee):
		msg := fmt.Sprintf("%d file(s) exist with other content: %q", len(ee.Paths), ee.Paths[0])
		if len(ee.Paths) > 1 {
			msg += ", ..."
		}
		return msg + " (--force overwrites them)"
	}
	if rm, ok := errors.AsType[*transfer.RemoteError](err); ok && rm.Reason != "" {
		// The peer's own words ("no space left on the receiver's disk:
		// ..."), without "transfer: peer: disk_full: transfer:".
		return "the peer reported: " + strings.Join(strings.Fields(trimPrefixes(rm.Reason)), " ")
	}
	msg := trimPrefixes(err.Error())
	// The SDK names its Config fields; the CLI's flags are what a user
	// can change.
	msg = strings.ReplaceAll(msg, "use Force to", "use --force to")
	return strings.Join(strings.Fields(msg), " ")
}

// trimPrefixes drops package prefixes ("rendezvous: ") from each part of
// a message, and parts that repeat the one before.
func trimPrefixes(msg string) string {
	parts := strings.Split(msg, ": ")
	out := parts[:0]
	for _, p := range parts {
		if packages[p] || (len(out) > 0 && out[len(out)-1] == p) {
			continue
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return msg
	}
	return strings.Join(out, ": ")
}
