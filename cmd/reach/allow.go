package main

// The peers a reach listen serves: --allow PEER (repeatable) and
// --allow-file FILE (one peer ID a line). Without either, any peer that
// knows the listener's ID may connect.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
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
// peer.
type allowList struct {
	ids map[identity.PeerID]bool
	ev  *events

	mu     sync.Mutex
	logged map[identity.PeerID]time.Time // last "refused" line per peer
}

// loadAllow reads --allow IDs and --allow-file files; with neither it
// returns nil (any peer). An empty file is an empty list: nobody.
func loadAllow(ev *events, ids, files []string) (*allowList, error) {
	if len(ids) == 0 && len(files) == 0 {
		return nil, nil
	}
	a := &allowList{ids: map[identity.PeerID]bool{}, ev: ev, logged: map[identity.PeerID]time.Time{}}
	for _, s := range ids {
		id, err := identity.ParsePeerID(s)
		if err != nil {
			return nil, usagef("listen", "--allow %s: %s", s, message(err))
		}
		a.ids[id] = true
	}
	for _, f := range files {
		if err := a.readFile(f); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// readFile adds the peer IDs of an --allow-file: one a line; blank lines
// and text after a # are ignored, so a line may name whose key it is.
func (a *allowList) readFile(path string) error {
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
		a.ids[id] = true
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("--allow-file %s: %w", path, err)
	}
	return nil
}

// allows says whether peer may connect.
func (a *allowList) allows(peer identity.PeerID) bool {
	return a == nil || a.ids[peer]
}

// describe is the allow list for the listener's ready line.
func (a *allowList) describe() string {
	if a == nil {
		return "any peer that knows this peer ID (restrict with --allow)"
	}
	switch len(a.ids) {
	case 0:
		return "no peer (the allow list is empty)"
	case 1:
		return "1 allowed peer"
	}
	return fmt.Sprintf("%d allowed peers", len(a.ids))
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
	return len(a.ids)
}
