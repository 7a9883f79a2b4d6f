package upnp

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/direct"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
)

// Name is the rung's name in the ladder.
const Name = "upnp"

// HeadStart is the least head start the ladder gives this rung when the
// peer advertised a mapped address. Hole punching would find the mapped
// address too (it checks every candidate), but a rung that dials at once
// needs one round trip less; the head start keeps a slow handshake (a
// busy CPU) from letting holepunch take the credit. A peer without a
// mapped address costs nothing: Connect fails at once and the race starts
// the next rung.
const HeadStart = 200 * time.Millisecond

// mapperWait bounds how long a new node waits for the port mapper's first
// outcome, counted from the mapper's start (it runs while the node
// registers with its server).
const mapperWait = 100 * time.Millisecond

// ErrNoMapping: the peer advertised no mapped address.
var ErrNoMapping = errors.New("upnp: peer has no mapped address")

// RungConfig is what the node's Config says about port mapping.
type RungConfig struct {
	// Disable turns the port mapper off (the rung still dials the peer's
	// mapped addresses).
	Disable bool
	// Mapper tunes the port mapper; the rung fills in Port, the socket
	// hooks and the Logger.
	Mapper Config
	// TCPPort returns the port of the node's TCP listener (direct-tcp),
	// which the rung maps too, as a "tcp-mapped" candidate; zero: none.
	// Nil: no TCP mapping.
	TCPPort func() uint16
}

// Rung is the port-mapping rung. On the listening side it asks the node's
// gateway to forward a public port to the node's UDP socket while the node
// runs (unless disabled, or the node runs on one machine with its
// servers) and advertises the mapping as a "mapped" candidate; on the
// dialling side it dials QUIC to the peer's mapped candidates over the
// node's socket. It maps the node's TCP listener too ("tcp-mapped"),
// which direct-tcp dials when UDP looks blocked.
type Rung struct {
	rung.Base
	h      *rung.Host
	cfg    RungConfig
	mapper *Mapper // nil when off
	tcp    *Mapper // the TCP listener's; nil when off or without one
	start  time.Time
}

// NewRung makes the rung for the node h.
func NewRung(h *rung.Host, cfg RungConfig) *Rung { return &Rung{h: h, cfg: cfg} }

// Name implements rung.Rung.
func (*Rung) Name() string { return Name }

// Start implements rung.Rung: it starts the port mapper.
func (r *Rung) Start(context.Context) error {
	la := r.h.Socket.LocalAddr()
	if r.cfg.Disable || r.h.Local || la.Addr().IsLoopback() {
		return nil
	}
	mc := r.cfg.Mapper
	mc.Port = la.Port()
	if mc.InterfaceAddrs == nil {
		mc.InterfaceAddrs = r.h.InterfaceAddrs
	}
	if mc.ListenPacket == nil {
		mc.ListenPacket = r.h.ListenPacket
	}
	if mc.DialContext == nil {
		mc.DialContext = r.h.DialTCP
	}
	if mc.Logger == nil {
		mc.Logger = r.h.Logger
	}
	m, err := Start(mc)
	if err != nil {
		return err
	}
	r.mapper, r.start = m, time.Now()
	if r.cfg.TCPPort == nil {
		return nil
	}
	if port := r.cfg.TCPPort(); port != 0 {
		mc.Port, mc.Transport = port, TCP
		if r.tcp, err = Start(mc); err != nil {
			m.Close()
			r.mapper = nil
			return err
		}
	}
	return nil
}

// Ready implements rung.Rung. A PCP or NAT-PMP gateway on the LAN answers
// in milliseconds, usually while the node registers; a new node does not
// wait long for one that is slow or absent (the mapping is advertised
// whenever it arrives: candidates are listed for every introduction).
func (r *Rung) Ready(ctx context.Context) {
	if r.mapper == nil {
		return
	}
	wctx, cancel := context.WithDeadline(ctx, r.start.Add(mapperWait))
	defer cancel()
	r.mapper.Wait(wctx)
}

// Close implements rung.Rung: it deletes the mappings at the gateway.
func (r *Rung) Close() {
	if r.mapper != nil {
		r.mapper.Close()
	}
	if r.tcp != nil {
		r.tcp.Close()
	}
}

// Candidates implements rung.Rung: the mappings, once granted.
func (r *Rung) Candidates() []candidate.Candidate {
	var out []candidate.Candidate
	if r.mapper == nil {
		return nil
	}
	if ext, ok := r.mapper.External(); ok {
		out = append(out, candidate.Candidate{Addr: ext, Kind: candidate.Mapped})
	}
	if r.tcp != nil {
		if ext, ok := r.tcp.External(); ok {
			out = append(out, candidate.Candidate{Addr: ext, Kind: candidate.TCPMapped})
		}
	}
	return out
}

// HasTCPMapping reports whether the node's TCP listener has a public
// mapping now.
func (r *Rung) HasTCPMapping() bool {
	if r.tcp == nil {
		return false
	}
	_, ok := r.tcp.External()
	return ok
}

// TCPStatus reports the TCP listener's port mapper (the zero Status when
// there is none).
func (r *Rung) TCPStatus() Status {
	if r.tcp == nil {
		return Status{}
	}
	return r.tcp.Status()
}

// Status reports the port mapper's state (the zero Status when it is
// off).
func (r *Rung) Status() Status {
	if r.mapper == nil {
		return Status{}
	}
	return r.mapper.Status()
}

// Plan implements rung.Rung: at least HeadStart, and the rung sits out a
// dial whose peer offered no mapped address. (It would fail at once, and
// its head start would still count towards when the forwarding rungs
// join: they joined about 200 ms after the dial instead of the
// forwarding delay, and a supernode overtook hole punching to a double
// NAT.)
func (r *Rung) Plan(a *rung.Attempt, headStart time.Duration) (time.Duration, bool) {
	return max(headStart, HeadStart), len(Targets(a.Remote)) > 0
}

// Targets returns the peer's mapped addresses, in the order given.
func Targets(remote candidate.PeerInfo) []netip.AddrPort {
	return remote.Addrs(candidate.Mapped)
}

// Connect implements rung.Rung.
func (*Rung) Connect(ctx context.Context, a *rung.Attempt) (*stream.Session, error) {
	targets := Targets(a.Remote)
	if len(targets) == 0 {
		return nil, ErrNoMapping
	}
	return direct.DialFirst(ctx, a, targets)
}
