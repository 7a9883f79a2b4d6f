package natlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// UPnPWANPrefix holds the WAN addresses Lab.AddUPnPRouter hands out.
// miniupnpd refuses to map ports when its external address is private or
// reserved ("private/reserved address is not suitable for external IP"),
// and the internet segment's 203.0.113.0/24 is reserved for documentation,
// so a UPnP gateway needs an address that looks public. The lab has no
// route out, so none of these packets can ever leave it.
var UPnPWANPrefix = netip.MustParsePrefix("5.5.5.0/24")

// NAT-PMP and PCP listen on this UDP port on the router's LAN address.
const natpmpPort = 5351

// ErrDaemonExited: a daemon the lab started exited before it was ready.
var ErrDaemonExited = errors.New("natlab: daemon exited")

// ErrNotReady: a daemon did not become ready in time.
var ErrNotReady = errors.New("natlab: daemon not ready")

// The nftables layout miniupnpd 2.3.1 works on. Its nftables backend
// (Debian's miniupnpd-nftables, see /etc/miniupnpd/nft_init.sh) uses
// tables of family inet, and only adds rules to chains it is told about;
// it creates neither tables nor chains. Ours live in a table of their own
// so the router's NAT ruleset (table ip lab) stays untouched:
//
//   - upnp_prerouting holds miniupnpd's DNAT rules. Its base chain hooks
//     prerouting one step before the router's own DNAT (dstnat - 1), so a
//     UPnP mapping wins over a cone NAT's port map, and the router's NAT
//     behaviour stays as it is for every packet no mapping matches.
//   - upnp_forward holds miniupnpd's accept rules for the mapped traffic.
//     Its base chain has policy accept: in nftables a packet must pass
//     every base chain of a hook, and the router's own forward chain
//     already accepts what was DNATed on the WAN side ("ct status dnat").
//   - upnp_postrouting holds PCP peer rules (SNAT), before the router's
//     masquerade (srcnat - 1).
const (
	upnpTable       = "upnp"
	upnpForward     = "upnp_forward"
	upnpPrerouting  = "upnp_prerouting"
	upnpPostrouting = "upnp_postrouting"
)

func upnpRuleset() string {
	return fmt.Sprintf(`table inet %[1]s
delete table inet %[1]s
table inet %[1]s {
  chain forward {
    type filter hook forward priority filter - 1; policy accept;
    jump %[2]s
  }
  chain %[2]s {
  }
  chain prerouting {
    type nat hook prerouting priority dstnat - 1; policy accept;
    jump %[3]s
  }
  chain %[3]s {
  }
  chain postrouting {
    type nat hook postrouting priority srcnat - 1; policy accept;
    jump %[4]s
  }
  chain %[4]s {
  }
}
`, upnpTable, upnpForward, upnpPrerouting, upnpPostrouting)
}

// UPnPConfig configures a miniupnpd gateway.
type UPnPConfig struct {
	// UPnP enables UPnP IGD: SSDP discovery and SOAP over HTTP on the LAN.
	UPnP bool
	// NATPMP enables NAT-PMP and PCP (miniupnpd serves both on UDP 5351).
	// If UPnP and NATPMP are both false, both are enabled.
	NATPMP bool
	// MinLease and MaxLease bound the lifetime granted to NAT-PMP and PCP
	// mappings (min_lifetime, max_lifetime). Zero: miniupnpd's defaults,
	// 120s and 86400s. Whole seconds.
	MinLease, MaxLease time.Duration
	// HTTPPort is the UPnP HTTP (SOAP) port. Zero: a random port, a new
	// one on every Restart, as after a router reboot.
	HTTPPort uint16
}

// PortMapping is one port forward miniupnpd has installed.
type PortMapping struct {
	// Proto is "udp" or "tcp".
	Proto string
	// External is the port on the router's WAN address.
	External uint16
	// Internal is where it forwards to.
	Internal netip.AddrPort
}

func (p PortMapping) String() string {
	return fmt.Sprintf("%s %d -> %s", p.Proto, p.External, p.Internal)
}

// Miniupnpd is a miniupnpd instance running in a router's namespace, on
// its LAN bridge, with the WAN interface as the external one.
type Miniupnpd struct {
	r   *Router
	cfg UPnPConfig
	dir string

	mu   sync.Mutex
	d    *daemon
	port uint16
}

var upnpAddrMu sync.Mutex // serializes picking UPnP WAN addresses

// AddUPnPRouter builds a router on the internet segment with a
// public-looking WAN address from UPnPWANPrefix (unless cfg.WANAddr is
// set) and starts miniupnpd on it.
func (l *Lab) AddUPnPRouter(ctx context.Context, cfg RouterConfig, ucfg UPnPConfig) (*Router, *Miniupnpd, error) {
	if cfg.Upstream != nil && cfg.Upstream != l.inet {
		return nil, nil, fmt.Errorf("natlab: UPnP router %s: must attach to the internet segment (miniupnpd refuses private WAN addresses)", cfg.Name)
	}
	upnpAddrMu.Lock()
	if !cfg.WANAddr.IsValid() {
		used := map[netip.Addr]bool{}
		for _, r := range l.Routers() {
			used[r.WAN()] = true
		}
		a := UPnPWANPrefix.Addr().Next()
		for ; UPnPWANPrefix.Contains(a) && used[a]; a = a.Next() {
		}
		if !UPnPWANPrefix.Contains(a) {
			upnpAddrMu.Unlock()
			return nil, nil, fmt.Errorf("natlab: no free address in %s", UPnPWANPrefix)
		}
		cfg.WANAddr = a
	}
	r, err := l.AddRouter(ctx, cfg)
	upnpAddrMu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	m, err := r.StartMiniupnpd(ctx, ucfg)
	if err != nil {
		return nil, nil, err
	}
	return r, m, nil
}

// StartMiniupnpd installs the nftables chains miniupnpd needs and starts
// it in the foreground (debug mode, output captured; see Log). The lab
// stops it on Close. Start at most one per router.
//
// miniupnpd maps nothing unless the router's WAN address is public-looking
// (see AddUPnPRouter).
func (r *Router) StartMiniupnpd(ctx context.Context, cfg UPnPConfig) (*Miniupnpd, error) {
	if !cfg.UPnP && !cfg.NATPMP {
		cfg.UPnP, cfg.NATPMP = true, true
	}
	if _, err := exec.LookPath("miniupnpd"); err != nil {
		if _, err := os.Stat("/usr/sbin/miniupnpd"); err != nil {
			return nil, fmt.Errorf("%w: miniupnpd (apt-get install miniupnpd)", ErrMissingTool)
		}
	}
	if err := runInput(ctx, upnpRuleset(), "ip", "netns", "exec", r.ns, "nft", "-f", "-"); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "natlab-miniupnpd-"+r.name+"-")
	if err != nil {
		return nil, err
	}
	r.lab.onStop(func() { os.RemoveAll(dir) }) // after the process is gone
	m := &Miniupnpd{r: r, cfg: cfg, dir: dir}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.startLocked(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Miniupnpd) startLocked(ctx context.Context) error {
	old := m.port
	m.port = m.cfg.HTTPPort
	for m.port == 0 || m.port == old && m.cfg.HTTPPort == 0 {
		n, _ := rand.Int(rand.Reader, big.NewInt(10000))
		m.port = uint16(30000 + n.Int64())
	}
	conf := filepath.Join(m.dir, "miniupnpd.conf")
	if err := os.WriteFile(conf, []byte(m.config()), 0o644); err != nil {
		return err
	}
	m.d = &daemon{name: "miniupnpd", host: &m.r.Host}
	if err := m.d.start("/usr/sbin/miniupnpd", "-d", "-f", conf, "-P", filepath.Join(m.dir, "miniupnpd.pid")); err != nil {
		return err
	}
	ready := "Listening for NAT-PMP/PCP traffic"
	if m.cfg.UPnP {
		ready = "HTTP listening on port " + strconv.Itoa(int(m.port))
	}
	return m.d.waitFor(ctx, 10*time.Second, func() bool { return strings.Contains(m.d.out.String(), ready) })
}

func (m *Miniupnpd) config() string {
	r := m.r
	yn := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "ext_ifname=wan\nlistening_ip=lan\nhttp_port=%d\n", m.port)
	fmt.Fprintf(&b, "enable_upnp=%s\nenable_natpmp=%s\n", yn(m.cfg.UPnP), yn(m.cfg.NATPMP))
	if m.cfg.MinLease > 0 {
		fmt.Fprintf(&b, "min_lifetime=%d\n", max(1, int(m.cfg.MinLease/time.Second)))
	}
	if m.cfg.MaxLease > 0 {
		fmt.Fprintf(&b, "max_lifetime=%d\n", max(1, int(m.cfg.MaxLease/time.Second)))
	}
	fmt.Fprintf(&b, "lease_file=%s\n", m.leaseFile())
	// a stable UUID per router; the lab ID keeps labs apart
	id := fmt.Sprintf("%08x", crc(r.lab.id+"/"+r.name))
	fmt.Fprintf(&b, "uuid=%s-0000-4000-8000-000000000000\n", id)
	fmt.Fprintf(&b, "friendly_name=natlab %s\nsystem_uptime=no\nnotify_interval=60\nsecure_mode=yes\n", r.name)
	fmt.Fprintf(&b, "upnp_table_name=%s\nupnp_nat_table_name=%s\n", upnpTable, upnpTable)
	fmt.Fprintf(&b, "upnp_forward_chain=%s\nupnp_nat_chain=%s\nupnp_nat_postrouting_chain=%s\n", upnpForward, upnpPrerouting, upnpPostrouting)
	fmt.Fprintf(&b, "allow 1024-65535 %s 1024-65535\n", r.cfg.LAN)
	b.WriteString("deny 0-65535 0.0.0.0/0 0-65535\n")
	return b.String()
}

func crc(s string) uint32 {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

func (m *Miniupnpd) leaseFile() string { return filepath.Join(m.dir, "upnp.leases") }

// Router is the gateway miniupnpd runs on.
func (m *Miniupnpd) Router() *Router { return m.r }

// HTTPPort is the current UPnP HTTP (SOAP) port.
func (m *Miniupnpd) HTTPPort() uint16 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.port
}

// RootDescURL is the UPnP device description's URL (what SSDP discovery
// finds), for clients that skip discovery (upnpc -u).
func (m *Miniupnpd) RootDescURL() string {
	return fmt.Sprintf("http://%s/rootDesc.xml", netip.AddrPortFrom(m.r.LANAddr(), m.HTTPPort()))
}

// NATPMPAddr is where NAT-PMP and PCP requests go: the router's LAN
// address, UDP 5351.
func (m *Miniupnpd) NATPMPAddr() netip.AddrPort {
	return netip.AddrPortFrom(m.r.LANAddr(), natpmpPort)
}

// Log returns miniupnpd's output so far (debug level), across restarts.
func (m *Miniupnpd) Log() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.d.out.String()
}

// ruleRE matches one DNAT rule as nft lists it, e.g.
// iif "wan" @nh,72,8 0x11 th dport 6000 dnat ip to 10.1.0.10:5000
var ruleRE = regexp.MustCompile(`@nh,72,8 (0x[0-9a-f]+) .*th dport (\d+) .*dnat ip to ([0-9.]+):(\d+)`)

// Mappings lists the port forwards in effect, read from miniupnpd's DNAT
// chain (what the kernel applies, not what miniupnpd remembers).
func (m *Miniupnpd) Mappings(ctx context.Context) ([]PortMapping, error) {
	out, err := output(ctx, "ip", "netns", "exec", m.r.ns, "nft", "list", "chain", "inet", upnpTable, upnpPrerouting)
	if err != nil {
		return nil, err
	}
	var res []PortMapping
	for _, line := range strings.Split(out, "\n") {
		s := ruleRE.FindStringSubmatch(line)
		if s == nil {
			continue
		}
		proto := s[1]
		switch proto {
		case "0x11":
			proto = "udp"
		case "0x06", "0x6":
			proto = "tcp"
		}
		ext, _ := strconv.Atoi(s[2])
		ip, err := netip.ParseAddr(s[3])
		if err != nil {
			continue
		}
		port, _ := strconv.Atoi(s[4])
		res = append(res, PortMapping{Proto: proto, External: uint16(ext), Internal: netip.AddrPortFrom(ip, uint16(port))})
	}
	return res, nil
}

// Stop stops miniupnpd and forgets its mappings: its chains are flushed,
// its lease file deleted, and the conntrack entries of flows through the
// mappings removed. The nftables base chains stay (empty, they pass
// everything). Stop is safe to call more than once.
func (m *Miniupnpd) Stop() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return m.stopLocked(ctx)
}

func (m *Miniupnpd) stopLocked(ctx context.Context) error {
	m.d.stop()
	maps, _ := m.Mappings(ctx)
	var errs []error
	for _, c := range []string{upnpPrerouting, upnpForward, upnpPostrouting} {
		if err := run(ctx, "ip", "netns", "exec", m.r.ns, "nft", "flush", "chain", "inet", upnpTable, c); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range maps {
		// exit status 1 when nothing matched: ignore
		run(ctx, "ip", "netns", "exec", m.r.ns, "conntrack", "-D", "-p", p.Proto,
			"--orig-dst", m.r.WAN().String(), "--orig-port-dst", strconv.Itoa(int(p.External)))
	}
	if err := os.Remove(m.leaseFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Restart mimics a router reboot: miniupnpd stops, every mapping is lost
// (see Stop), and it starts again on a new HTTP port (unless
// UPnPConfig.HTTPPort fixes one). Clients must rediscover it and map
// again.
func (m *Miniupnpd) Restart(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.stopLocked(ctx); err != nil {
		return err
	}
	prev := m.d.out.String()
	if err := m.startLocked(ctx); err != nil {
		return err
	}
	m.d.out.prefix(prev + "--- restart ---\n")
	return nil
}

// --- daemon plumbing shared by miniupnpd, coturn and squid ---

// logBuffer collects a daemon's output; safe for concurrent use, bounded
// (it keeps the last 1 MiB).
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

const logLimit = 1 << 20

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	if l.b.Len() > logLimit {
		rest := append([]byte(nil), l.b.Bytes()[l.b.Len()-logLimit/2:]...)
		l.b.Reset()
		l.b.WriteString("[... truncated ...]\n")
		l.b.Write(rest)
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) prefix(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rest := l.b.String()
	l.b.Reset()
	l.b.WriteString(s)
	l.b.WriteString(rest)
}

// daemon is one long-running process in a host's namespace, registered
// with the lab so Close kills it.
type daemon struct {
	name    string
	host    *Host
	out     logBuffer
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
}

func (d *daemon) start(args ...string) error {
	cmd := exec.Command("ip", append([]string{"netns", "exec", d.host.ns}, args...)...)
	cmd.Stdout = &d.out
	cmd.Stderr = &d.out
	cmd.WaitDelay = 2 * time.Second // a helper holding the pipe must not block Wait
	_, done, err := d.host.lab.startCmd(cmd)
	if err != nil {
		return fmt.Errorf("natlab: starting %s: %w", d.name, err)
	}
	d.cmd = cmd
	d.exited = make(chan struct{})
	go func() {
		d.exitErr = <-done
		close(d.exited)
	}()
	d.host.lab.log.Debug("daemon started", "daemon", d.name, "host", d.host.name, "pid", cmd.Process.Pid)
	return nil
}

// waitFor polls ready until it holds, the daemon exits, ctx ends or limit
// passes.
func (d *daemon) waitFor(ctx context.Context, limit time.Duration, ready func() bool) error {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready() {
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("%w: %s on %s: %v\n%s", ErrDaemonExited, d.name, d.host.name, d.exitErr, d.out.String())
		case <-ctx.Done():
			d.stop()
			return fmt.Errorf("%w: %s on %s: %v\n%s", ErrNotReady, d.name, d.host.name, ctx.Err(), d.out.String())
		case <-deadline.C:
			d.stop()
			return fmt.Errorf("%w: %s on %s after %v\n%s", ErrNotReady, d.name, d.host.name, limit, d.out.String())
		case <-tick.C:
		}
	}
}

// stop sends SIGTERM, then SIGKILL after 5s, and waits for the exit.
func (d *daemon) stop() {
	if d.cmd == nil {
		return
	}
	select {
	case <-d.exited:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
}

// running reports whether the daemon has not exited.
func (d *daemon) running() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}
