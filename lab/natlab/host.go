package natlab

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"

	"github.com/vishvananda/netns"
)

// Network is an L2 segment: a bridge inside some namespace with an IPv4
// prefix, an IPv6 one, or both. The internet is one; every router's LAN
// is another.
type Network struct {
	lab    *Lab
	name   string
	ns     string // namespace holding the bridge
	bridge string
	v4, v6 netip.Prefix // invalid: no IPv4 (an IPv6-only LAN), no IPv6 on this segment
	gw4    netip.Addr   // invalid on the internet (on-link default route)
	gw6    netip.Addr
	next   int       // next host number to hand out
	routes []v6Route // extra IPv6 routes every host on this segment needs
	hosts  []*Host
}

type v6Route struct {
	dst netip.Prefix
	via netip.Addr
}

// Name is the segment's name ("internet" or the router's name).
func (n *Network) Name() string { return n.name }

// Prefix4 is the segment's IPv4 prefix (invalid on an IPv6-only LAN).
func (n *Network) Prefix4() netip.Prefix { return n.v4 }

// Prefix6 is the segment's IPv6 prefix (invalid if the segment has none).
func (n *Network) Prefix6() netip.Prefix { return n.v6 }

// Host is a machine in the lab: one namespace with one interface, eth0
// (routers have more).
type Host struct {
	lab   *Lab
	name  string
	ns    string
	net   *Network
	addr4 netip.Addr
	addr6 netip.Addr
}

// Name is the host's short name.
func (h *Host) Name() string { return h.name }

// Namespace is the network namespace's name (for ip netns exec).
func (h *Host) Namespace() string { return h.ns }

// Addr is the host's IPv4 address on its segment (invalid on an
// IPv6-only host).
func (h *Host) Addr() netip.Addr { return h.addr4 }

// Addr6 is the host's IPv6 address (invalid if its segment has no IPv6).
func (h *Host) Addr6() netip.Addr { return h.addr6 }

// Network is the segment the host is attached to.
func (h *Host) Network() *Network { return h.net }

func (n *Network) allocate() (netip.Addr, netip.Addr, error) {
	n.lab.mu.Lock()
	i := n.next
	n.next++
	n.lab.mu.Unlock()
	if i > 250 {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("natlab: segment %s is full", n.name)
	}
	var v4, v6 netip.Addr
	if n.v4.IsValid() {
		a := n.v4.Addr().As4()
		a[3] = byte(i)
		v4 = netip.AddrFrom4(a)
	}
	if n.v6.IsValid() {
		a := n.v6.Addr().As16()
		a[15] = byte(i)
		v6 = netip.AddrFrom16(a)
	}
	return v4, v6, nil
}

// link connects namespace ns to network n with a veth pair; the end in ns
// is called ifname and gets the addresses a4 and a6 (each may be invalid:
// none of that family).
func (n *Network) link(ctx context.Context, ns, ifname string, a4, a6 netip.Addr) error {
	l := n.lab
	l.mu.Lock()
	l.nextLink++
	port := fmt.Sprintf("p%d", l.nextLink)
	l.mu.Unlock()
	steps := [][]string{
		{"ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", n.ns},
		{"ip", "-n", n.ns, "link", "set", port, "master", n.bridge, "up"},
	}
	if a4.IsValid() {
		steps = append(steps, []string{"ip", "-n", ns, "addr", "add", netip.PrefixFrom(a4, n.v4.Bits()).String(), "dev", ifname})
	}
	if a6.IsValid() {
		steps = append(steps, []string{"ip", "-n", ns, "-6", "addr", "add", netip.PrefixFrom(a6, n.v6.Bits()).String(), "dev", ifname, "nodad"})
	}
	steps = append(steps, []string{"ip", "-n", ns, "link", "set", ifname, "up"})
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// defaultRoutes points ns's default routes at segment n: IPv4 only with
// v4 (a namespace without an IPv4 address gets no IPv4 route at all, so
// an IPv4 destination is unreachable there), IPv6 when n has it.
func (n *Network) defaultRoutes(ctx context.Context, ns, ifname string, v4 bool) error {
	var steps [][]string
	switch {
	case !v4:
	case n.gw4.IsValid():
		steps = append(steps, []string{"ip", "-n", ns, "route", "add", "default", "via", n.gw4.String()})
	default:
		steps = append(steps, []string{"ip", "-n", ns, "route", "add", "default", "dev", ifname})
	}
	if n.v6.IsValid() {
		if n.gw6.IsValid() {
			steps = append(steps, []string{"ip", "-n", ns, "-6", "route", "add", "default", "via", n.gw6.String()})
		} else {
			steps = append(steps, []string{"ip", "-n", ns, "-6", "route", "add", "default", "dev", ifname})
		}
	}
	for _, r := range n.routes {
		steps = append(steps, []string{"ip", "-n", ns, "-6", "route", "add", r.dst.String(), "via", r.via.String()})
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// addRoute6 adds an IPv6 route to every host on the segment, now and
// later, and to the IPv6 routers already on it (a later router gets the
// segment's routes with its default routes), so that two IPv6 sites reach
// each other.
func (n *Network) addRoute6(ctx context.Context, dst netip.Prefix, via netip.Addr) error {
	n.lab.mu.Lock()
	n.routes = append(n.routes, v6Route{dst, via})
	var nss []string
	for _, h := range n.hosts {
		nss = append(nss, h.ns)
	}
	for _, r := range n.lab.routers {
		if r.net == n && r.cfg.IPv6 {
			nss = append(nss, r.ns)
		}
	}
	n.lab.mu.Unlock()
	for _, ns := range nss {
		if err := run(ctx, "ip", "-n", ns, "-6", "route", "add", dst.String(), "via", via.String()); err != nil {
			return err
		}
	}
	return nil
}

// AddHost attaches a new host to the segment: a public host on the
// internet, or a private host on a router's LAN (with IPv4 only if the LAN
// has it).
func (n *Network) AddHost(ctx context.Context, name string) (*Host, error) {
	return n.addHost(ctx, name, false)
}

// addHost attaches a host; with v6only it gets no IPv4 address and no
// IPv4 route even where the segment has IPv4.
func (n *Network) addHost(ctx context.Context, name string, v6only bool) (*Host, error) {
	a4, a6, err := n.allocate()
	if err != nil {
		return nil, err
	}
	if v6only {
		if !a6.IsValid() {
			return nil, fmt.Errorf("natlab: host %s: segment %s has no IPv6", name, n.name)
		}
		a4 = netip.Addr{}
	}
	h := &Host{lab: n.lab, name: name, ns: n.lab.nsName(name), net: n, addr4: a4, addr6: a6}
	if err := n.lab.addNS(ctx, h.ns); err != nil {
		return nil, err
	}
	if err := n.link(ctx, h.ns, "eth0", a4, a6); err != nil {
		return nil, err
	}
	if err := n.defaultRoutes(ctx, h.ns, "eth0", a4.IsValid()); err != nil {
		return nil, err
	}
	n.lab.mu.Lock()
	n.hosts = append(n.hosts, h)
	n.lab.hosts = append(n.lab.hosts, h)
	n.lab.mu.Unlock()
	n.lab.log.Debug("host added", "host", name, "addr", a4, "addr6", a6, "segment", n.name)
	return h, nil
}

// AddPublicHost adds a host on the internet segment.
func (l *Lab) AddPublicHost(ctx context.Context, name string) (*Host, error) {
	return l.inet.AddHost(ctx, name)
}

// AddPublicHost6 adds a host on the internet segment with only an IPv6
// address (an IPv6-only server or VPS): no IPv4 address, no IPv4 route.
func (l *Lab) AddPublicHost6(ctx context.Context, name string) (*Host, error) {
	return l.inet.addHost(ctx, name, true)
}

// Run calls fn on an OS thread switched into the host's namespace. Sockets
// fn creates belong to the host and keep working after Run returns, from
// any goroutine. Goroutines fn starts do NOT run in the namespace: create
// every socket inside fn.
func (h *Host) Run(fn func() error) error { return runIn(h.ns, fn) }

func runIn(ns string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("natlab: namespace %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in the wrong namespace: keep it locked so
		// the runtime retires it instead of reusing it.
		return fmt.Errorf("natlab: restoring namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Command returns a command that runs inside the host's namespace (via
// ip netns exec). The lab does not track it: the caller waits for it, or
// uses Start to have the lab kill it on Close.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
}

// Exec runs a command in the host and returns its combined output.
func (h *Host) Exec(ctx context.Context, name string, args ...string) (string, error) {
	return output(ctx, append([]string{"ip", "netns", "exec", h.ns, name}, args...)...)
}

// Start starts a long-running command in the host; the lab kills it on
// Close. The returned channel yields the command's exit error once.
func (h *Host) Start(ctx context.Context, name string, args ...string) (*exec.Cmd, <-chan error, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
	return h.lab.startCmd(cmd)
}

func (l *Lab) startCmd(cmd *exec.Cmd) (*exec.Cmd, <-chan error, error) {
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	done := make(chan error, 1)
	waited := make(chan struct{})
	go func() {
		done <- cmd.Wait()
		close(waited)
	}()
	l.onStop(func() {
		cmd.Process.Kill()
		<-waited
	})
	return cmd, done, nil
}
