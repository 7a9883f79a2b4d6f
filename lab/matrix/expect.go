package matrix

import (
	"slices"

	"github.com/reachp2p/reach"

	"github.com/reachp2p/reach/lab/natlab"
)

// Rung names as the ladder reports them (reach's names, short here).
const (
	Direct    = reach.StrategyDirect
	DirectTCP = reach.StrategyDirectTCP
	UPnP      = reach.StrategyUPnP
	Holepunch = reach.StrategyHolepunch
	// HolepunchTCP is TCP hole punching (simultaneous open).
	HolepunchTCP = reach.StrategyHolepunchTCP
	Supernode    = reach.StrategySupernode
	TURN         = reach.StrategyTURN
	Relay        = reach.StrategyRelay
)

// rank orders strategies by the path they give: a path of its own (direct,
// a mapped port, a punched hole) before a forwarded one (a volunteer peer,
// then a hosted relay). Lower is better; unknown names rank last.
func rank(s string) int {
	switch s {
	case Direct:
		return 0
	case UPnP:
		return 1
	case Holepunch, DirectTCP, HolepunchTCP:
		return 2
	case Supernode:
		return 3
	case TURN, Relay:
		return 4
	}
	return 5
}

// Forwarded reports whether strategy s sends every packet through a third
// party (a supernode, a TURN server, the relay).
func Forwarded(s string) bool { return rank(s) >= 3 }

// noUDP: the kind has no UDP path to the internet at all.
func (k Kind) noUDP() bool {
	b := k.Base()
	return b == natlab.Kind(natlab.UDPBlocked) || b == natlab.Kind(natlab.ProxyOnly)
}

// tcpOnly: the kind drops UDP and lets any TCP out
// (udp-blocked-tcp-open).
func (k Kind) tcpOnly() bool { return k.Base() == natlab.Kind(natlab.UDPBlockedTCPOpen) }

// tcpPunchable: a TCP simultaneous open works from behind the kind: its
// TCP mapping keeps the port the host connects from (endpoint-
// independent, as masquerade does when the port is free), so the peer can
// predict it from the public IP and the listening port. Not the
// symmetric kinds: their TCP mappings, like their UDP ones, vary by
// destination (port prediction is done for UDP only).
func (k Kind) tcpPunchable() bool {
	switch k.Base() {
	case natlab.Kind(natlab.FullCone), natlab.Kind(natlab.RestrictedCone), natlab.Kind(natlab.PortRestricted),
		natlab.Kind(natlab.UDPBlockedTCPOpen), natlab.KindDouble:
		return true
	}
	return false
}

// randomMapping: a new random external port for every destination, so a
// peer cannot learn in advance the port a packet to it will come from.
func (k Kind) randomMapping() bool { return k.Base() == natlab.Kind(natlab.Symmetric) && !k.UPnP() }

// seqMapping: a new external port for every destination, allocated in
// sequence (symmetric-seq), so a peer that knows the last one can predict
// the next.
func (k Kind) seqMapping() bool { return k.Base() == natlab.Kind(natlab.SymmetricSeq) }

// portFiltering: inbound packets get in only from the exact address and
// port the host has sent to.
func (k Kind) portFiltering() bool {
	switch k.Base() {
	case natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.Symmetric), natlab.Kind(natlab.SymmetricSeq), natlab.KindDouble:
		return !k.UPnP()
	}
	return false
}

// Expectation is the oracle's answer for one direction (Expect).
type Expectation struct {
	// Strategy is the best strategy possible, Why says why.
	Strategy, Why string
	// Fallback, when not "", is the forwarder that may win instead of
	// Strategy without the direction doing worse than possible: where
	// Strategy's path is found only by chance (the birthday mode against
	// a random symmetric NAT), a miss falls back to it. "" elsewhere.
	Fallback string
}

// Best returns the best strategy physically possible when a peer of kind
// dialer dials one of kind listener with ladder (the nodes' rungs, in
// order), and why, over IPv4 (BestDualStack is the answer when both
// peers also have IPv6). Expect says more: where that strategy is found
// only by chance, the forwarder a miss may take instead.
func Best(dialer, listener Kind, ladder []string) (strategy, why string) {
	e := Expect(dialer, listener, ladder)
	return e.Strategy, e.Why
}

// Expect is the oracle: the best strategy of Best and, for the cells where
// it is found only by chance, the fallback (Expectation). A linux-host
// variant has the answer of its home variant: its router accepts a punch
// packet that arrives before its LAN host sent anything, which can move
// the host's mapping, but the mapping and filtering behaviour are the
// same, so the same path exists. The rules, first match wins:
//
//   - either side has no UDP (UDP blocked, proxy only): relay, over TLS on
//     TCP 443 (through the proxy for proxy-only); nothing else gets out;
//   - either side lets only TCP out (udp-blocked-tcp-open): direct-tcp
//     when a side is open (the blocked side dials its TCP listener, or
//     the open one's dial is answered by a connection back); holepunch-tcp
//     when both sides' TCP mappings can be predicted (tcpPunchable);
//     else the relay (over TCP);
//   - the listener is open: direct;
//   - the listener's gateway grants a mapping: upnp;
//   - the dialler is open or has a mapping: holepunch (the listener's
//     punch packets reach it, and the path is a punched one);
//   - both sides' mappings vary by destination (symmetric, random or
//     sequential, in any pair): neither side knows the port the other's
//     next mapping gets towards it, and prediction and the birthday mode
//     both need one side's mapping to be fixed: supernode if the ladder
//     has it, else relay;
//   - one side allocates in sequence (symmetric-seq): holepunch, with
//     port prediction towards a side that filters by port (the peer
//     punches the symmetric side's next ports); but against a double NAT
//     the forwarder: prediction's TTL-2 pings die at the carrier (not
//     yet done, measured);
//   - one side maps to random ports and the other filters by port
//     (port-restricted, double NAT): holepunch's birthday mode (256
//     mappings on the symmetric side, up to 700 probes from the other)
//     hits in most dials, not all: holepunch, with the forwarder (supernode
//     if the ladder has it, else relay) as the fallback a miss may take;
//   - otherwise: holepunch.
func Expect(dialer, listener Kind, ladder []string) Expectation {
	has := func(s string) bool { return slices.Contains(ladder, s) }
	forwarder := func(why string) Expectation {
		if has(Supernode) {
			return Expectation{Strategy: Supernode, Why: why + "; a volunteer with open ports forwards"}
		}
		return Expectation{Strategy: Relay, Why: why + "; no supernode rung, so the hosted relay"}
	}
	is := func(s, why string) Expectation { return Expectation{Strategy: s, Why: why} }
	varies := func(k Kind) bool { return k.randomMapping() || k.seqMapping() }
	switch {
	case dialer.noUDP() || listener.noUDP():
		return is(Relay, "no UDP path out of "+string(pick(dialer.noUDP(), dialer, listener))+": only TCP 443 (or the proxy) to the relay")
	case dialer.tcpOnly() || listener.tcpOnly():
		blocked := pick(dialer.tcpOnly(), dialer, listener)
		switch {
		case (dialer.Base() == natlab.Open || listener.Base() == natlab.Open) && has(DirectTCP):
			return is(DirectTCP, "no UDP out of "+string(blocked)+", but TCP to the public peer's listener (or from it, reversed)")
		case (dialer.UPnP() || listener.UPnP()) && has(UPnP) && has(DirectTCP):
			return is(DirectTCP, "no UDP out of "+string(blocked)+", but the other side's gateway maps its TCP listener (tcp-mapped; reversed when the dialler's)")
		case dialer.tcpPunchable() && listener.tcpPunchable() && has(HolepunchTCP):
			return is(HolepunchTCP, "no UDP out of "+string(blocked)+"; both TCP mappings keep the listening port: a TCP simultaneous open")
		}
		return is(Relay, "no UDP out of "+string(blocked)+", and the other side's TCP mapping cannot be predicted: the relay over TCP")
	case listener.Base() == natlab.Open:
		return is(Direct, "the listener has a public address")
	case listener.UPnP():
		return is(UPnP, "the listener's gateway forwards a mapped port")
	case dialer.Base() == natlab.Open:
		return is(Holepunch, "the dialler is public: the listener's punch packets reach it")
	case dialer.UPnP():
		return is(Holepunch, "the dialler's mapped port takes the listener's punch packets")
	case varies(dialer) && varies(listener):
		return forwarder("both mappings vary by destination: neither side can learn or guess the other's next port (prediction and the birthday mode need one fixed mapping)")
	case dialer.seqMapping() || listener.seqMapping():
		other := pick(dialer.seqMapping(), listener, dialer)
		if other.Base() == natlab.KindDouble {
			// Measured: 0 of 12 dials (both variants, both directions).
			return forwarder("a sequential symmetric NAT against a double NAT: the predicted ports are punched with the primer TTL (2), " +
				"which dies at the carrier, so the carrier drops the symmetric side's pings (prediction through a double NAT: not yet)")
		}
		if other.portFiltering() {
			return is(Holepunch, "port prediction: the sequential symmetric side's next ports are punched from the other side")
		}
		return is(Holepunch, "the other side's endpoint-independent mapping lets the symmetric side's checks through (port prediction adds its next ports)")
	case dialer.randomMapping() && listener.portFiltering(), listener.randomMapping() && dialer.portFiltering():
		e := forwarder("")
		return Expectation{Strategy: Holepunch, Fallback: e.Strategy,
			Why: "birthday mode: random symmetric ports against port-dependent filtering; 256 mappings against up to 700 probes hit in most dials, " +
				"a miss falls back to the " + e.Strategy + " (not flagged unless every dial of at least 3 does)"}
	}
	return is(Holepunch, "endpoint-independent mapping on at least one side lets checks through")
}

// BestDualStack is Best when both peers also have global IPv6 addresses
// behind stateful firewalls (no NAT66): unless one side has no UDP at
// all, the best path is direct over IPv6, whatever the IPv4 NATs are: the
// peers' own addresses are the candidates, and a stateful firewall opens
// for the peer as soon as its host has sent to it.
func BestDualStack(dialer, listener Kind, ladder []string) (strategy, why string) {
	if dialer.noUDP() || listener.noUDP() {
		return Best(dialer, listener, ladder)
	}
	return Direct, "both peers have global IPv6 addresses: no NAT between them, at most stateful firewalls that open as each side sends"
}

func pick(c bool, a, b Kind) Kind {
	if c {
		return a
	}
	return b
}
