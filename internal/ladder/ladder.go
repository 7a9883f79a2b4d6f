// Package ladder is reach's connectivity ladder: the one table that lists
// the rungs in order of preference, with each rung's head start and
// whether it forwards through a third party, and the Ladder a node builds
// from it. A rung is a folder that implements rung.Rung; adding one is
// adding its line to the table.
package ladder

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/reachp2p/reach/internal/direct"
	"github.com/reachp2p/reach/internal/directtcp"
	"github.com/reachp2p/reach/internal/holepunch"
	"github.com/reachp2p/reach/internal/holepunchtcp"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/supernode"
	"github.com/reachp2p/reach/turn"
	"github.com/reachp2p/reach/upnp"
)

// Options are the node's settings that rungs read (from reach.Config).
type Options struct {
	// HeadStart is the head start of rungs the table gives none of their
	// own. Zero: DefaultHeadStart.
	HeadStart time.Duration
	// PunchLinger: holepunch.Rung.Linger.
	PunchLinger time.Duration
	// PunchLimits: holepunch.Limits (the listening side's bounds).
	PunchLimits holepunch.Limits
	// DisablePortMapping and PortMapping: upnp.RungConfig.
	DisablePortMapping bool
	PortMapping        upnp.Config
	// RelayToken, RelayDialers and RelayStreams (not NoStreams):
	// relay.RungConfig.
	RelayToken   func() string
	RelayDialers []relay.LinkDialer
	RelayStreams bool
	// TURN: the TURN servers (none: the turn rung sits out).
	TURN []turn.Server
	// Supernode: supernode.Config.
	Supernode supernode.Config
	// TCPLimits: directtcp.Limits (the node's TCP listener).
	TCPLimits directtcp.Limits
	// TCPPunchLimits: holepunchtcp.Limits.
	TCPPunchLimits holepunchtcp.Limits

	// directTCP is the direct-tcp rung Build made: holepunch-tcp punches
	// through its listener.
	directTCP *directtcp.Rung
	// upnp is the port-mapping rung Build made: holepunch-tcp leaves a
	// node whose TCP listener is mapped to direct-tcp.
	upnp *upnp.Rung
}

// DefaultHeadStart is how long a rung runs alone before the next one
// starts, unless the table says otherwise (a failure starts the next at
// once).
const DefaultHeadStart = 20 * time.Millisecond

// spec is one line of the table.
type spec struct {
	name string
	new  func(h *rung.Host, o *Options) rung.Rung
	// headStart: zero means Options.HeadStart.
	headStart time.Duration
	forwards  bool
}

// table is the ladder, in order of preference.
var table = []spec{
	{name: direct.Name, new: func(h *rung.Host, _ *Options) rung.Rung { return direct.New(h) }},
	// After direct, whose head start (when the peer looks reachable and
	// both sides have UDP) lets QUIC win where both would work.
	{name: directtcp.Name, new: func(h *rung.Host, o *Options) rung.Rung {
		o.directTCP = directtcp.New(h, o.TCPLimits)
		return o.directTCP
	}},
	{name: upnp.Name, new: func(h *rung.Host, o *Options) rung.Rung {
		dt := o.directTCP
		o.upnp = upnp.NewRung(h, upnp.RungConfig{Disable: o.DisablePortMapping, Mapper: o.PortMapping, TCPPort: func() uint16 {
			if l := dt.Listener(); l != nil {
				return l.Addr().Port()
			}
			return 0
		}})
		return o.upnp
	}},
	{name: holepunch.Name, new: func(h *rung.Host, o *Options) rung.Rung { return holepunch.NewRung(h, o.PunchLinger, o.PunchLimits) }},
	// Only where UDP looks blocked on a side (it sits out otherwise):
	// before the forwarding rungs, so it gets what is left of the
	// forwarding delay.
	{name: holepunchtcp.Name, new: func(h *rung.Host, o *Options) rung.Rung {
		u := o.upnp
		return holepunchtcp.New(h, o.directTCP, o.TCPPunchLimits, func() bool { return u.HasTCPMapping() })
	}},
	{name: supernode.Name, new: func(h *rung.Host, o *Options) rung.Rung { return supernode.NewRung(h, o.Supernode) }, headStart: supernode.HeadStart, forwards: true},
	{name: turn.Name, new: func(h *rung.Host, o *Options) rung.Rung { return turn.NewRung(h, o.TURN) }, headStart: turn.HeadStart, forwards: true},
	{name: relay.Name, new: func(h *rung.Host, o *Options) rung.Rung {
		return relay.NewRung(h, relay.RungConfig{Token: o.RelayToken, Dialers: o.RelayDialers, NoStreams: !o.RelayStreams})
	}, forwards: true},
}

// ErrUnknown: a name given to Build is not a rung of the table.
var ErrUnknown = errors.New("unknown strategy")

// Names lists the rungs of the table, in order.
func Names() []string {
	out := make([]string, len(table))
	for i, s := range table {
		out[i] = s.name
	}
	return out
}

// Forwards reports whether the named rung forwards through a third party.
func Forwards(name string) bool {
	for _, s := range table {
		if s.name == name {
			return s.forwards
		}
	}
	return false
}

// Ladder is a node's rungs: every rung of the table (each serves the
// node's peers whatever this node dials with), and the entries its dials
// race.
type Ladder struct {
	// All are the rungs, in table order.
	All []rung.Rung
	// Dial is the ladder of this node's dials: the rungs names chose, in
	// table order.
	Dial []rung.Entry
}

// Build makes every rung for the node h and the dial ladder of the named
// rungs (empty: all of them). An unknown name is ErrUnknown.
func Build(h *rung.Host, o Options, names []string) (*Ladder, error) {
	want := map[string]bool{}
	for _, n := range names {
		if !Known(n) {
			return nil, fmt.Errorf("%w: %q (known: %s)", ErrUnknown, n, strings.Join(Names(), ", "))
		}
		want[n] = true
	}
	hs := o.HeadStart
	if hs <= 0 {
		hs = DefaultHeadStart
	}
	l := &Ladder{}
	for _, s := range table {
		r := s.new(h, &o)
		l.All = append(l.All, r)
		if len(names) > 0 && !want[s.name] {
			continue
		}
		e := rung.Entry{Rung: r, HeadStart: s.headStart, Forwards: s.forwards}
		if e.HeadStart == 0 {
			e.HeadStart = hs
		}
		l.Dial = append(l.Dial, e)
	}
	return l, nil
}

// Known reports whether name is a rung of the table.
func Known(name string) bool {
	for _, s := range table {
		if s.name == name {
			return true
		}
	}
	return false
}

// Better returns the entries of the dial ladder that do not forward: the
// rungs a session on a forwarding rung may be upgraded to.
func (l *Ladder) Better() []rung.Entry {
	var out []rung.Entry
	for _, e := range l.Dial {
		if !e.Forwards {
			out = append(out, e)
		}
	}
	return out
}

// BetterTCP is Better's TCP rungs (direct-tcp, holepunch-tcp): what can
// still do better than a forwarded session when the node's move loop,
// which validates paths of its UDP socket, cannot.
func (l *Ladder) BetterTCP() []rung.Entry {
	var out []rung.Entry
	for _, e := range l.Better() {
		if n := e.Rung.Name(); n == directtcp.Name || n == holepunchtcp.Name {
			out = append(out, e)
		}
	}
	return out
}
