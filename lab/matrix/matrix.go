// Package matrix measures reach's connectivity matrix in the NAT lab: for
// every pair of the brief's network kinds (open, the four NAT behaviours,
// double NAT, UDP blocked, proxy only, a symmetric NAT whose gateway
// speaks UPnP, and the linux-host firewall variant of every router kind a
// hole can be punched from), it dials in both directions several times
// with fresh nodes and records whether the pair connected, which rung of
// the ladder won, the time from Dial to the first echoed byte, the path's
// round trip and the throughput of one stream. Each direction is compared
// with the best strategy that is physically possible for it (Best,
// BestDualStack), and every direction that did worse is flagged.
//
// One run (Run, a Config) is one topology in one lab: a server host on
// the internet segment (rendezvous, STUN and relay; TLS on 443 for
// networks that let only TCP 80/443 out), a volunteer supernode, two
// sites of every kind (linux-host ones behind an ISP hop of their own),
// squid on the proxy-only routers, miniupnpd on the UPnP ones, and an
// emulated delay on the access links and, for a far server, on the
// server's link. The full matrix is four such runs (Variants): main (20
// ms links), zero-delay, far-server and ipv6 (dual-stack sites).
//
// Run returns a Result; several make a Report (`reach lab matrix`).
// Markdown, WriteJSON, WritePNG and WriteFiles render them;
// docs/matrix.md shows the latest full run.
package matrix

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

// Kind is where a peer sits: a natlab.Kind, optionally with the
// linux-host firewall variant ("port-restricted/linux-host") or a UPnP
// gateway ("symmetric+upnp"). A kind without a variant suffix is the
// home variant, on the internet segment itself.
type Kind string

// upnpSuffix marks a kind whose router runs miniupnpd (UPnP IGD, NAT-PMP
// and PCP).
const upnpSuffix = "+upnp"

// linuxHostSuffix marks the linux-host firewall variant of a router kind
// (natlab.LinuxHost: no input firewall, plain masquerade). Such a site
// sits behind an ISP hop of its own (natlab.SiteConfig.ISP), as real
// Linux hosts do: the provider's router between two of them is what lets
// a low-TTL punch packet die before it reaches the peer's router.
const linuxHostSuffix = "/" + string(natlab.LinuxHost)

// SymmetricUPnP is a symmetric NAT whose gateway grants port mappings:
// the one UPnP variant where the gateway changes the answer (without it,
// a symmetric peer cannot be reached from a port-dependent NAT).
const SymmetricUPnP = Kind(string(natlab.Symmetric) + upnpSuffix)

// LinuxHost returns the linux-host variant of the router kind k.
func LinuxHost(k natlab.Kind) Kind { return Kind(string(k) + linuxHostSuffix) }

// linuxHostBases are the router kinds that have a linux-host variant in
// the matrix: every kind a hole can be punched from (the cone NATs, both
// symmetric NATs, the double NAT, and udp-blocked-tcp-open for TCP). The
// networks without UDP or open TCP reach only the relay over TCP 443,
// whatever their router does with its input.
func linuxHostBases() []natlab.Kind {
	return []natlab.Kind{natlab.Kind(natlab.FullCone), natlab.Kind(natlab.RestrictedCone),
		natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.Symmetric), natlab.Kind(natlab.SymmetricSeq), natlab.KindDouble,
		natlab.Kind(natlab.UDPBlockedTCPOpen)}
}

// SymmetricSeq is the symmetric NAT that allocates its ports in sequence
// (natlab.SymmetricSeq, issue 18): not in the brief's table
// (natlab.MoreKinds), in the matrix right after the random one.
const SymmetricSeq = Kind(natlab.SymmetricSeq)

// Kinds lists every kind of the full matrix: natlab.Kinds() in the
// brief's order with SymmetricSeq after Symmetric, each router kind that
// has one followed by its linux-host variant, then SymmetricUPnP.
func Kinds() []Kind {
	var base []natlab.Kind
	for _, k := range natlab.Kinds() {
		base = append(base, k)
		if k == natlab.Kind(natlab.Symmetric) {
			base = append(base, natlab.Kind(natlab.SymmetricSeq))
		}
	}
	var out []Kind
	for _, k := range base {
		out = append(out, Kind(k))
		if slices.Contains(linuxHostBases(), k) {
			out = append(out, LinuxHost(k))
		}
	}
	return append(out, SymmetricUPnP)
}

// ErrUnknownKind: a kind name that Kinds does not list.
var ErrUnknownKind = errors.New("matrix: unknown kind")

// ParseKind checks a kind name.
func ParseKind(s string) (Kind, error) {
	for _, k := range Kinds() {
		if string(k) == s {
			return k, nil
		}
	}
	var names []string
	for _, k := range Kinds() {
		names = append(names, string(k))
	}
	return "", fmt.Errorf("%w %q (one of %s)", ErrUnknownKind, s, strings.Join(names, ", "))
}

// Base returns the lab kind without the firewall variant and the UPnP
// gateway.
func (k Kind) Base() natlab.Kind {
	s := strings.TrimSuffix(string(k), upnpSuffix)
	return natlab.Kind(strings.TrimSuffix(s, linuxHostSuffix))
}

// UPnP reports whether the kind's gateway grants port mappings.
func (k Kind) UPnP() bool { return strings.HasSuffix(string(k), upnpSuffix) }

// Firewall returns the firewall variant of the kind's router (natlab.Home
// for every kind without the linux-host suffix, open included).
func (k Kind) Firewall() natlab.Firewall {
	if strings.HasSuffix(string(k), linuxHostSuffix) {
		return natlab.LinuxHost
	}
	return natlab.Home
}

// Pair is an unordered pair of kinds; each is dialled in both directions
// (A to B, then B to A).
type Pair struct{ A, B Kind }

func (p Pair) String() string { return string(p.A) + " <-> " + string(p.B) }

// ParsePairs reads a comma-separated list of KIND:KIND pairs (the cells a
// run measures, both directions of each).
func ParsePairs(s string) ([]Pair, error) {
	var out []Pair
	for _, f := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(f), ":")
		if !ok {
			return nil, fmt.Errorf("matrix: pair %q is not KIND:KIND", f)
		}
		ka, err := ParseKind(a)
		if err != nil {
			return nil, err
		}
		kb, err := ParseKind(b)
		if err != nil {
			return nil, err
		}
		out = append(out, Pair{ka, kb})
	}
	return out, nil
}

// FullPairs returns every unordered pair of Kinds, each kind with itself
// included: 136 pairs, 256 directions (a kind with itself is one
// direction).
func FullPairs() []Pair { return pairsOf(Kinds()) }

// ShortPairs is the CI variant: one pair per outcome the ladder can have
// (direct, hole punch through cone NATs, hole punch from a symmetric NAT,
// double NAT, the UPnP gateway, the birthday mode (or the forwarder it
// falls back to), port prediction, the corporate networks that only the
// relay over TCP 443 reaches, and TCP hole punching from a network that
// blocks UDP).
func ShortPairs() []Pair {
	k := func(n natlab.NAT) Kind { return Kind(n) }
	return []Pair{
		{Kind(natlab.Open), k(natlab.PortRestricted)},
		{k(natlab.FullCone), k(natlab.Symmetric)},
		{Kind(natlab.KindDouble), k(natlab.PortRestricted)},
		{k(natlab.Symmetric), SymmetricUPnP},
		{k(natlab.Symmetric), k(natlab.PortRestricted)},
		{SymmetricSeq, k(natlab.PortRestricted)},
		{k(natlab.UDPBlocked), k(natlab.Symmetric)},
		{k(natlab.ProxyOnly), Kind(natlab.Open)},
		{k(natlab.UDPBlockedTCPOpen), k(natlab.PortRestricted)},
	}
}

// Config configures a matrix run. The zero value runs the full matrix.
type Config struct {
	// Pairs are the pairs to measure. Nil: FullPairs().
	Pairs []Pair
	// Runs is how many times each direction is dialled, each time with
	// two fresh nodes (fresh keys, sockets and NAT mappings). Zero: 3.
	Runs int
	// Delay is the one-way delay on every site's access link (an open
	// host's own link, a router's WAN link), so a peer-to-peer round trip
	// is 4×Delay and a peer-to-server one 2×Delay (the server's link is
	// not delayed). Zero: 20ms. Negative: no delay.
	Delay time.Duration
	// ServerDelay is the one-way delay on the server's own link (the
	// rendezvous server, STUN and the relay): a server far away while
	// the peers are near each other, so a listener's first packets reach
	// the dialler long before the listener's answer does. Zero: none.
	ServerDelay time.Duration
	// IPv6 makes every site dual-stack: the routers route a global IPv6
	// prefix to their LAN behind a stateful firewall (natlab's
	// RouterConfig.IPv6), and the best path is then direct over IPv6
	// (BestDualStack). Kinds that cannot have it (double NAT, the networks
	// without UDP) are refused. natlab's IPv6 routers sit on the internet
	// segment, so linux-host sites have no ISP hop here.
	IPv6 bool
	// Variant names the topology in the result (see Variant). Zero:
	// nothing.
	Variant string
	// Size is how many bytes the throughput transfer sends on one stream
	// after the first echoed byte. Zero: 4 MiB. Negative: no transfer.
	Size int
	// DialTimeout bounds one dial (introduction, race, first stream).
	// Zero: 20s.
	DialTimeout time.Duration
	// Logger receives the matrix's progress (one line per run). Nil:
	// discard.
	Logger *slog.Logger
	// NodeLogger receives the nodes' and the server's logs. Nil: discard.
	NodeLogger *slog.Logger
	// OnDirection is called after each direction has finished all its
	// runs (from Run's goroutine). Nil: nothing.
	OnDirection func(Direction)
}

func (c Config) withDefaults() Config {
	if c.Pairs == nil {
		c.Pairs = FullPairs()
	}
	if c.Runs <= 0 {
		c.Runs = 3
	}
	if c.Delay == 0 {
		c.Delay = 20 * time.Millisecond
	}
	if c.Delay < 0 {
		c.Delay = 0
	}
	c.ServerDelay = max(c.ServerDelay, 0)
	if c.Size == 0 {
		c.Size = 4 << 20
	}
	if c.Size < 0 {
		c.Size = 0
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 20 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.NodeLogger == nil {
		c.NodeLogger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Attempt is one dial: two fresh nodes, one direction.
type Attempt struct {
	// OK: the session came up and the first byte came back.
	OK bool `json:"ok"`
	// Strategy is the rung whose path carries the session.
	Strategy string `json:"strategy,omitempty"`
	// Link is the relay link's transport ("udp", "tls", ...) of the
	// dialler, for relayed sessions.
	Link string `json:"link,omitempty"`
	// Path is the session's remote address as the dialler sees it.
	Path string `json:"path,omitempty"`
	// ConnectMS is the time from Dial to the first echoed byte.
	ConnectMS float64 `json:"connect_ms,omitempty"`
	// RTTMS is the lowest of three pings on the session's path.
	RTTMS float64 `json:"rtt_ms,omitempty"`
	// Mbps is the throughput of one stream for Config.Size bytes, from
	// the first byte written to the receiver's acknowledgement of the last.
	Mbps float64 `json:"mbps,omitempty"`
	// Detail is the session's StrategyDetail, how the strategy made the
	// path (e.g. "port prediction: ...", "birthday: ..."); "" if it says
	// nothing more.
	Detail string `json:"detail,omitempty"`
	// Err says why the attempt failed.
	Err string `json:"err,omitempty"`
}

// Direction is one ordered pair (Dialer dials Listener) over all its runs.
type Direction struct {
	Dialer   Kind `json:"dialer"`
	Listener Kind `json:"listener"`
	// Attempts are the runs, in order.
	Attempts []Attempt `json:"attempts"`
	// Connected counts the attempts that connected.
	Connected int `json:"connected"`
	// Strategy is the winning rung of most connected attempts; "" if none
	// connected. Strategies counts every rung that won.
	Strategy   string         `json:"strategy,omitempty"`
	Strategies map[string]int `json:"strategies,omitempty"`
	// ConnectMedianMS and ConnectWorstMS summarise the connected attempts.
	ConnectMedianMS float64 `json:"connect_median_ms,omitempty"`
	ConnectWorstMS  float64 `json:"connect_worst_ms,omitempty"`
	// RTTMS is the median path round trip, the unit of ConnectRTTs.
	RTTMS float64 `json:"rtt_ms,omitempty"`
	// ConnectRTTs is ConnectMedianMS in round trips of the path.
	ConnectRTTs float64 `json:"connect_rtts,omitempty"`
	// Mbps is the median throughput.
	Mbps float64 `json:"mbps,omitempty"`
	// Best is the best strategy physically possible for this direction
	// with this ladder, and BestWhy the reason (see Best).
	Best    string `json:"best"`
	BestWhy string `json:"best_why"`
	// Fallback is the forwarder Best allows instead where Best's path is
	// found only by chance (Expectation.Fallback: the birthday mode
	// against a random symmetric NAT); "" elsewhere. FellBack counts the
	// attempts that took it (or one as good): not worse than possible,
	// but marked (◇) in the report.
	Fallback string `json:"fallback,omitempty"`
	FellBack int    `json:"fell_back,omitempty"`
	// BestIPv6: the best path is over IPv6 (both peers are dual-stack);
	// an attempt whose path is IPv4 did worse.
	BestIPv6 bool `json:"best_ipv6,omitempty"`
	// Worse: some attempt failed or won with a rung worse than Best.
	// Reason says what happened and, where known, why.
	Worse  bool   `json:"worse"`
	Reason string `json:"reason,omitempty"`
	// Severity grades Worse: SeverityPath when an attempt failed or went
	// through a forwarder where a path of the peers' own was possible;
	// SeverityRung when only another of the peer-to-peer rungs won (the
	// path is as good; the name, and usually the time, differ).
	Severity string `json:"severity,omitempty"`
}

// Severities of a Direction that did worse than possible.
const (
	SeverityPath = "path"
	SeverityRung = "rung"
)

// Result is a whole matrix run.
type Result struct {
	// Variant names the topology (see Variant); "" for a run of Run
	// alone.
	Variant  string    `json:"variant,omitempty"`
	Started  time.Time `json:"started"`
	Duration string    `json:"duration"`
	// DelayMS is the one-way delay on each access link, ServerDelayMS
	// the one on the server's link.
	DelayMS       float64 `json:"delay_ms"`
	ServerDelayMS float64 `json:"server_delay_ms,omitempty"`
	// IPv6: every site was dual-stack (Config.IPv6).
	IPv6 bool `json:"ipv6,omitempty"`
	Runs int  `json:"runs"`
	Size int  `json:"size"`
	// Ladder is the nodes' ladder, in order.
	Ladder []string `json:"ladder"`
	// Commit and GoVersion say what was measured (Commit: filled in by
	// the caller; may be empty).
	Commit    string `json:"commit,omitempty"`
	GoVersion string `json:"go_version"`
	// Notes are caveats of the whole run (e.g. a missing feature).
	Notes []string `json:"notes,omitempty"`
	// Kinds are the kinds in the matrix, in order (rows and columns of
	// the heatmap).
	Kinds []Kind `json:"kinds"`
	// Directions are every measured direction, pair by pair (A→B, B→A).
	Directions []Direction `json:"directions"`
}

// Lookup returns the direction dialer→listener, if measured.
func (r *Result) Lookup(dialer, listener Kind) (Direction, bool) {
	for _, d := range r.Directions {
		if d.Dialer == dialer && d.Listener == listener {
			return d, true
		}
	}
	return Direction{}, false
}

// Flagged returns the directions that did worse than possible.
func (r *Result) Flagged() []Direction {
	var out []Direction
	for _, d := range r.Directions {
		if d.Worse {
			out = append(out, d)
		}
	}
	return out
}
