package matrix

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// ErrNodeStart: a node could not start on a site (it could not register
// with the server), so the site's later attempts were not made.
var ErrNodeStart = errors.New("matrix: node did not start")

// site is one peer host of a kind, with its router and daemons.
type site struct {
	kind   Kind
	host   *natlab.Host
	router *natlab.Router // nil for open
	squid  *natlab.Squid  // proxy-only
	fails  int            // node starts failed in a row
	err    error          // the last failure
}

// maxStartFails: after this many failed node starts in a row a site is
// given up on (a proxy-only site whose nodes cannot use the proxy would
// otherwise cost every attempt a registration timeout).
const maxStartFails = 2

// runner is one matrix run in one lab.
type runner struct {
	cfg       Config
	lab       *natlab.Lab
	server    *rendezvous.RunningServer
	volunteer *reach.Node // the supernode, if the ladder has the rung
	notes     []string
	connect   string // the server's connect string
	sites     map[Kind][]*site
	payload   []byte
}

// Run builds the matrix topology in lab (which the caller owns and
// closes) and measures cfg.Pairs. It returns what it measured so far
// with ctx's error if ctx ends first; an error building the topology
// returns a nil Result.
func Run(ctx context.Context, lab *natlab.Lab, cfg Config) (*Result, error) {
	cfg = cfg.withDefaults()
	if err := cfg.check(); err != nil {
		return nil, err
	}
	start := time.Now()
	r := &runner{cfg: cfg, lab: lab, sites: map[Kind][]*site{}}
	defer r.close()
	if err := r.build(ctx); err != nil {
		return nil, err
	}
	r.payload = make([]byte, 64<<10)
	rand.Read(r.payload)
	res := &Result{
		Variant: cfg.Variant, Started: start, DelayMS: ms(cfg.Delay), ServerDelayMS: ms(cfg.ServerDelay), IPv6: cfg.IPv6,
		Runs: cfg.Runs, Size: cfg.Size,
		Ladder: append([]string(nil), reach.Strategies()...), GoVersion: runtime.Version(),
	}
	for _, p := range cfg.Pairs {
		for _, k := range []Kind{p.A, p.B} {
			if !slices.Contains(res.Kinds, k) {
				res.Kinds = append(res.Kinds, k)
			}
		}
	}
	sort.SliceStable(res.Kinds, func(i, j int) bool { return kindIndex(res.Kinds[i]) < kindIndex(res.Kinds[j]) })
	res.Notes = append(res.Notes, r.notes...)
	cfg.Logger.Info("matrix topology up", "variant", cfg.Variant, "pairs", len(cfg.Pairs), "runs", cfg.Runs, "delay", cfg.Delay,
		"server_delay", cfg.ServerDelay, "ipv6", cfg.IPv6, "setup", time.Since(start).Round(time.Millisecond))
	for _, p := range cfg.Pairs {
		a, b := r.sites[p.A][0], r.sites[p.B][0]
		dirs := [][2]*site{{a, b}, {b, a}}
		if p.A == p.B {
			// One direction: both hosts are of the same kind; the runs
			// alternate which one dials.
			dirs = [][2]*site{{a, r.sites[p.B][1]}}
		}
		for _, sides := range dirs {
			d := r.direction(ctx, sides[0], sides[1], res.Ladder)
			res.Directions = append(res.Directions, d)
			if cfg.OnDirection != nil {
				cfg.OnDirection(d)
			}
			if err := ctx.Err(); err != nil {
				res.Duration = time.Since(start).Round(time.Second).String()
				return res, err
			}
		}
	}
	flagChanceMisses(res.Directions)
	res.Duration = time.Since(start).Round(time.Second).String()
	return res, nil
}

// flagChanceMisses flags the directions whose best path is found by
// chance (a Fallback) when every one of their dials in the run fell
// back, MinChanceDials or more in all: a run with one or two dials per
// direction flags none of them on its own (summarise), yet a birthday
// mode that never hit in the whole run is broken, not unlucky.
func flagChanceMisses(ds []Direction) {
	total, fell := 0, 0
	for _, d := range ds {
		if d.Fallback != "" {
			total += len(d.Attempts)
			fell += d.FellBack
		}
	}
	if total < MinChanceDials || fell != total {
		return
	}
	for i := range ds {
		d := &ds[i]
		if d.Fallback == "" || d.FellBack == 0 || d.Severity == SeverityPath {
			continue
		}
		why := fmt.Sprintf("fell back to %s in every one of the run's %d dials where %s finds its path by chance but mostly", d.Fallback, total, d.Best)
		d.Reason = strings.TrimPrefix(d.Reason+"; "+why, "; ")
		d.Worse, d.Severity = true, SeverityPath
	}
}

// ErrKindUnsupported: a kind the run's topology cannot build (a double
// NAT or a network without UDP in the IPv6 run).
var ErrKindUnsupported = errors.New("matrix: kind not supported in this topology")

// check refuses pairs the topology cannot build.
func (c Config) check() error {
	for _, p := range c.Pairs {
		for _, k := range []Kind{p.A, p.B} {
			if kindIndex(k) == len(Kinds()) {
				return fmt.Errorf("%w %q", ErrUnknownKind, k)
			}
			if c.IPv6 && (k.Base() == natlab.KindDouble || k.noUDP()) {
				return fmt.Errorf("%w: %s with IPv6", ErrKindUnsupported, k)
			}
		}
	}
	return nil
}

// close stops the server (the lab is the caller's).
func (r *runner) close() {
	if r.volunteer != nil {
		r.volunteer.Close()
	}
	if r.server != nil {
		r.server.Close()
	}
}

func kindIndex(k Kind) int {
	if i := slices.Index(Kinds(), k); i >= 0 {
		return i
	}
	return len(Kinds())
}

// build starts the server and every site the pairs need: one per kind,
// two for a kind paired with itself.
func (r *runner) build(ctx context.Context) error {
	srv, err := r.lab.AddPublicHost(ctx, "srv")
	if err != nil {
		return err
	}
	if r.cfg.ServerDelay > 0 {
		if err := srv.Impair(ctx, natlab.Impairment{Delay: r.cfg.ServerDelay}); err != nil {
			return fmt.Errorf("matrix: server link: %w", err)
		}
	}
	if r.connect, err = r.startServer(ctx, srv); err != nil {
		return err
	}
	note, err := r.startVolunteer(ctx)
	if err != nil {
		return err
	}
	if note != "" {
		r.notes = append(r.notes, note)
	}
	need := map[Kind]int{}
	for _, p := range r.cfg.Pairs {
		need[p.A] = max(need[p.A], 1)
		need[p.B] = max(need[p.B], 1)
		if p.A == p.B {
			need[p.A] = 2
		}
	}
	for _, k := range Kinds() {
		for i := range need[k] {
			s, err := r.addSite(ctx, fmt.Sprintf("m%d%c", kindIndex(k), 'a'+i), k)
			if err != nil {
				return fmt.Errorf("matrix: site %s: %w", k, err)
			}
			r.sites[k] = append(r.sites[k], s)
		}
	}
	return nil
}

// startServer runs what `reach server` runs on h: rendezvous, STUN and
// the relay on UDP and TCP 4950, and TLS on TCP 443.
func (r *runner) startServer(ctx context.Context, h *natlab.Host) (string, error) {
	rl := relay.NewServer(relay.ServerConfig{Logger: r.cfg.NodeLogger.With("relay", h.Name())})
	var rs *rendezvous.RunningServer
	err := h.Run(func() error {
		var err error
		rs, err = rendezvous.StartServer(ctx, rendezvous.ServerConfig{
			Logger:    r.cfg.NodeLogger.With("server", h.Name()),
			Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl},
			TLSPort:   443,
		}, netip.AddrPortFrom(h.Addr(), rendezvous.DefaultPort))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("matrix: server: %w", err)
	}
	r.server = rs
	if rs.ServerAddr().TCPPort != 443 {
		return "", fmt.Errorf("matrix: server did not bind TLS on 443 (%s)", rs.ConnectString())
	}
	return rs.ConnectString(), nil
}

// addSite builds one site of kind k and delays its access link. A
// linux-host site gets an ISP hop of its own (not in the IPv6 run: the
// lab's IPv6 routers attach to the internet segment only); the UPnP
// gateway sits on the internet segment too (miniupnpd wants a
// public-looking WAN address).
func (r *runner) addSite(ctx context.Context, name string, k Kind) (*site, error) {
	s := &site{kind: k}
	if k.UPnP() {
		rt, _, err := r.lab.AddUPnPRouter(ctx, natlab.RouterConfig{
			Name: name + "r", NAT: natlab.NAT(k.Base()), Firewall: k.Firewall(), IPv6: r.cfg.IPv6,
		}, natlab.UPnPConfig{})
		if err != nil {
			return nil, err
		}
		s.router = rt
		if s.host, err = rt.AddHost(ctx, name); err != nil {
			return nil, err
		}
	} else {
		ns, err := r.lab.AddSiteWith(ctx, name, natlab.SiteConfig{
			Kind:     k.Base(),
			Firewall: k.Firewall(),
			ISP:      k.Firewall() == natlab.LinuxHost && !r.cfg.IPv6,
			IPv6:     r.cfg.IPv6 && k.Base() != natlab.Open,
		})
		if err != nil {
			return nil, err
		}
		s.host, s.router = ns.Host, ns.Router
	}
	if k.Base() == natlab.Kind(natlab.ProxyOnly) {
		var err error
		if s.squid, err = s.router.StartSquid(ctx); err != nil {
			return nil, err
		}
	}
	if r.cfg.Delay > 0 {
		link := s.host
		if s.router != nil {
			link = &s.router.Host
		}
		if err := link.Impair(ctx, natlab.Impairment{Delay: r.cfg.Delay}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// direction dials listener from dialer cfg.Runs times. When both sites
// are of one kind, the runs alternate which one dials.
func (r *runner) direction(ctx context.Context, dialer, listener *site, ladder []string) Direction {
	d := Direction{Dialer: dialer.kind, Listener: listener.kind}
	if r.cfg.IPv6 {
		d.Best, d.BestWhy = BestDualStack(d.Dialer, d.Listener, ladder)
		d.BestIPv6 = !d.Dialer.noUDP() && !d.Listener.noUDP()
	} else {
		e := Expect(d.Dialer, d.Listener, ladder)
		d.Best, d.BestWhy, d.Fallback = e.Strategy, e.Why, e.Fallback
	}
	for i := range r.cfg.Runs {
		if ctx.Err() != nil {
			break
		}
		from, to := dialer, listener
		if dialer.kind == listener.kind && i%2 == 1 {
			from, to = to, from
		}
		a := r.attempt(ctx, from, to)
		r.cfg.Logger.Info("attempt", "dialer", from.kind, "listener", to.kind, "run", i+1,
			"ok", a.OK, "strategy", a.Strategy, "connect_ms", a.ConnectMS, "rtt_ms", a.RTTMS, "mbps", a.Mbps, "err", a.Err)
		d.Attempts = append(d.Attempts, a)
	}
	summarise(&d)
	return d
}

// attempt starts a fresh node on each site, dials, and measures.
func (r *runner) attempt(ctx context.Context, from, to *site) Attempt {
	var nd, nl *reach.Node
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) { nd, err = r.startNode(gctx, from); return })
	g.Go(func() (err error) { nl, err = r.startNode(gctx, to); return })
	err := g.Wait()
	defer func() {
		for _, n := range []*reach.Node{nd, nl} {
			if n != nil {
				n.Close()
			}
		}
	}()
	if err != nil {
		return Attempt{Err: err.Error()}
	}
	for _, x := range []struct {
		s *site
		n *reach.Node
	}{{from, nd}, {to, nl}} {
		if x.s.kind.UPnP() {
			waitMapping(ctx, x.n, 3*time.Second)
		}
		if x.s.kind.randomMapping() || x.s.kind.seqMapping() {
			waitAllocation(ctx, x.n, 3*time.Second)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout+30*time.Second)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- serve(ctx, nl) }()
	a := r.dial(ctx, nd, nl)
	if a.OK {
		if err := <-served; err != nil && a.Err == "" {
			a.Err = "listener: " + err.Error()
		}
	}
	return a
}

// startNode starts a node on s with the hooks that keep its sockets in
// the site's namespace.
func (r *runner) startNode(ctx context.Context, s *site) (*reach.Node, error) {
	if s.fails >= maxStartFails {
		return nil, fmt.Errorf("%w on %s (gave up after %d failures): %v", ErrNodeStart, s.kind, s.fails, s.err)
	}
	cfg := reach.Config{Servers: []string{r.connect}, Logger: r.cfg.NodeLogger.With("host", s.host.Name())}
	proxyURL := ""
	if s.squid != nil {
		proxyURL = s.squid.URL()
	}
	cfg = withProxy(cfg, proxyURL)
	cfg = reachlab.HostConfig(s.host, cfg)
	var n *reach.Node
	err := s.host.Run(func() error {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		var err error
		n, err = reach.New(ctx, cfg)
		return err
	})
	if err != nil {
		s.fails++
		s.err = err
		return nil, fmt.Errorf("%w on %s: %v", ErrNodeStart, s.kind, err)
	}
	s.fails = 0
	return n, nil
}

// waitMapping waits until n's gateway granted a mapping, or limit.
func waitMapping(ctx context.Context, n *reach.Node, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for !n.Status().PortMapping.External.IsValid() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
}

// waitAllocation waits until n has measured how its symmetric NAT
// allocates ports, or limit: a long-running node knows it, and its
// offers and answers carry it, which port prediction and the birthday
// mode need. A fresh listener introduced before its four STUN exchanges
// are done answers without it (seen: the introduction 5 ms before the
// measurement, so the dial went to the supernode).
func waitAllocation(ctx context.Context, n *reach.Node, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for n.Allocation() == "" && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
}

// serve answers one attempt on the listening node: it echoes the first
// byte, counts the transfer that follows, and acknowledges its length.
func serve(ctx context.Context, n *reach.Node) error {
	st, err := n.Accept(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	var b [8]byte
	if _, err := io.ReadFull(st, b[:1]); err != nil {
		return err
	}
	if _, err := st.Write(b[:1]); err != nil {
		return err
	}
	got, err := io.Copy(io.Discard, st)
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint64(b[:], uint64(got))
	if _, err := st.Write(b[:]); err != nil {
		return err
	}
	return st.CloseWrite()
}

// dial is the dialling side of an attempt: Dial to first echoed byte,
// then the transfer, then the path's round trip.
func (r *runner) dial(ctx context.Context, nd, nl *reach.Node) Attempt {
	var a Attempt
	dctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	defer cancel()
	start := time.Now()
	sess, err := nd.DialSession(dctx, nl.ID())
	if err != nil {
		a.Err = shortErr(err)
		return a
	}
	a.Strategy = sess.Strategy()
	a.Detail = sess.StrategyDetail()
	a.Path = sess.RemoteAddr().String()
	if a.Strategy == Relay {
		a.Link = nd.Status().RelayTransport
		a.Path = "relay"
	}
	st, err := sess.OpenStream(dctx)
	if err != nil {
		a.Err = "open stream: " + shortErr(err)
		return a
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	var b [8]byte
	b[0] = 0x2a
	if _, err := st.Write(b[:1]); err != nil {
		a.Err = "first byte: " + shortErr(err)
		return a
	}
	if _, err := io.ReadFull(st, b[:1]); err != nil || b[0] != 0x2a {
		a.Err = fmt.Sprintf("first byte echo: %v", err)
		return a
	}
	a.ConnectMS = ms(time.Since(start))
	a.OK = true
	if err := r.transfer(st, &a); err != nil {
		a.Err = "transfer: " + shortErr(err)
	}
	a.RTTMS = pathRTT(ctx, sess)
	return a
}

// transfer sends cfg.Size bytes and waits for the listener's count.
func (r *runner) transfer(st *stream.Stream, a *Attempt) error {
	t0 := time.Now()
	for left := r.cfg.Size; left > 0; {
		n := min(left, len(r.payload))
		if _, err := st.Write(r.payload[:n]); err != nil {
			return err
		}
		left -= n
	}
	if err := st.CloseWrite(); err != nil {
		return err
	}
	var b [8]byte
	if _, err := io.ReadFull(st, b[:]); err != nil {
		return err
	}
	if got := binary.BigEndian.Uint64(b[:]); got != uint64(r.cfg.Size) {
		return fmt.Errorf("listener counted %d bytes of %d", got, r.cfg.Size)
	}
	if r.cfg.Size > 0 {
		a.Mbps = round(float64(r.cfg.Size) * 8 / time.Since(t0).Seconds() / 1e6)
	}
	return nil
}

// pathRTT is the lowest of three pings on the session: the path's round
// trip (the lab's delays are fixed; a busy machine only adds to them).
func pathRTT(ctx context.Context, sess *stream.Session) float64 {
	var rtts []float64
	for range 3 {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		d, err := sess.Ping(pctx)
		cancel()
		if err == nil {
			rtts = append(rtts, ms(d))
		}
	}
	if len(rtts) == 0 {
		return 0
	}
	return slices.Min(rtts)
}

// MinChanceDials is how many dials of a direction whose best path is
// found by chance (Expectation.Fallback) must all have fallen back before
// the direction is flagged: a cause that stops the birthday mode misses
// every time, while at its hit rate in the matrix (68-85%) three misses
// in a row happen by chance 0.3-3% of the time; one or two say nothing.
const MinChanceDials = 3

// summarise fills a direction's totals from its attempts and compares
// them with Best (again, if it ran before).
func summarise(d *Direction) {
	var connect, rtt, mbps []float64
	var fails []string
	d.Connected, d.Strategy, d.Strategies = 0, "", map[string]int{}
	d.ConnectMedianMS, d.ConnectWorstMS = 0, 0
	for _, a := range d.Attempts {
		if !a.OK {
			fails = append(fails, a.Err)
			continue
		}
		d.Connected++
		d.Strategies[a.Strategy]++
		connect = append(connect, a.ConnectMS)
		if a.RTTMS > 0 {
			rtt = append(rtt, a.RTTMS)
		}
		if a.Mbps > 0 {
			mbps = append(mbps, a.Mbps)
		}
	}
	for s, n := range d.Strategies {
		if n > d.Strategies[d.Strategy] || n == d.Strategies[d.Strategy] && rank(s) > rank(d.Strategy) {
			d.Strategy = s // the most frequent; on a tie, the worse
		}
	}
	if len(connect) > 0 {
		d.ConnectMedianMS = round(median(connect))
		d.ConnectWorstMS = slices.Max(connect)
	}
	d.RTTMS = round(median(rtt))
	if d.RTTMS > 0 {
		d.ConnectRTTs = round(d.ConnectMedianMS / d.RTTMS)
	}
	d.Mbps = round(median(mbps))
	var why []string
	if len(fails) > 0 {
		why = append(why, fmt.Sprintf("%d of %d attempts failed (%s)", len(fails), len(d.Attempts), fails[0]))
	}
	var worse []string
	worsePath := len(fails) > 0
	d.FellBack = 0
	for s, n := range d.Strategies {
		if d.Fallback != "" && rank(s) > rank(d.Best) && rank(s) <= rank(d.Fallback) {
			d.FellBack += n // Best is there by chance; a miss may take this
			continue
		}
		if rank(s) > rank(d.Best) {
			worse = append(worse, fmt.Sprintf("%s in %d of %d", s, n, len(d.Attempts)))
			// Worse than a fallback (the relay where the supernode was
			// allowed) is another forwarder: the same kind of path.
			ref := cmp.Or(d.Fallback, d.Best)
			worsePath = worsePath || Forwarded(s) != Forwarded(ref)
		}
	}
	switch {
	case d.FellBack >= MinChanceDials && d.FellBack == len(d.Attempts):
		// Every dial missed: at the birthday mode's measured hit rate
		// that is rarely chance (docs/matrix.md).
		why = append(why, fmt.Sprintf("fell back to %s in every one of %d dials, where %s finds its path by chance but mostly", d.Fallback, d.FellBack, d.Best))
		worsePath = true
	case d.FellBack > 0:
		why = append(why, fmt.Sprintf("fell back to %s in %d of %d (%s by chance only: not flagged)", d.Fallback, d.FellBack, len(d.Attempts), d.Best))
	}
	sort.Strings(worse)
	if v4 := notIPv6(d); d.BestIPv6 && v4 > 0 {
		// Another path, not another name for the same one: through the
		// IPv4 NATs, with their mappings and timeouts.
		why = append(why, fmt.Sprintf("a path not over IPv6 in %d of %d", v4, len(d.Attempts)))
		worsePath = true
	}
	if len(worse) > 0 {
		why = append(why, "won by "+strings.Join(worse, ", ")+", best is "+d.Best)
	}
	d.Worse = worsePath || len(worse) > 0
	d.Reason = strings.Join(why, "; ")
	d.Severity = ""
	switch {
	case worsePath:
		d.Severity = SeverityPath
	case d.Worse:
		d.Severity = SeverityRung
	}
}

// notIPv6 counts the connected attempts whose path is not an IPv6 one.
func notIPv6(d *Direction) int {
	n := 0
	for _, a := range d.Attempts {
		if !a.OK {
			continue
		}
		ap, err := netip.ParseAddrPort(a.Path)
		if err != nil || !ap.Addr().Is6() || ap.Addr().Is4In6() {
			n++
		}
	}
	return n
}

// shortErr keeps the first line of an error, at most 200 bytes.
func shortErr(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

func ms(d time.Duration) float64 { return round(float64(d) / float64(time.Millisecond)) }

func round(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
