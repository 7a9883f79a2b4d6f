// Package matrix measures reach's connectivity matrix in the NAT lab: for
// every pair of the brief's network kinds (open, the four NAT behaviours,
// double NAT, UDP blocked, proxy only, and a symmetric NAT whose gateway
// speaks UPnP), it dials in both directions several times with fresh
// nodes and records whether the pair connected, which rung of the ladder
// won, the time from Dial to the first echoed byte, the path's round trip
// and the throughput of one stream. Each direction is compared with the
// best strategy that is physically possible for it (Best), and every
// direction that did worse is flagged.
//
// The whole matrix runs in one lab: a server host on the internet segment
// (rendezvous, STUN and relay; TLS on 443 for networks that let only TCP
// 80/443 out), two sites of every kind, squid on the proxy-only routers,
// miniupnpd on the UPnP ones, and an emulated delay on every site's
// access link so that connect times can be stated in round trips.
//
// Run returns a Result; Result.Markdown, Result.WriteJSON and
// Result.WritePNG render it, Result.WriteFiles writes all three.
// `reach lab matrix` is the command; docs/matrix.md shows the latest run.
package matrix

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

// Kind is where a peer sits: a natlab.Kind, or one of them with a UPnP
// gateway ("symmetric+upnp").
type Kind string

// upnpSuffix marks a kind whose router runs miniupnpd (UPnP IGD, NAT-PMP
// and PCP).
const upnpSuffix = "+upnp"

// SymmetricUPnP is a symmetric NAT whose gateway grants port mappings:
// the one UPnP variant where the gateway changes the answer (without it,
// a symmetric peer cannot be reached from a port-dependent NAT).
const SymmetricUPnP = Kind(string(natlab.Symmetric) + upnpSuffix)

// Kinds lists every kind of the full matrix: natlab.Kinds() in the
// brief's order, then SymmetricUPnP.
func Kinds() []Kind {
	var out []Kind
	for _, k := range natlab.Kinds() {
		out = append(out, Kind(k))
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
	names := make([]string, 0, 9)
	for _, k := range Kinds() {
		names = append(names, string(k))
	}
	return "", fmt.Errorf("%w %q (one of %s)", ErrUnknownKind, s, strings.Join(names, ", "))
}

// Base returns the lab kind without the UPnP gateway.
func (k Kind) Base() natlab.Kind { return natlab.Kind(strings.TrimSuffix(string(k), upnpSuffix)) }

// UPnP reports whether the kind's gateway grants port mappings.
func (k Kind) UPnP() bool { return strings.HasSuffix(string(k), upnpSuffix) }

// Pair is an unordered pair of kinds; each is dialled in both directions
// (A to B, then B to A).
type Pair struct{ A, B Kind }

func (p Pair) String() string { return string(p.A) + " <-> " + string(p.B) }

// FullPairs returns every unordered pair of Kinds, each kind with itself
// included: 45 pairs, 90 directions.
func FullPairs() []Pair {
	ks := Kinds()
	var out []Pair
	for i := range ks {
		for j := i; j < len(ks); j++ {
			out = append(out, Pair{ks[i], ks[j]})
		}
	}
	return out
}

// ShortPairs is the CI variant: one pair per outcome the ladder can have
// (direct, hole punch through cone NATs, hole punch from a symmetric NAT,
// double NAT, the UPnP gateway, the hard pair that needs a forwarder, and
// the corporate networks that only the relay over TCP 443 reaches).
func ShortPairs() []Pair {
	k := func(n natlab.NAT) Kind { return Kind(n) }
	return []Pair{
		{Kind(natlab.Open), k(natlab.PortRestricted)},
		{k(natlab.FullCone), k(natlab.Symmetric)},
		{Kind(natlab.KindDouble), k(natlab.PortRestricted)},
		{k(natlab.Symmetric), SymmetricUPnP},
		{k(natlab.Symmetric), k(natlab.PortRestricted)},
		{k(natlab.UDPBlocked), k(natlab.Symmetric)},
		{k(natlab.ProxyOnly), Kind(natlab.Open)},
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
	Started  time.Time `json:"started"`
	Duration string    `json:"duration"`
	// DelayMS is the one-way delay on each access link.
	DelayMS float64 `json:"delay_ms"`
	Runs    int     `json:"runs"`
	Size    int     `json:"size"`
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
