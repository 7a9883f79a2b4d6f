package rendezvous

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/reachp2p/reach/identity"
)

// The client's side of supernodes: with ClientConfig.Volunteer set, the
// client offers the node after every registration (VOLUNTEER) and reports
// each server's verdict (VOLUNTEERED) to ClientConfig.OnVolunteer.

// VolunteerOffer is what a node that volunteers as a supernode tells its
// servers.
type VolunteerOffer struct {
	// MaxSessions is how many pairs of peers it forwards for at once; the
	// server uses it to spread introductions. Zero: 1.
	MaxSessions int
	// Allow, if not empty, are the only peers it serves: the server hands
	// it only to pairs of peers that are both on the list (at most 128).
	// Empty: any pair of peers registered with the server.
	Allow []identity.PeerID
}

// VolunteerStatus is a server's verdict on a node's volunteer offer.
type VolunteerStatus struct {
	// Server is the server that decided.
	Server ServerAddr
	// Admitted: the server dialled the node back and hands it to diallers.
	Admitted bool
	// Observed is the address the server dialled back and gives diallers.
	Observed netip.AddrPort
	// Secret checks the tokens the server issues to peers for this node
	// (CheckSupernodeToken).
	Secret []byte
	// Err says why the node is not (or no longer) admitted: a
	// *VolunteerError (errors.Is ErrNotAdmitted).
	Err error
}

// ErrNotAdmitted: the server did not admit the node as a supernode (or
// dropped it); see VolunteerError for the server's reason.
var ErrNotAdmitted = errors.New("rendezvous: not admitted as a supernode")

// VolunteerError is a server's refusal of a volunteer. Code is
// "unreachable" (the dial-back failed: the node's NAT or firewall lets no
// stranger in), "no_udp" (registered over TCP), "disabled" (the server
// takes no supernodes) or "bad_request". It unwraps to ErrNotAdmitted.
type VolunteerError struct {
	Code   string
	Reason string
}

func (e *VolunteerError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("rendezvous: not admitted as a supernode (%s)", e.Code)
	}
	return fmt.Sprintf("rendezvous: not admitted as a supernode (%s): %s", e.Code, e.Reason)
}

// Unwrap returns ErrNotAdmitted.
func (e *VolunteerError) Unwrap() error { return ErrNotAdmitted }

// offerVolunteer sends the volunteer offer on a new registration.
func (c *Client) offerVolunteer(cc *clientConn) {
	o := c.cfg.Volunteer
	if o == nil {
		return
	}
	allow := o.Allow
	if len(allow) > maxAllow {
		allow = allow[:maxAllow]
	}
	body := volunteerBody{MaxSessions: max(o.MaxSessions, 1), Allow: allow}
	c.spawn(func() {
		if err := cc.write(typeVolunteer, body); err != nil {
			c.log.Debug("supernode: cannot send VOLUNTEER", "err", err)
		}
	})
}

// volunteered handles a VOLUNTEERED frame.
func (c *Client) volunteered(cc *clientConn, b volunteeredBody) {
	st := VolunteerStatus{Server: cc.server, Admitted: b.Admitted, Observed: b.Observed, Secret: b.Secret}
	if !b.Admitted {
		st.Err = &VolunteerError{Code: b.Error, Reason: b.Reason}
		c.log.Warn("supernode: not admitted", "server", cc.server.String(), "err", st.Err)
	} else {
		c.log.Info("supernode: admitted", "server", cc.server.String(), "observed", b.Observed)
	}
	if f := c.cfg.OnVolunteer; f != nil {
		f(st)
	}
}
