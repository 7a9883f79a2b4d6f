// Package candidate holds the addresses peers advertise to each other in
// an introduction (offer and answer), their kinds, and the one set of
// filters both sides use to pick the addresses a rung works with. It is a
// leaf: it imports nothing of reach but the peer ID.
//
// A rung that adds a kind of address adds its Kind here; what each rung
// dials or punches is said once, by the functions below, so the dialler and
// the listener cannot disagree about it.
package candidate

import (
	"net"
	"net/netip"
	"time"

	"github.com/reachp2p/reach/identity"
)

// Kind says where a candidate address came from.
type Kind string

// Candidate kinds, in the order rungs usually prefer them.
const (
	// Host: an address of one of the peer's own interfaces.
	Host Kind = "host"
	// Reflexive: the peer's public address as a server saw it (STUN or the
	// rendezvous connection on the shared socket).
	Reflexive Kind = "srflx"
	// Mapped: an address a port-mapping gateway (UPnP, NAT-PMP, PCP) granted.
	Mapped Kind = "mapped"
	// Relay: the hosted relay that the dialler will come through (the
	// relay of the server that introduced the peers). Not a peer address.
	Relay Kind = "relay"
	// Supernode: a volunteer (a peer with open ports) that forwards
	// between the two peers. Only the server adds these, with Peer (the
	// volunteer's key) and Token (the recipient's pass to link to it).
	Supernode Kind = "supernode"
	// TURN: the peer's relayed transport address on its TURN server,
	// reachable once the other side permits it there.
	TURN Kind = "turn"
	// TCPHost: an address of one of the peer's own interfaces where its
	// TCP listener accepts TLS+yamux sessions (rung direct-tcp). Usually
	// the port of its UDP socket. Peers that predate it ignore the kind.
	TCPHost Kind = "tcp-host"
	// TCPReflexive: the public address a server saw the peer's TCP
	// signalling connection come from (only the server adds it, for a
	// peer registered over TCP). Its IP is the peer's NAT's; its port is
	// the signalling connection's, not the listener's (see
	// PeerInfo.TCPPunchAddr).
	TCPReflexive Kind = "tcp-srflx"
	// TCPMapped: a public address the peer's gateway forwards to its TCP
	// listener (UPnP IGD, NAT-PMP or PCP), which direct-tcp dials when
	// UDP looks blocked. Peers that predate it ignore the kind.
	TCPMapped Kind = "tcp-mapped"
)

// Candidate is one address at which a peer might be reached.
type Candidate struct {
	Addr netip.AddrPort `json:"addr"`
	Kind Kind           `json:"kind"`
	// Peer is the key at Addr, for Supernode candidates, and for Relay
	// candidates that a server of a fleet wrote (its own relay, in an
	// offer it hands to another server); zero otherwise.
	Peer identity.PeerID `json:"peer,omitzero"`
	// TCPPort is the TCP port of a Relay candidate with a Peer (zero: the
	// port of Addr).
	TCPPort uint16 `json:"tcp_port,omitempty"`
	// Token lets the recipient link to the Supernode candidate's
	// volunteer; empty otherwise.
	Token string `json:"token,omitempty"`
}

// PeerInfo is what one side of an introduction tells the other: the
// dialler's offer and the listener's answer.
type PeerInfo struct {
	// Peer is the sender's ID. The server fills it in from the sender's
	// authenticated connection; a value the sender puts here is ignored.
	Peer identity.PeerID `json:"peer"`
	// Candidates are the sender's addresses. The server appends the
	// reflexive address it observed on the sender's UDP connection, if any.
	Candidates []Candidate `json:"candidates"`
	// PunchKey is 32 random bytes chosen by the dialler for this attempt
	// and echoed by the listener; punch packets carry a MAC under it.
	PunchKey []byte `json:"punch_key,omitempty"`
	// Attempt identifies one introduction; chosen by the dialler, echoed.
	Attempt uint64 `json:"attempt"`
	// WantSupernodes, in an offer, asks the server for volunteers: it adds
	// Supernode candidates to the offer it forwards and to the answer.
	WantSupernodes bool `json:"want_supernodes,omitempty"`
	// ServerRTT, in an offer, is the dialler's round-trip time to the
	// server (zero: unknown). With its own, the listener estimates when
	// the dialler will start sending to it (holepunch).
	ServerRTT time.Duration `json:"server_rtt,omitempty"`
	// PrimerFar, in an offer, says that a TCP SYN from the dialler with
	// holepunch-tcp's primer TTL reached its server: no router of its
	// provider answers between its own router and the internet, so a
	// listener's primer may go one hop further (holepunch-tcp). False: a
	// provider's router answered, or unknown.
	PrimerFar bool `json:"primer_far,omitempty"`
	// Mapping is how the sender's NAT maps its socket, as it measured it
	// (MappingIndependent, MappingVaries; "" unknown).
	Mapping string `json:"mapping,omitempty"`
	// Ports, with Mapping MappingVaries, is how the sender's NAT
	// allocates public ports for new mappings, as it measured them (nil:
	// unknown). A peer whose NAT allocates in sequence gets its next
	// ports punched (Predicted).
	Ports *PortAllocation `json:"ports,omitempty"`
	// Move, in an offer, says the dialler searches a new path for the
	// sessions it has with the target (issue 13's moves): no new session
	// follows, and the target's sessions with it may follow the path the
	// checks find. Without it, an introduction is for a new session: the
	// target's sessions with the dialler keep their paths (a dialler that
	// came back as a new process with the same key must not inherit
	// them).
	Move bool `json:"move,omitempty"`
	// Upgrade, in an offer, says the dialler looks for a better session
	// beside a forwarded one it keeps (its background upgrade): a new
	// session follows, but the target's sessions with the dialler are not
	// from an earlier process of it, and keep their paths as they are
	// (no fresh start for the peer's address, which would cut the
	// forwarded session's delivery).
	Upgrade bool `json:"upgrade,omitempty"`
	// Upgrades, in an answer, says the sender takes Upgrade offers as
	// such (it leaves the dialler's address as it is). A dialler runs a
	// background upgrade beside a session that moves only to a peer that
	// says so: an older one would start the address afresh and cut the
	// forwarded session.
	Upgrades bool `json:"upgrades,omitempty"`
	// Observed is set by the server: the sender's UDP source address as
	// the server saw it (invalid when it registered over TCP). Unlike the
	// candidates, which the sender writes, it is the server's word: a
	// node may send a session's packets there before a check proved the
	// address (holepunch's first flight). A value the sender puts here is
	// replaced.
	Observed netip.AddrPort `json:"observed,omitzero"`
	// Flight, in an answer, says the listener took the dialler's first
	// flight through the server (holepunch): the dialler's early dial
	// goes on. Without it the dialler stops that dial.
	Flight bool `json:"flight,omitempty"`
	// RelayLink, in an answer, says what the sender's link to its relay
	// carried when it answered: RelayLinkStreams (peers may open relayed
	// streams to it, on its link or on the streams-only link it opens
	// for this dialler), RelayLinkPackets (only relayed packets: a UDP
	// link, or streams turned off); "" unknown (no link yet, or a node
	// that predates the field). A dialler on a byte-stream link skips
	// its relayed-stream try on RelayLinkPackets: the relay would refuse
	// it, and the try costs a round trip to the relay. In an offer it
	// says what the dialler's link carries: a listener on a UDP link
	// opens a streams-only link for a dialler on RelayLinkStreams.
	RelayLink string `json:"relay_link,omitempty"`
	// Birthday, in an answer, says the sender runs its part of
	// holepunch's birthday mode for this introduction (it probes the
	// dialler's ports, or its helper sockets are primed towards it): the
	// dialler's forwarding rungs then wait for the probes
	// (holepunch.Rung.Patience). False: it does not (the mode is off,
	// its one slot is taken, its punch was skipped), or a node that
	// predates the field; the forwarding rungs join at the usual delay.
	Birthday bool `json:"birthday,omitempty"`
}

// What a relay link carries (PeerInfo.RelayLink).
const (
	RelayLinkStreams = "streams"
	RelayLinkPackets = "packets"
)

// Mapping behaviours a node measures with its server's two STUN ports
// (RFC 4787: endpoint-independent, or varying by destination as a
// symmetric NAT's does).
const (
	MappingIndependent = "independent"
	MappingVaries      = "varies"
)

// Addrs returns the distinct usable addresses (valid, non-zero port) of
// the candidates of the given kinds, in the order given.
func (p PeerInfo) Addrs(kinds ...Kind) []netip.AddrPort {
	var out []netip.AddrPort
	seen := map[netip.AddrPort]bool{}
	for _, c := range p.Candidates {
		if !isKind(c.Kind, kinds) || !c.Addr.IsValid() || c.Addr.Port() == 0 || seen[c.Addr] {
			continue
		}
		seen[c.Addr] = true
		out = append(out, c.Addr)
	}
	return out
}

func isKind(k Kind, kinds []Kind) bool {
	for _, want := range kinds {
		if k == want {
			return true
		}
	}
	return false
}

// Punchable returns the addresses a hole punch checks, on either side:
// the peer's own addresses, its reflexive ones and its mapped ones. Relay,
// TURN and supernode candidates are servers, not the peer, and never get a
// punch packet.
func (p PeerInfo) Punchable() []netip.AddrPort {
	return p.Addrs(Host, Reflexive, Mapped)
}

// HasUDP reports whether the sender's UDP reached its server: the server
// observed a reflexive address. A peer without one registered over TCP,
// and its UDP is likely blocked.
func (p PeerInfo) HasUDP() bool {
	for _, c := range p.Candidates {
		if c.Kind == Reflexive && c.Addr.IsValid() {
			return true
		}
	}
	return false
}

// TCPPunchAddr predicts the public address of the sender's TCP listener,
// the address holepunch-tcp connects to: the IP of its NAT (its
// tcp-srflx candidate, or else its IPv4 srflx one) with the port of its
// tcp-host candidates (masquerade keeps a free source port for TCP as for
// UDP: endpoint-independent mapping). Invalid when the sender has no TCP
// listener or no public IPv4 address was seen.
func (p PeerInfo) TCPPunchAddr() netip.AddrPort {
	host := p.First(TCPHost)
	if !host.IsValid() {
		return netip.AddrPort{}
	}
	ip := p.First(TCPReflexive).Addr().Unmap()
	if !ip.Is4() {
		ip = p.First(Reflexive).Addr().Unmap()
	}
	if !ip.Is4() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, host.Port())
}

// HasTCP reports whether the sender advertised a TCP listener.
func (p PeerInfo) HasTCP() bool { return len(p.Addrs(TCPHost)) > 0 }

// Volunteers returns the usable Supernode candidates, in the server's
// order (best first).
func (p PeerInfo) Volunteers() []Candidate {
	var out []Candidate
	for _, c := range p.Candidates {
		if c.Kind == Supernode && !c.Peer.IsZero() && c.Addr.IsValid() {
			out = append(out, c)
		}
	}
	return out
}

// First returns the first usable address of kind k, or the zero AddrPort.
func (p PeerInfo) First(k Kind) netip.AddrPort {
	if a := p.Addrs(k); len(a) > 0 {
		return a[0]
	}
	return netip.AddrPort{}
}

// HostAddrs lists an address on port for every usable interface address:
// IPv4 and IPv6 global and private unicast addresses (no link-local: they
// need a zone and rarely help). Loopback addresses are included only with
// loopback true (everything on one machine, as in the demo); IPv6 only
// with v6 true (the socket is dual-stack).
func HostAddrs(addrs []net.Addr, port uint16, loopback, v6 bool) []Candidate {
	var out []Candidate
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap()
		switch {
		case seen[ip], ip.IsLinkLocalUnicast(), ip.IsMulticast(), ip.IsUnspecified():
			continue
		case ip.IsLoopback() && !loopback:
			continue
		case ip.Is6() && !v6:
			continue
		}
		seen[ip] = true
		out = append(out, Candidate{Addr: netip.AddrPortFrom(ip, port), Kind: Host})
	}
	return out
}

// TCPHostAddrs is HostAddrs for a TCP listener on port: the same
// addresses, of kind TCPHost.
func TCPHostAddrs(addrs []net.Addr, port uint16, loopback, v6 bool) []Candidate {
	out := HostAddrs(addrs, port, loopback, v6)
	for i := range out {
		out[i].Kind = TCPHost
	}
	return out
}

// Prefixes lists the networks of the given interface addresses.
func Prefixes(addrs []net.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked())
		}
	}
	return out
}

// DirectPlausible reports whether some host candidate of the peer is a
// public address or lies in one of the local networks: only then can the
// peer be reached as it is.
func (p PeerInfo) DirectPlausible(local []netip.Prefix) bool {
	for _, c := range p.Candidates {
		if c.Kind != Host {
			continue
		}
		ip := c.Addr.Addr().Unmap()
		if ip.IsGlobalUnicast() && !ip.IsPrivate() && !cgnat.Contains(ip) {
			return true
		}
		for _, pfx := range local {
			if pfx.Contains(ip) {
				return true
			}
		}
	}
	return false
}

// PlausibleAddrs returns the usable addresses of kind k that can
// plausibly be reached as they are from a node on the local networks: a
// public address, or one inside one of them. At most max of them (0: no
// bound).
func (p PeerInfo) PlausibleAddrs(k Kind, local []netip.Prefix, max int) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range p.Addrs(k) {
		if max > 0 && len(out) >= max {
			break
		}
		ip := a.Addr().Unmap()
		if ip.IsGlobalUnicast() && !ip.IsPrivate() && !cgnat.Contains(ip) || inAny(ip, local) {
			out = append(out, a)
		}
	}
	return out
}

// cgnat is the shared address space of carrier-grade NATs (RFC 6598).
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// MaxPunchAddrs is how many addresses of a peer one hole punch checks at
// most, unless the caller says otherwise. A real peer advertises one host
// address per interface (one or two on most machines, a few more with
// containers or VPNs), one reflexive and at most one mapped address; an
// introduction listing more is trimmed, reflexive and mapped first.
const MaxPunchAddrs = 8

// PunchScope is what the local node knows of itself when it picks the
// addresses of a peer it may punch: a hole punch sends packets to
// addresses the peer chose, so a peer must not be able to aim them at
// this node's own machine or network, or at many third parties.
type PunchScope struct {
	// LAN are the networks of the node's own interfaces (Prefixes).
	LAN []netip.Prefix
	// Observed is the node's own reflexive address (invalid if unknown).
	Observed netip.AddrPort
	// Loopback allows loopback addresses: everything runs on one machine
	// (the node's server is on loopback). Never set on a real network.
	Loopback bool
	// Max bounds the addresses returned. Zero: MaxPunchAddrs.
	Max int
}

// SameLAN reports whether the peer appears to be on the local node's own
// network: a server saw both behind the same public address (equal
// reflexive IPs), or saw the peer from inside one of the node's networks.
// The peer's own host candidates prove nothing here: they are whatever
// the peer chose to write.
func (p PeerInfo) SameLAN(s PunchScope) bool {
	ours := s.Observed.Addr().Unmap()
	for _, c := range p.Candidates {
		if c.Kind != Reflexive || !c.Addr.IsValid() {
			continue
		}
		ip := c.Addr.Addr().Unmap()
		if ours.IsValid() && ip == ours {
			return true
		}
		if inAny(ip, s.LAN) {
			return true
		}
	}
	return false
}

// PunchableFrom is Punchable as the local node described by s may use it:
// never loopback (unless s.Loopback), unspecified, multicast, link-local
// or broadcast addresses; addresses inside the node's own networks only
// when the peer appears to be on that network (SameLAN); at most s.Max
// addresses, reflexive first, then mapped, then host.
func (p PeerInfo) PunchableFrom(s PunchScope) []netip.AddrPort {
	max := s.Max
	if max <= 0 {
		max = MaxPunchAddrs
	}
	sameLAN := p.SameLAN(s)
	var out []netip.AddrPort
	seen := map[netip.AddrPort]bool{}
	for _, k := range []Kind{Reflexive, Mapped, Host} {
		for _, a := range p.Addrs(k) {
			a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
			if len(out) >= max {
				return out
			}
			if seen[a] || !s.Allowed(a.Addr(), sameLAN) {
				continue
			}
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// Allowed reports whether a punch packet may go to ip, for a peer that
// appears (sameLAN) or does not appear to be on the node's own network.
func (s PunchScope) Allowed(ip netip.Addr, sameLAN bool) bool {
	ip = ip.Unmap()
	switch {
	case !ip.IsValid(), ip.IsUnspecified(), ip.IsMulticast(), ip.IsLinkLocalUnicast(),
		ip.IsInterfaceLocalMulticast(), ip.IsLinkLocalMulticast(), ip == broadcast:
		return false
	case ip.IsLoopback():
		return s.Loopback
	}
	for _, pfx := range s.LAN {
		if !pfx.Contains(ip) {
			continue
		}
		if !sameLAN || (pfx.Addr().Is4() && pfx.Bits() < 31 && ip == lastAddr(pfx)) {
			return false
		}
	}
	return true
}

// broadcast is the IPv4 limited broadcast address.
var broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// lastAddr is the last address of an IPv4 prefix: its directed broadcast.
func lastAddr(pfx netip.Prefix) netip.Addr {
	b := pfx.Masked().Addr().As4()
	host := uint32(1)<<(32-pfx.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func inAny(ip netip.Addr, pfxs []netip.Prefix) bool {
	for _, pfx := range pfxs {
		if pfx.Contains(ip) {
			return true
		}
	}
	return false
}
