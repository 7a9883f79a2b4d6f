package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/shortcode"
	"github.com/reachp2p/reach/transfer"
)

// Short codes in send and recv (docs/cli.md, docs/security.md "Short
// codes"): send seals its ticket into the server's mailbox under a code;
// recv claims it back.

// published is a code send printed.
type published struct {
	code shortcode.Code
	ttl  time.Duration
}

// publishCode stores tk under a new short code at n's server, unless off;
// a server that cannot (an older one, or one at its limits) costs only a
// warning: the ticket works without. drop withdraws the code when send
// ends (a receiver that has not claimed it by then is told it was used).
func publishCode(ctx context.Context, n *reach.Node, tk transfer.Ticket, off bool, ttl time.Duration, quiet bool) (*published, func()) {
	if off {
		return nil, func() {}
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	code, r, err := shortcode.Publish(pctx, n.Mailbox(), []byte(tk.String()), ttl)
	if err != nil {
		if !quiet {
			fmt.Fprintf(os.Stderr, "no short code (%s); the ticket works without\n", message(err))
		}
		return nil, func() {}
	}
	return &published{code: code, ttl: r.TTL}, func() {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n.Mailbox().Drop(dctx, r)
	}
}

// claimTicket starts the node of recv and claims the ticket behind code
// at its server. On success the caller owns the node.
func claimTicket(ctx context.Context, pf *peerFlags, code shortcode.Code) (*reach.Node, transfer.Ticket, error) {
	n, err := pf.node(ctx)
	if err != nil {
		return nil, transfer.Ticket{}, err
	}
	payload, err := shortcode.Claim(ctx, n.Mailbox(), code)
	if err != nil {
		n.Close()
		return nil, transfer.Ticket{}, err
	}
	tk, err := transfer.ParseTicket(string(payload))
	if err != nil {
		n.Close()
		return nil, transfer.Ticket{}, fmt.Errorf("the code's ticket: %w", err)
	}
	return n, tk, nil
}

// codeMessage says a short code's failure plainly.
func codeMessage(err error) (string, bool) {
	var ce *rendezvous.CodeError
	switch {
	case errors.Is(err, shortcode.ErrBadCode):
		return trimPrefixes(err.Error()), true
	case errors.Is(err, shortcode.ErrForged):
		return "the server's answer for this code was not sealed with it: not connecting (a server that lies, or a bug)", true
	case !errors.As(err, &ce):
		return "", false
	}
	switch {
	case errors.Is(ce, rendezvous.ErrCodeUnknown):
		return "no such code at this server (mistyped, expired long ago, or the sender uses another server: --server)", true
	case errors.Is(ce, rendezvous.ErrCodeWrong):
		return fmt.Sprintf("wrong code: a code with this number waits, but with other words (%d attempts left before it is burnt)", ce.AttemptsLeft), true
	case errors.Is(ce, rendezvous.ErrCodeUsed):
		return "this code was used already (a code works once): ask the sender for the ticket or a new code", true
	case errors.Is(ce, rendezvous.ErrCodeBurnt):
		return "this code was burnt by wrong guesses: ask the sender for the ticket or a new code", true
	case errors.Is(ce, rendezvous.ErrCodeExpired):
		return "this code expired: ask the sender for the ticket or a new code", true
	case errors.Is(ce, rendezvous.ErrNoMailbox):
		return "the server keeps no short codes: use the ticket", true
	}
	return "", false
}
