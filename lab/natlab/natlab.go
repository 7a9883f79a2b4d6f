// Package natlab builds a virtual internet out of Linux network namespaces,
// veth links, bridges and nftables, so that NAT traversal is tested against
// the real kernel: conntrack, masquerade port clashes, real UPnP gateways.
//
// A Lab has one internet segment (a bridge in its own namespace, addresses
// from 203.0.113.0/24 and 2001:db8::/64) to which public hosts and routers
// attach. Each router owns a private LAN (a bridge inside the router's
// namespace) and implements one NAT behaviour of RFC 4787 with nftables.
// Routers can be chained (double NAT: a home router whose upstream is a
// carrier router's LAN in 100.64.0.0/10).
//
// The lab's namespaces have no link to the root namespace and no route out,
// so no packet can leave the lab whatever its address. Every namespace name
// starts with Prefix; Cleanup removes leftovers of crashed runs.
//
// Everything here needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN). Tests call
// Require, which skips with a one-line reason when that is missing.
package natlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Prefix starts the name of every namespace the lab creates.
const Prefix = "rlab"

// registryDir holds one file per live lab with the owning process's PID,
// so Cleanup can tell a crashed run's leftovers from a running lab.
const registryDir = "/run/reach-natlab"

// ErrNotRoot: the lab needs root.
var ErrNotRoot = errors.New("natlab: the NAT lab needs root (network namespaces and nftables)")

// ErrMissingTool: a program the lab needs is not installed.
var ErrMissingTool = errors.New("natlab: required program not installed")

// Config configures a Lab.
type Config struct {
	// Logger receives what the lab does. Nil: discard.
	Logger *slog.Logger
	// Name is a short label used in the namespace names (letters and
	// digits). Empty: a random 4-hex-digit ID.
	Name string
}

// Lab is one virtual internet. Its methods are safe for concurrent use.
type Lab struct {
	id     string
	log    *slog.Logger
	inetNS string

	mu       sync.Mutex
	closed   bool
	inet     *Network
	routers  []*Router
	hosts    []*Host
	nsList   []string
	nextLink int
	nextNet  int
	stoppers []func() // background work (processes, forwarders) to stop on Close
}

// Tools returns the external programs the lab needs, and which are missing.
func Tools() (missing []string) {
	for _, t := range []string{"ip", "nft", "conntrack", "sysctl"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	return missing
}

// Available reports whether the lab can run here, with the reason if not.
func Available() error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	if m := Tools(); len(m) > 0 {
		return fmt.Errorf("%w: %s (run .ci/run or apt-get install iproute2 nftables conntrack)", ErrMissingTool, strings.Join(m, ", "))
	}
	return nil
}

// New creates an empty lab: the internet segment only. It first removes
// leftovers of crashed runs (see Cleanup).
func New(ctx context.Context, cfg Config) (*Lab, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if _, err := Cleanup(ctx, false); err != nil {
		log.Warn("cleaning stale labs", "err", err)
	}
	id := cfg.Name
	if id == "" {
		var b [2]byte
		rand.Read(b[:])
		id = hex.EncodeToString(b[:])
	}
	l := &Lab{id: id, log: log}
	if err := os.MkdirAll(registryDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(registryDir, id), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	l.inetNS = l.nsName("inet")
	if err := l.addNS(ctx, l.inetNS); err != nil {
		l.Close()
		return nil, err
	}
	if err := run(ctx, "ip", "-n", l.inetNS, "link", "add", "br0", "type", "bridge"); err != nil {
		l.Close()
		return nil, err
	}
	if err := run(ctx, "ip", "-n", l.inetNS, "link", "set", "br0", "up"); err != nil {
		l.Close()
		return nil, err
	}
	l.inet = &Network{
		lab: l, name: "internet", ns: l.inetNS, bridge: "br0",
		v4: netip.MustParsePrefix("203.0.113.0/24"), v6: netip.MustParsePrefix("2001:db8::/64"),
		next: 10,
	}
	return l, nil
}

// ID returns the lab's ID (part of every namespace name).
func (l *Lab) ID() string { return l.id }

// Internet returns the public segment.
func (l *Lab) Internet() *Network { return l.inet }

// Routers returns the routers, in creation order.
func (l *Lab) Routers() []*Router {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Router(nil), l.routers...)
}

func (l *Lab) nsName(name string) string { return Prefix + l.id + "-" + name }

func (l *Lab) addNS(ctx context.Context, ns string) error {
	if err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return err
	}
	l.mu.Lock()
	l.nsList = append(l.nsList, ns)
	l.mu.Unlock()
	// loopback up; no DAD delays on IPv6 addresses we assign
	if err := run(ctx, "ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
		return err
	}
	return sysctl(ctx, ns, "net.ipv6.conf.all.accept_dad", "0", "net.ipv6.conf.default.accept_dad", "0")
}

// onStop registers background work to stop on Close (last in, first out).
func (l *Lab) onStop(f func()) {
	l.mu.Lock()
	l.stoppers = append(l.stoppers, f)
	l.mu.Unlock()
}

// Close stops everything the lab started and deletes its namespaces. It is
// safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	stoppers := l.stoppers
	nsList := l.nsList
	l.mu.Unlock()
	for i := len(stoppers) - 1; i >= 0; i-- {
		stoppers[i]()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for i := len(nsList) - 1; i >= 0; i-- {
		if err := deleteNS(ctx, nsList[i]); err != nil {
			errs = append(errs, err)
		}
	}
	os.Remove(filepath.Join(registryDir, l.id))
	return errors.Join(errs...)
}

// deleteNS kills every process in ns and deletes it.
func deleteNS(ctx context.Context, ns string) error {
	out, _ := output(ctx, "ip", "netns", "pids", ns)
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		}
	}
	if err := run(ctx, "ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
		return err
	}
	return nil
}

// Cleanup deletes lab namespaces left behind. With all false it removes
// only labs whose owning process is gone (safe while other labs run);
// with all true it removes every lab namespace. It returns the names
// removed.
func Cleanup(ctx context.Context, all bool) ([]string, error) {
	out, err := output(ctx, "ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	live := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], Prefix) {
			continue
		}
		ns := f[0]
		id, _, ok := strings.Cut(strings.TrimPrefix(ns, Prefix), "-")
		if !ok {
			continue
		}
		if !all {
			alive, seen := live[id]
			if !seen {
				alive = labAlive(id)
				live[id] = alive
			}
			if alive {
				continue
			}
		}
		if err := deleteNS(ctx, ns); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, ns)
		os.Remove(filepath.Join(registryDir, id))
	}
	return removed, errors.Join(errs...)
}

// labAlive reports whether the process that created lab id still runs.
func labAlive(id string) bool {
	b, err := os.ReadFile(filepath.Join(registryDir, id))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return false
	}
	_, err = os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// CommandError is a failed external command with its output.
type CommandError struct {
	Args   []string
	Output string
	Err    error
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("natlab: %s: %v: %s", strings.Join(e.Args, " "), e.Err, strings.TrimSpace(e.Output))
}

func (e *CommandError) Unwrap() error { return e.Err }

func output(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	if err := cmd.Run(); err != nil {
		return buf.String(), &CommandError{Args: args, Output: buf.String(), Err: err}
	}
	return buf.String(), nil
}

func run(ctx context.Context, args ...string) error {
	_, err := output(ctx, args...)
	return err
}

// runInput runs a command with stdin.
func runInput(ctx context.Context, stdin string, args ...string) error {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	if err := cmd.Run(); err != nil {
		return &CommandError{Args: args, Output: buf.String() + "\n--- input ---\n" + stdin, Err: err}
	}
	return nil
}

// sysctl sets key/value pairs inside ns.
func sysctl(ctx context.Context, ns string, kv ...string) error {
	args := []string{"ip", "netns", "exec", ns, "sysctl", "-q", "-w"}
	for i := 0; i+1 < len(kv); i += 2 {
		args = append(args, kv[i]+"="+kv[i+1])
	}
	return run(ctx, args...)
}
