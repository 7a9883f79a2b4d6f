// Package upnp is the second rung of the ladder: it asks the node's
// gateway to forward a public port to the node's UDP socket, keeps that
// mapping alive while the node runs, and removes it when the node stops.
// The mapped address becomes a "mapped" candidate, and Strategy dials a
// peer's mapped candidates.
//
// Three protocols are tried side by side: UPnP IGD (v1 and v2, the
// WANIPConnection and WANPPPConnection services, via huin/goupnp), NAT-PMP
// (RFC 6886) and PCP (RFC 6887). The first to answer is used and
// remembered; after repeated failures (a router reboot moves the UPnP SOAP
// port and drops every mapping) the Mapper discovers the gateway again.
//
// A mapping is only worth advertising if the gateway's own WAN address is
// public. Behind a second NAT (a carrier-grade NAT in 100.64.0.0/10, or a
// home router behind another home router) the gateway maps a port on a
// private address no peer can reach; the Mapper reports that as
// ErrPrivateExternal and advertises nothing.
//
// Every socket the Mapper opens goes through Config.ListenPacket and
// Config.DialContext, so a caller can place them (the NAT lab runs nodes
// inside network namespaces).
package upnp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Protocol names a port-mapping protocol.
type Protocol string

// The protocols, in the order the Mapper prefers them when several answer
// at once.
const (
	PCP    Protocol = "pcp"
	NATPMP Protocol = "nat-pmp"
	UPnP   Protocol = "upnp"
)

// AllProtocols lists every protocol in order of preference.
var AllProtocols = []Protocol{PCP, NATPMP, UPnP}

// Named errors. Test with errors.Is.
var (
	// ErrNoGateway: no gateway answered any of the protocols tried.
	ErrNoGateway = errors.New("upnp: no port-mapping gateway found")
	// ErrPrivateExternal: the gateway's WAN address is private or shared
	// (double NAT, carrier-grade NAT), so a mapping on it cannot be
	// reached from the internet. Nothing is advertised.
	ErrPrivateExternal = errors.New("upnp: gateway's external address is not public (double NAT)")
	// ErrNoResources: the gateway answered but has no resources for a
	// mapping now (PCP NO_RESOURCES, NAT-PMP "out of resources"). It is
	// a GatewayError; the Mapper asks again later, not before the wait
	// the gateway asked for (GatewayError.RetryAfter).
	ErrNoResources = errors.New("upnp: gateway has no resources for a mapping now")
	// ErrClosed: the Mapper has been closed.
	ErrClosed = errors.New("upnp: mapper closed")
	// ErrNoPort: Config.Port is zero.
	ErrNoPort = errors.New("upnp: no port to map")
	// ErrBadTransport: Config.Transport is neither UDP nor TCP.
	ErrBadTransport = errors.New("upnp: transport must be udp or tcp")
)

// Transport is the transport protocol of the port a Mapper maps.
type Transport string

// The transports.
const (
	UDP Transport = "udp"
	TCP Transport = "tcp"
)

// GatewayError is a refusal from the gateway: a UPnP error code (718
// ConflictInMappingEntry, 725 OnlyPermanentLeasesSupported, ...) or a
// NAT-PMP/PCP result code.
type GatewayError struct {
	Protocol Protocol
	Code     int
	Msg      string
	// RetryAfter is how long the gateway says the refusal will last (the
	// lifetime of a PCP error response); zero if it does not say.
	RetryAfter time.Duration
}

// Is reports whether e is the refusal ErrNoResources names.
func (e *GatewayError) Is(target error) bool {
	return target == ErrNoResources &&
		(e.Protocol == PCP && e.Code == pcpNoResources || e.Protocol == NATPMP && e.Code == pmpNoResources)
}

func (e *GatewayError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("upnp: %s gateway refused: code %d", e.Protocol, e.Code)
	}
	return fmt.Sprintf("upnp: %s gateway refused: code %d (%s)", e.Protocol, e.Code, e.Msg)
}

// Config configures a Mapper. Only Port is required.
type Config struct {
	// Port is the local port to map (the node's UDP socket, or its TCP
	// listener). Required.
	Port uint16
	// Transport is Port's transport. Zero: UDP.
	Transport Transport
	// Protocols restricts and orders the protocols tried. Empty:
	// AllProtocols.
	Protocols []Protocol
	// Lease is the lifetime asked for; the gateway may grant less, or
	// only a permanent mapping (which is deleted on Close all the same).
	// Zero: 2h.
	Lease time.Duration
	// CheckInterval is how often a mapping is confirmed (and renewed) at
	// the gateway, so a rebooted gateway is noticed. Renewal also happens
	// at half the granted lease if that comes sooner. Zero: 60s.
	CheckInterval time.Duration
	// RetryInterval caps the backoff between failed attempts (it starts
	// at 1s and doubles), and is the wait before asking a gateway with a
	// private WAN address again. Zero: 2m.
	RetryInterval time.Duration
	// DiscoverTimeout bounds one round of discovery. Zero: 2s.
	DiscoverTimeout time.Duration
	// Description labels UPnP mappings on the gateway. Zero: "reach".
	Description string
	// Gateways lists the addresses to send NAT-PMP and PCP requests to.
	// Nil: the default routes' gateways (Linux) and the first address of
	// each private IPv4 prefix of InterfaceAddrs (where home routers sit).
	Gateways func() ([]netip.Addr, error)
	// InterfaceAddrs lists local addresses; the Mapper picks the one on
	// the gateway's network as the mapping's internal address. Nil:
	// net.InterfaceAddrs.
	InterfaceAddrs func() ([]net.Addr, error)
	// ListenPacket opens the UDP sockets for SSDP, NAT-PMP and PCP. Nil:
	// net.ListenPacket.
	ListenPacket func(network, addr string) (net.PacketConn, error)
	// DialContext opens the TCP connections of UPnP (device description,
	// SOAP). Nil: a net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives the Mapper's logs. Nil: discard.
	Logger *slog.Logger
}

func (c *Config) fill() {
	if c.Transport == "" {
		c.Transport = UDP
	}
	if len(c.Protocols) == 0 {
		c.Protocols = AllProtocols
	}
	if c.Lease <= 0 {
		c.Lease = 2 * time.Hour
	}
	if c.CheckInterval <= 0 {
		c.CheckInterval = time.Minute
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = 2 * time.Minute
	}
	if c.DiscoverTimeout <= 0 {
		c.DiscoverTimeout = 2 * time.Second
	}
	if c.Description == "" {
		c.Description = "reach"
	}
	if c.InterfaceAddrs == nil {
		c.InterfaceAddrs = net.InterfaceAddrs
	}
	if c.ListenPacket == nil {
		c.ListenPacket = net.ListenPacket
	}
	if c.DialContext == nil {
		var d net.Dialer
		c.DialContext = d.DialContext
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// Status is what the Mapper has: the protocol, the gateway and what it
// granted, or why there is nothing.
type Status struct {
	// Protocol is the protocol in use ("" before a gateway answered).
	Protocol Protocol `json:"protocol,omitempty"`
	// Gateway is the address the protocol talks to.
	Gateway netip.Addr `json:"gateway,omitzero"`
	// GatewayExternal is the WAN address the gateway reported, even a
	// private one.
	GatewayExternal netip.Addr `json:"gateway_external,omitzero"`
	// Internal is the local address the mapping forwards to.
	Internal netip.AddrPort `json:"internal,omitzero"`
	// External is the mapped public address; invalid when there is no
	// mapping worth advertising.
	External netip.AddrPort `json:"external,omitzero"`
	// Lease is the lifetime granted; zero with Permanent.
	Lease time.Duration `json:"lease,omitempty"`
	// Permanent: the gateway only grants mappings without a lease.
	Permanent bool `json:"permanent,omitempty"`
	// Mapped is when the current mapping was first granted; Renewed when
	// it was last confirmed.
	Mapped  time.Time `json:"mapped,omitzero"`
	Renewed time.Time `json:"renewed,omitzero"`
	// Maps counts the mappings granted anew (1 normally; more after a
	// gateway lost its state).
	Maps int `json:"maps"`
	// Err is the last failure, nil after a success.
	Err error `json:"-"`
	// Error is Err's text, for JSON.
	Error string `json:"error,omitempty"`
}

// Mapper keeps one port (UDP or TCP) mapped at the gateway. Its methods are safe
// for concurrent use.
type Mapper struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	first  chan struct{} // closed after the first attempt's outcome

	mu      sync.Mutex
	st      Status
	settled bool
	changed chan struct{} // closed and replaced on every status change
}

// Start starts mapping cfg.Port in the background; see Status and Wait for
// the outcome. Close removes the mapping.
func Start(cfg Config) (*Mapper, error) {
	if cfg.Port == 0 {
		return nil, ErrNoPort
	}
	if cfg.Transport != "" && cfg.Transport != UDP && cfg.Transport != TCP {
		return nil, fmt.Errorf("%w (%q)", ErrBadTransport, cfg.Transport)
	}
	cfg.fill()
	m := &Mapper{cfg: cfg, log: cfg.Logger, done: make(chan struct{}), first: make(chan struct{}), changed: make(chan struct{})}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	go m.run()
	return m, nil
}

// Status returns the current state.
func (m *Mapper) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st
}

// External returns the mapped public address, if there is one worth
// advertising.
func (m *Mapper) External() (netip.AddrPort, bool) {
	st := m.Status()
	return st.External, st.External.IsValid()
}

// Wait waits until the first attempt has an outcome (a mapping, or the
// reason there is none) or ctx ends, and returns the status.
func (m *Mapper) Wait(ctx context.Context) (Status, error) {
	select {
	case <-m.first:
		return m.Status(), nil
	case <-ctx.Done():
		return m.Status(), ctx.Err()
	}
}

// Changed returns a channel that is closed at the next status change.
func (m *Mapper) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// Close stops the Mapper and deletes the mapping at the gateway (waiting
// at most 2s for it to answer).
func (m *Mapper) Close() error {
	m.cancel()
	<-m.done
	return nil
}

func (m *Mapper) update(f func(*Status)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(&m.st)
	if m.st.Err != nil {
		m.st.Error = m.st.Err.Error()
	} else {
		m.st.Error = ""
	}
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *Mapper) settle() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.settled {
		m.settled = true
		close(m.first)
	}
}

// run is the Mapper's loop: discover, map, confirm, and after repeated
// failures discover again.
func (m *Mapper) run() {
	defer close(m.done)
	defer m.settle()
	var (
		cl      client   // the gateway in use; nil: discover
		spare   []client // other protocols that answered, in rank order
		cur     grant    // the current mapping, if cur.ext is valid
		fails   int
		backoff = time.Second
	)
	defer func() {
		if cl != nil && cur.ext.IsValid() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			err := cl.unmap(ctx, cur)
			m.log.Debug("upnp: mapping deleted", "proto", cl.proto(), "external", cur.ext, "err", err)
			m.update(func(s *Status) { s.External, s.Lease, s.Permanent = netip.AddrPort{}, 0, false })
		}
	}()
	fail := func(err error) time.Duration {
		fails++
		m.update(func(s *Status) { s.Err = err })
		m.settle()
		if fails >= 2 && cl != nil {
			m.log.Debug("upnp: repeated failures, rediscovering", "proto", cl.proto(), "err", err)
			cl, spare, cur = nil, nil, grant{}
			m.update(func(s *Status) { s.External = netip.AddrPort{} })
		}
		wait := backoff
		backoff = min(backoff*2, m.cfg.RetryInterval)
		return wait
	}
	for {
		var wait time.Duration
		if cl == nil {
			cs, err := m.discover(m.ctx)
			if err != nil {
				if m.ctx.Err() != nil {
					return
				}
				m.log.Debug("upnp: discovery failed", "err", err)
				wait = fail(err)
				if !m.sleep(wait) {
					return
				}
				continue
			}
			cl, spare = cs[0], cs[1:]
		}
		want := cur.ext.Port()
		if want == 0 {
			want = m.cfg.Port
		}
		ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
		g, err := cl.mapPort(ctx, m.cfg.Port, want, m.cfg.Lease)
		for err != nil && !errors.Is(err, ErrPrivateExternal) && !cur.ext.IsValid() && len(spare) > 0 && m.ctx.Err() == nil {
			// The gateway answered this protocol but won't map with it
			// (or has lost it): try the others that answered.
			m.log.Debug("upnp: mapping failed, trying the next protocol", "proto", cl.proto(), "err", err, "next", spare[0].proto())
			prev := err
			cl, spare = spare[0], spare[1:]
			g, err = cl.mapPort(ctx, m.cfg.Port, want, m.cfg.Lease)
			if err != nil && !errors.Is(err, ErrPrivateExternal) { // that one says it all
				err = errors.Join(prev, err)
			}
		}
		cancel()
		c := cl
		m.update(func(s *Status) { s.Protocol, s.Gateway = c.proto(), c.gateway() })
		switch {
		case m.ctx.Err() != nil:
			if err == nil {
				cur = g
			}
			return
		case errors.Is(err, ErrPrivateExternal):
			m.log.Info("upnp: not advertising a mapping", "err", err)
			m.update(func(s *Status) { s.External, s.Err = netip.AddrPort{}, err })
			m.settle()
			cl, spare, cur = nil, nil, grant{}
			wait = m.cfg.RetryInterval
		case err != nil:
			m.log.Debug("upnp: mapping failed", "proto", cl.proto(), "err", err)
			wait = fail(err)
			if ge := (*GatewayError)(nil); errors.As(err, &ge) && ge.RetryAfter > wait {
				// Asking again before then gets the same answer.
				wait = min(ge.RetryAfter, m.cfg.RetryInterval)
			}
		case !g.ext.Addr().IsValid() || !IsPublic(g.ext.Addr()):
			// Useless: say so, give the port back, and look again much
			// later (the line might change).
			ctx, cancel := context.WithTimeout(m.ctx, 2*time.Second)
			cl.unmap(ctx, g)
			cancel()
			err := fmt.Errorf("%w: %s gateway %s reports %s", ErrPrivateExternal, cl.proto(), cl.gateway(), g.ext.Addr())
			m.log.Info("upnp: not advertising a mapping", "err", err)
			m.update(func(s *Status) {
				s.GatewayExternal, s.External, s.Internal, s.Err = g.ext.Addr(), netip.AddrPort{}, g.internal, err
			})
			m.settle()
			cl, spare, cur = nil, nil, grant{}
			wait = m.cfg.RetryInterval
		default:
			now := time.Now()
			fresh := g.ext != cur.ext
			if fresh {
				m.log.Info("upnp: mapped", "proto", cl.proto(), "gateway", cl.gateway(), "external", g.ext, "internal", g.internal, "lease", g.lease, "permanent", g.permanent)
			}
			cur, fails, backoff = g, 0, time.Second
			m.update(func(s *Status) {
				s.GatewayExternal, s.External, s.Internal = g.ext.Addr(), g.ext, g.internal
				s.Lease, s.Permanent, s.Renewed, s.Err = g.lease, g.permanent, now, nil
				if fresh {
					s.Mapped = now
					s.Maps++
				}
			})
			m.settle()
			wait = m.cfg.CheckInterval
			if g.lease > 0 {
				wait = min(wait, g.lease/2)
			}
		}
		if !m.sleep(wait) {
			return
		}
	}
}

func (m *Mapper) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-m.ctx.Done():
		return false
	}
}

// grant is one mapping a gateway granted.
type grant struct {
	internal  netip.AddrPort
	ext       netip.AddrPort
	lease     time.Duration
	permanent bool
	nonce     [12]byte // PCP
}

// client is one gateway speaking one protocol.
type client interface {
	proto() Protocol
	gateway() netip.Addr
	// mapPort asks for internal port -> external port want (0: any) and
	// returns what was granted, with the gateway's external address.
	mapPort(ctx context.Context, port, want uint16, lease time.Duration) (grant, error)
	unmap(ctx context.Context, g grant) error
}

// discover probes every configured protocol at once and returns the
// clients that answered, ranked by AllProtocols order (PCP and NAT-PMP
// usually come from one daemon, and PCP is preferred). After the first
// answer it waits while a better-ranked protocol's probe is still running,
// at most preferWait: a gateway (or a machine) under load answers one
// protocol well after the other, and a fixed window would pick whichever
// came first. A gateway that does not speak the better protocol refuses
// it at once (or stays silent: then the mapping waits preferWait more).
func (m *Mapper) discover(ctx context.Context) ([]client, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.DiscoverTimeout)
	defer cancel()
	type answer struct {
		p   Protocol
		c   client
		err error
	}
	answers := make(chan answer, len(m.cfg.Protocols))
	pending := map[Protocol]bool{}
	var wg sync.WaitGroup
	for _, p := range m.cfg.Protocols {
		var probe func(context.Context) (client, error)
		switch p {
		case PCP:
			probe = m.probePCP
		case NATPMP:
			probe = m.probeNATPMP
		case UPnP:
			probe = m.probeIGD
		default:
			answers <- answer{p: p, err: fmt.Errorf("upnp: unknown protocol %q", p)}
			continue
		}
		pending[p] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := probe(ctx)
			if err != nil {
				err = fmt.Errorf("%s: %w", p, err)
			}
			answers <- answer{p, c, err}
		}()
	}
	go func() { wg.Wait(); close(answers) }()
	defer func() { cancel(); wg.Wait() }() // stop the slower probes

	rank := func(p Protocol) int {
		for i, q := range AllProtocols {
			if p == q {
				return i
			}
		}
		return len(AllProtocols)
	}
	// betterPending reports whether a probe ranked above the best answer
	// so far is still running.
	betterPending := func(got []client) bool {
		for p := range pending {
			if rank(p) < rank(got[0].proto()) {
				return true
			}
		}
		return false
	}
	found := func(got []client) ([]client, error) {
		m.log.Debug("upnp: gateway found", "proto", got[0].proto(), "gateway", got[0].gateway(), "answered", len(got))
		return got, nil
	}
	var got []client
	var errs []error
	var grace <-chan time.Time
	for {
		select {
		case a, ok := <-answers:
			if !ok {
				if len(got) > 0 {
					return found(got)
				}
				if ctx.Err() != nil && m.ctx.Err() != nil {
					return nil, ErrClosed
				}
				if allTimeouts(errs) {
					return nil, fmt.Errorf("%w: no answer within %v (%s)", ErrNoGateway, m.cfg.DiscoverTimeout, m.asked())
				}
				return nil, fmt.Errorf("%w: %w", ErrNoGateway, errors.Join(errs...))
			}
			delete(pending, a.p)
			if a.err != nil {
				errs = append(errs, a.err)
			} else {
				got = append(got, a.c)
				slices.SortStableFunc(got, func(x, y client) int { return rank(x.proto()) - rank(y.proto()) })
			}
			if len(got) == 0 {
				continue
			}
			if !betterPending(got) {
				return found(got)
			}
			if grace == nil {
				grace = time.After(preferWait)
			}
		case <-grace:
			return found(got)
		}
	}
}

// preferWait is the most discover waits for a better protocol after a
// first answer.
const preferWait = time.Second

func allTimeouts(errs []error) bool {
	for _, err := range errs {
		if !errors.Is(err, context.DeadlineExceeded) {
			return false
		}
	}
	return true
}

// asked describes where discovery looked, for error messages.
func (m *Mapper) asked() string {
	var parts []string
	var pmp []string
	for _, p := range m.cfg.Protocols {
		switch p {
		case PCP, NATPMP:
			pmp = append(pmp, string(p))
		case UPnP:
			parts = append(parts, "upnp by SSDP multicast")
		}
	}
	if len(pmp) > 0 {
		var gws []string
		for _, g := range m.gateways() {
			gws = append(gws, g.String())
		}
		gw := "no gateway address"
		if len(gws) > 0 {
			gw = strings.Join(gws, ", ")
		}
		parts = append([]string{strings.Join(pmp, " and ") + " to " + gw}, parts...)
	}
	return strings.Join(parts, "; ")
}
