package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/shortcode"
	"github.com/reachp2p/reach/transfer"
)

// runSend offers files and folders: it prints a ticket on stdout and
// serves it until one receiver has everything (or, with --keep, until
// interrupted).
const sendHelp = `usage: reach send [flags] PATH...

Offers files and folders: prints a ticket (the line to give the receiver:
reach recv TICKET) and serves the offer until one receiver has everything
(with --keep, until interrupted). The ticket names this node's peer ID,
the server and the offer's hash; the receiver verifies every byte. Special
files are skipped with a message. Progress goes to stderr.

It also prints a short code (like 7-kato-bira-zemo) that reach recv takes
instead of the ticket, when the receiver uses the same server: the server
keeps the ticket sealed with the code for --code-ttl, hands it out once,
and burns the code after 3 wrong guesses (docs/security.md, "Short
codes"). --no-code skips it.

A PATH of - offers stdin as one file named stdin (or --name NAME): stdin
is read to its end into a temporary file first (the offer names each
file's size and hash up front), removed when send exits.

Without --json the ticket is the one line on stdout. With --json, stdout
carries only events, one a line: skipped, ticket (with the ticket),
progress, sent; see docs/cli.md.
`

func runSend(args []string) error {
	fs := newFlagSet("send", sendHelp)
	var pf peerFlags
	pf.register(fs, true)
	keep := fs.Bool("keep", false, "keep serving after a receiver finished, until interrupted")
	name := fs.String("name", defaultStdinName, "the file `NAME` under which - (stdin) is offered")
	noCode := fs.Bool("no-code", false, "print no short code, only the ticket")
	codeTTL := fs.Duration("code-ttl", shortcode.DefaultTTL, "how long the short code waits for its receiver (the server caps it)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usagef("send", "send takes at least one PATH")
	}
	if err := stdinName(*name); err != nil {
		return err
	}
	ev := pf.events()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	paths, cleanup, err := spoolStdin(ctx, fs.Args(), *name)
	defer cleanup()
	if err != nil {
		return err
	}
	offer, err := transfer.Prepare(ctx, paths, transfer.PrepareConfig{})
	if err != nil {
		return err
	}
	for _, s := range offer.Skipped {
		ev.emit(map[string]any{"event": "skipped", "path": s.Path, "reason": s.Reason})
		if !pf.jsonOut {
			fmt.Fprintf(os.Stderr, "skipping %s: %s\n", s.Path, s.Reason)
		}
	}
	setup, cancel := context.WithTimeout(ctx, 30*time.Second)
	n, err := pf.node(setup)
	cancel()
	if err != nil {
		return err
	}
	defer n.Close()
	servers := append([]string{n.Server()}, pf.serverList()...)
	tk, err := offer.Ticket(n.ID(), dedup(servers)...)
	if err != nil {
		return err
	}
	m := &offer.Manifest
	code, dropCode := publishCode(ctx, n, tk, *noCode, *codeTTL, pf.jsonOut)
	defer dropCode()
	ticketEv := map[string]any{"event": "ticket", "ticket": tk.String(), "files": m.Files(), "bytes": m.Size()}
	if code != nil {
		ticketEv["code"], ticketEv["code_ttl_ms"] = code.code.String(), code.ttl.Milliseconds()
	}
	ev.emit(ticketEv)
	if !pf.jsonOut {
		if code != nil {
			fmt.Fprintf(os.Stderr, "offering %d files, %s. On the other side run:\n  reach recv %s\n"+
				"(with this server, within %v), or anywhere:\n  reach recv %s\n", m.Files(), humanBytes(m.Size()), code.code, code.ttl, tk)
		} else {
			fmt.Fprintf(os.Stderr, "offering %d files, %s. On the other side run:\n  reach recv %s\n", m.Files(), humanBytes(m.Size()), tk)
		}
		// For scripts (T=$(reach send x)); on a terminal the message
		// above shows it already, unless stderr goes elsewhere (2>log).
		if !term.IsTerminal(int(os.Stdout.Fd())) || !term.IsTerminal(int(os.Stderr.Fd())) {
			fmt.Println(tk)
		}
	}

	out := newProgressOut(ev, "send")
	finished := make(chan struct{}, 1)
	s := transfer.NewSender(transfer.SenderConfig{
		Progress:         out.progress,
		ProgressInterval: out.interval(),
		Done: func(r transfer.SendResult) {
			out.finish(r.Err == nil)
			ev.emit(map[string]any{"event": "sent", "peer": r.Peer.String(), "complete": r.Complete, "files": r.Files,
				"bytes": r.Bytes, "resumed": r.Resumed, "elapsed_ms": r.Elapsed.Milliseconds(), "error": errString(r.Err)})
			if !pf.jsonOut {
				if r.Complete {
					fmt.Fprintf(os.Stderr, "%s has everything: sent %d files, %s in %v%s\n", r.Peer.Short(), r.Files,
						humanBytes(r.Bytes), r.Elapsed.Round(time.Millisecond), resumedNote(r.Resumed))
				} else {
					fmt.Fprintf(os.Stderr, "%s stopped: %s\n", r.Peer.Short(), message(r.Err))
				}
			}
			if r.Complete {
				select {
				case finished <- struct{}{}:
				default:
				}
			}
		},
	})
	s.Add(offer)
	serveCtx, stopServe := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- s.Serve(serveCtx, n) }()
	for {
		select {
		case <-finished:
			if *keep {
				continue
			}
			// The receiver closes the session once it has our EOF; give it
			// a moment so that our last packets are not cut off.
			for _, sess := range n.Sessions() {
				select {
				case <-sess.Done():
				case <-time.After(2 * time.Second):
				}
			}
			stopServe()
			<-served
			return nil
		case err := <-served:
			stopServe()
			if ctx.Err() != nil {
				return errInterrupted
			}
			return replaced(n, err)
		}
	}
}

// runRecv fetches what a ticket offers.
const recvHelp = `usage: reach recv [flags] TICKET|CODE

Fetches what a ticket (printed by reach send) offers: it dials the sender
through the ticket's server, shows what it will write and where, asks on a
terminal (unless --yes or --out), and verifies every file against the
ticket's hash. An interrupted transfer resumes when run again with the
same ticket and --out. It refuses to overwrite files with other content
(--force) and transfers larger than --max-size. Progress goes to stderr.

With --json, one event a line on stdout: connected, manifest, progress,
file, done (or error); it does not ask. See docs/cli.md.

A short CODE (like 7-kato-bira-zemo, printed by reach send) stands for the
ticket: it is fetched from the server (--server or $REACH_SERVER, the one
the sender uses), once; a code is void after 3 wrong tries.
`

func runRecv(args []string) error {
	fs := newFlagSet("recv", recvHelp)
	pf := peerFlags{caller: true}
	pf.register(fs, true)
	outDir := fs.String("out", "", "target directory (created if missing); default: the current directory after a\n"+
		"confirmation on a terminal, else a new folder reach-<transfer ID>")
	yes := fs.Bool("yes", false, "do not ask; without --out, receive into a new folder reach-<transfer ID>")
	force := fs.Bool("force", false, "overwrite files that exist with other content, write into existing folders")
	maxSize := fs.String("max-size", "", "refuse transfers larger than this (bytes, or with a unit: 500MB, 2GiB)")
	streams := fs.Int("streams", 0, "data streams (default 4)")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on connection setup")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("recv", "recv takes one TICKET or CODE, got %d arguments", fs.NArg())
	}
	var (
		tk   transfer.Ticket
		code shortcode.Code
		err  error
	)
	viaCode := shortcode.LooksLikeCode(fs.Arg(0))
	if viaCode {
		code, err = shortcode.Parse(fs.Arg(0))
	} else {
		tk, err = transfer.ParseTicket(fs.Arg(0))
	}
	if err != nil {
		return err
	}
	limit, err := parseSize(*maxSize)
	if err != nil {
		return fmt.Errorf("--max-size: %w", err)
	}
	ev := pf.events()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ask := !*yes && !pf.jsonOut && term.IsTerminal(int(os.Stdin.Fd())) && term.IsTerminal(int(os.Stderr.Fd()))
	setup, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var n *reach.Node
	if viaCode {
		// The code waits at the server both sides use; the ticket in it
		// pins the sender's key like any ticket.
		n, tk, err = claimTicket(setup, &pf, code)
	} else {
		// The sender's servers first: it is registered there.
		pf.servers = append(tk.ConnectStrings(), pf.servers...)
		n, err = pf.node(setup)
	}
	if err != nil {
		ev.emit(map[string]any{"event": "error", "error": message(err)})
		return err
	}
	defer n.Close()
	dir := recvDir(*outDir, ask, tk.ID)
	sess, err := n.DialSession(setup, tk.Peer)
	if err != nil {
		err = replaced(n, err)
		ev.emit(map[string]any{"event": "error", "error": message(err)})
		return err
	}
	ev.emit(connectedEvent(sess))
	out := newProgressOut(ev, "recv")
	res, err := transfer.ReceiveSession(ctx, sess, tk.ID, transfer.ReceiveConfig{
		Dir: dir, Force: *force, MaxSize: limit, Streams: *streams,
		Progress: out.progress, ProgressInterval: out.interval(),
		Confirm: func(in transfer.Incoming) error {
			ev.emit(map[string]any{"event": "manifest", "files": in.Files, "bytes": in.Size, "on_disk": in.OnDisk,
				"files_on_disk": in.Complete, "overwrite": len(in.Overwrite), "dir": dir, "top": firstN(topEntries(in.Manifest), maxListed)})
			if pf.jsonOut {
				return nil
			}
			fmt.Fprint(os.Stderr, describeIncoming(in, dir))
			if ask {
				return confirm(ctx, "receive? [y/N] ")
			}
			return nil
		},
		FileDone: func(e transfer.Entry) {
			ev.emit(map[string]any{"event": "file", "path": e.Path, "bytes": e.Size})
		},
	})
	out.finish(err == nil)
	if err != nil {
		ev.emit(map[string]any{"event": "error", "error": message(err)})
		return err
	}
	ev.emit(map[string]any{"event": "done", "files": res.Files, "bytes": res.Bytes, "resumed": res.Resumed,
		"files_on_disk": res.Complete, "elapsed_ms": res.Elapsed.Milliseconds()})
	if !pf.jsonOut {
		rate := float64(res.Bytes) / res.Elapsed.Seconds()
		fmt.Fprintf(os.Stderr, "received %d files, %s in %v (%s/s), verified%s\n", res.Files, humanBytes(res.Bytes),
			res.Elapsed.Round(time.Millisecond), humanBytes(int64(rate)), resumedNote(res.Resumed))
	}
	// Both sides have finished the protocol (the sender's EOF came):
	// nothing is in flight, closing the session loses nothing.
	sess.CloseWithError(0, "done")
	return nil
}

// errDeclined: the user answered no.
var errDeclined = errors.New("declined")

// recvDir is where recv writes: --out if given; the current directory when
// the user confirms on a terminal; otherwise a new folder named after the
// transfer (the same one again for the same ticket, so a rerun resumes),
// never the current directory unseen: run in $HOME, a sender could else
// drop files there that nobody looked at.
func recvDir(out string, ask bool, id transfer.ID) string {
	switch {
	case out != "":
		return out
	case ask:
		return "."
	}
	return "reach-" + id.String()[:12]
}

// maxListed is how many top-level entries recv lists before "and N more".
const maxListed = 10

// topEntries lists the manifest's top-level names (directories with a
// trailing "/"), the first maxListed of them.
func topEntries(m *transfer.Manifest) []string {
	var top []string
	for _, e := range m.Entries {
		if strings.Contains(e.Path, "/") {
			continue
		}
		if e.Type == transfer.TypeDir {
			top = append(top, e.Path+"/")
		} else {
			top = append(top, e.Path)
		}
	}
	return top
}

func firstN(ss []string, n int) []string { return ss[:min(len(ss), n)] }

// describeIncoming says what a transfer will write, and where. The names
// are shown quoted if they hold anything unusual (the receiver has refused
// control characters already).
func describeIncoming(in transfer.Incoming, dir string) string {
	var b strings.Builder
	top := topEntries(in.Manifest)
	fmt.Fprintf(&b, "receiving %d files, %s into %s%s:\n", in.Files, humanBytes(in.Size), dir, resumedNote(in.OnDisk))
	for i, name := range top {
		if i == maxListed {
			fmt.Fprintf(&b, "  ... and %d more\n", len(top)-maxListed)
			break
		}
		if q := strconv.Quote(name); q[1:len(q)-1] != name {
			name = q
		}
		fmt.Fprintf(&b, "  %s\n", name)
	}
	if len(in.Overwrite) > 0 {
		fmt.Fprintf(&b, "  overwriting %d existing files (--force)\n", len(in.Overwrite))
	}
	return b.String()
}

// confirm asks on stderr and reads a line from stdin: "y" or "yes" goes
// on, anything else (or ctx ending) is errDeclined.
func confirm(ctx context.Context, prompt string) error {
	fmt.Fprint(os.Stderr, prompt)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		answer <- strings.ToLower(strings.TrimSpace(line))
	}()
	select {
	case a := <-answer:
		if a == "y" || a == "yes" {
			return nil
		}
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr)
	}
	return errDeclined
}

// serverList is the --server flags, or $REACH_SERVER.
func (p *peerFlags) serverList() []string {
	if len(p.servers) > 0 {
		return p.servers
	}
	return strings.Fields(strings.ReplaceAll(os.Getenv("REACH_SERVER"), ",", " "))
}

func dedup(ss []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range ss {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func resumedNote(n int64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (%s already there)", humanBytes(n))
}

// progressOut shows transfer progress on stderr: a progress bar on a
// terminal, a line a second otherwise, JSON events with --json.
type progressOut struct {
	verb    string
	ev      *events
	json    bool
	tty     bool
	mu      sync.Mutex
	bar     *progressbar.ProgressBar
	last    time.Time
	printed bool
}

func newProgressOut(ev *events, verb string) *progressOut {
	return &progressOut{verb: verb, ev: ev, json: ev.on, tty: !ev.on && term.IsTerminal(int(os.Stderr.Fd()))}
}

func (o *progressOut) interval() time.Duration {
	if o.tty {
		return 100 * time.Millisecond
	}
	return time.Second
}

func (o *progressOut) progress(p transfer.Progress) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.printed = true
	cur := ""
	if len(p.Active) > 0 {
		a := p.Active[0]
		cur = fmt.Sprintf("%s %d%%", path.Base(a.Path), percent(a.BytesDone, a.Size))
		if a.ETA > 0 {
			cur += " eta " + a.ETA.String()
		}
	}
	switch {
	case o.json:
		active := make([]map[string]any, 0, len(p.Active))
		for _, a := range p.Active {
			active = append(active, map[string]any{"path": a.Path, "bytes_done": a.BytesDone, "bytes": a.Size,
				"rate": int64(a.Rate), "eta_ms": a.ETA.Milliseconds()})
		}
		o.ev.emit(map[string]any{"event": "progress", "peer": p.Peer, "files_done": p.FilesDone, "files": p.Files,
			"bytes_done": p.BytesDone, "bytes": p.Bytes, "rate": int64(p.Rate), "eta_ms": p.ETA.Milliseconds(), "active": active})
	case o.tty:
		if o.bar == nil {
			o.bar = progressbar.NewOptions64(p.Bytes, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionShowBytes(true),
				progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionFullWidth(), progressbar.OptionShowElapsedTimeOnFinish(), progressbar.OptionClearOnFinish())
		}
		o.bar.Describe(fmt.Sprintf("[%d/%d] %s", p.FilesDone, p.Files, cur))
		o.bar.Set64(p.BytesDone)
	default:
		line := fmt.Sprintf("%s %3d%% %s/%s %s/s files %d/%d", o.verb, percent(p.BytesDone, p.Bytes), humanBytes(p.BytesDone),
			humanBytes(p.Bytes), humanBytes(int64(p.Rate)), p.FilesDone, p.Files)
		if p.ETA > 0 {
			line += " eta " + p.ETA.String()
		}
		if cur != "" {
			line += " | " + cur
		}
		fmt.Fprintln(os.Stderr, line)
	}
}

// finish ends the bar.
func (o *progressOut) finish(ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.bar != nil {
		if ok {
			o.bar.Finish()
		}
		o.bar.Exit()
		o.bar = nil
	}
}

func percent(n, total int64) int {
	if total <= 0 {
		return 100
	}
	return int(n * 100 / total)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// parseSize reads "1000", "500MB", "2GiB", "1.5G" (K, M, G, T: powers of
// 1000 with B, of 1024 with iB or alone). Empty is zero (no limit).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.ToUpper(strings.TrimSpace(s[i:]))
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || !(v >= 0) {
		return 0, fmt.Errorf("bad size %q", s)
	}
	mult := map[string]float64{"": 1, "B": 1,
		"K": 1 << 10, "KIB": 1 << 10, "KB": 1e3, "M": 1 << 20, "MIB": 1 << 20, "MB": 1e6,
		"G": 1 << 30, "GIB": 1 << 30, "GB": 1e9, "T": 1 << 40, "TIB": 1 << 40, "TB": 1e12}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("bad size unit %q", unit)
	}
	// Converting a float beyond int64 gives a negative number on amd64,
	// which would read as "no limit".
	if n := v * mult; n >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(v * mult), nil
}
