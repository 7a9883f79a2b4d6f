package main

// The peers a reach listen serves: --allow PEER (repeatable) and
// --allow-file FILE (one peer ID a line), read again when a file changes
// or on SIGHUP. Without either, any peer that knows the listener's ID may
// connect.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// codeForwardDenied: the listener's allow list does not name the dialler
// (a stream, and the session it came on, are closed with it).
const codeForwardDenied = codeForwardConnect + 2

// errForwardDenied: the listener refused the stream, its allow list does
// not name this peer.
var errForwardDenied = errors.New("the listener does not allow this peer (its --allow list does not name it)")

// refusedLogEvery bounds the "refused" lines about one peer: a stranger
// that retries is logged once a minute, not for each attempt.
const refusedLogEvery = time.Minute

// allowList is the peers a listener serves. A nil *allowList allows every
// peer. With --allow-file it is read again when a file changes or on
// SIGHUP (watch).
type allowList struct {
	ids   atomic.Pointer[map[identity.PeerID]bool] // in use
	flags []identity.PeerID                        // --allow
	files []string                                 // --allow-file
	ev    *events

	rmu    sync.Mutex // reload
	stamps []fileStamp

	mu     sync.Mutex
	logged map[identity.PeerID]time.Time // last "refused" line per peer
}

// fileStamp is what tells an --allow-file changed: its modification time
// and size, or the error of its stat.
type fileStamp struct {
	mod  time.Time
	size int64
	err  string
}

// allowCheckEvery is how often a listener looks at its --allow-file
// modification times.
const allowCheckEvery = 2 * time.Second

// loadAllow reads --allow IDs and --allow-file files; with neither it
// returns nil (any peer). An empty file is an empty list: nobody.
func loadAllow(ev *events, ids, files []string) (*allowList, error) {
	if len(ids) == 0 && len(files) == 0 {
		return nil, nil
	}
	a := &allowList{files: files, ev: ev, logged: map[identity.PeerID]time.Time{}}
	for _, s := range ids {
		id, err := identity.ParsePeerID(s)
		if err != nil {
			return nil, usagef("listen", "--allow %s: %s", s, message(err))
		}
		a.flags = append(a.flags, id)
	}
	a.stamps = a.stat()
	set, err := a.build()
	if err != nil {
		return nil, err
	}
	a.ids.Store(&set)
	return a, nil
}

// build reads the list anew: the --allow IDs and every --allow-file.
func (a *allowList) build() (map[identity.PeerID]bool, error) {
	set := map[identity.PeerID]bool{}
	for _, id := range a.flags {
		set[id] = true
	}
	for _, f := range a.files {
		if err := readAllowFile(set, f); err != nil {
			return nil, err
		}
	}
	return set, nil
}

// stat stamps every --allow-file.
func (a *allowList) stat() []fileStamp {
	out := make([]fileStamp, len(a.files))
	for i, f := range a.files {
		fi, err := os.Stat(f)
		if err != nil {
			out[i].err = err.Error()
			continue
		}
		out[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return out
}

// watch reloads the list until ctx ends: when an --allow-file's stamp
// changes (checked every allowCheckEvery) and on SIGHUP. Without
// --allow-file there is nothing to reload and it returns at once.
func (a *allowList) watch(ctx context.Context) {
	if a == nil || len(a.files) == 0 {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	t := time.NewTicker(allowCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			a.reload(true)
		case <-t.C:
			a.reload(false)
		}
	}
}

// reload reads the list again if an --allow-file changed, or if forced
// (SIGHUP), and puts it in use. A list that fails to read (a bad line, a
// missing file) leaves the one in use; it is said once, and tried again at
// the next change or SIGHUP. Peers taken off the list are refused from
// then on (new introductions and streams); a stream they have open runs
// until it ends.
func (a *allowList) reload(force bool) {
	a.rmu.Lock()
	defer a.rmu.Unlock()
	stamps := a.stat()
	if !force && slices.Equal(stamps, a.stamps) {
		return
	}
	a.stamps = stamps
	was := len(*a.ids.Load())
	set, err := a.build()
	if err != nil {
		if a.ev.on {
			a.ev.emit(map[string]any{"event": "allow-reload-failed", "error": message(err), "allowed_peers": was})
		} else {
			fmt.Fprintf(logOut, "allow list not reloaded: %s; still serving %d allowed peers\n", message(err), was)
		}
		return
	}
	a.ids.Store(&set)
	if a.ev.on {
		a.ev.emit(map[string]any{"event": "allow-reloaded", "allowed_peers": len(set)})
		return
	}
	fmt.Fprintf(logOut, "allow list reloaded: serving %s (was %d)\n", a.describe(), was)
}

// readAllowFile adds the peer IDs of an --allow-file to set: one a line;
// blank lines and text after a # are ignored, so a line may name whose
// key it is.
func readAllowFile(set map[identity.PeerID]bool, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("--allow-file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		id, err := identity.ParsePeerID(text)
		if err != nil {
			return fmt.Errorf("--allow-file %s:%d: %q: %s", path, line, text, message(err))
		}
		set[id] = true
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("--allow-file %s: %w", path, err)
	}
	return nil
}

// allows says whether peer may connect.
func (a *allowList) allows(peer identity.PeerID) bool {
	return a == nil || (*a.ids.Load())[peer]
}

// describe is the allow list for the listener's ready line.
func (a *allowList) describe() string {
	if a == nil {
		return "any peer that knows this peer ID (restrict with --allow)"
	}
	switch n := len(*a.ids.Load()); n {
	case 0:
		return "no peer (the allow list is empty)"
	case 1:
		return "1 allowed peer"
	default:
		return fmt.Sprintf("%d allowed peers", n)
	}
}

// accept is Config.Accept: it refuses the introductions of peers not on
// the list (no punching, no relay link for them), and logs them.
func (a *allowList) accept(peer reach.PeerID) bool {
	if a.allows(peer) {
		return true
	}
	a.refused(peer, "introduction")
	return false
}

// refused logs a refused peer: a "refused" line on stderr (a "refused"
// event with --json), at most once a refusedLogEvery per peer.
func (a *allowList) refused(peer identity.PeerID, what string) {
	now := time.Now()
	a.mu.Lock()
	if t, ok := a.logged[peer]; ok && now.Sub(t) < refusedLogEvery {
		a.mu.Unlock()
		return
	}
	if len(a.logged) >= 4096 { // many strangers: forget them all
		clear(a.logged)
	}
	a.logged[peer] = now
	a.mu.Unlock()
	if a.ev.on {
		a.ev.emit(map[string]any{"event": "refused", "peer": peer.String(), "what": what, "error": errNotAllowed.Error()})
		return
	}
	fmt.Fprintf(logOut, "refused %s (%s): %s\n", peer, what, errNotAllowed)
}

// errNotAllowed: the listener's reason for a refused peer.
var errNotAllowed = errors.New("not on the allow list (--allow, --allow-file)")

// rejectedError is a dial refused by the peer (rendezvous.ErrRejected:
// its allow list does not name this node), with this node's ID, which
// the peer's operator needs to allow it.
type rejectedError struct {
	self identity.PeerID
	err  error
}

func (e *rejectedError) Error() string {
	var ce *rendezvous.ConnectError
	peer := "the peer"
	if errors.As(e.err, &ce) {
		peer = "peer " + ce.Peer.String()
	}
	return fmt.Sprintf("%s refused this node: it allows only some peers (reach listen --allow), and not this one, %s",
		peer, e.self)
}

func (e *rejectedError) Unwrap() error { return e.err }

// rejected wraps a dial error that is the peer's refusal in a
// *rejectedError naming n's ID; other errors are returned as they are.
func rejected(n *reach.Node, err error) error {
	if errors.Is(err, rendezvous.ErrRejected) {
		return &rejectedError{self: n.ID(), err: err}
	}
	return err
}

// refuse closes a stream from a peer allow does not allow, and its
// session, with codeForwardDenied, and logs the peer.
func refuse(c *stream.Stream, allow *allowList) {
	sess := c.Session()
	c.CloseWithError(codeForwardDenied)
	sess.CloseWithError(uint64(codeForwardDenied), "not allowed")
	allow.refused(sess.RemotePeer(), "stream")
}

// allowCount is the allow list's size for JSON events: null when any
// peer may connect.
func allowCount(a *allowList) any {
	if a == nil {
		return nil
	}
	return len(*a.ids.Load())
}
