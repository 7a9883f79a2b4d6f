//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// nspawnUnit is dist/systemd/reach-server.service running in a throwaway
// systemd container (systemd-nspawn --volatile: the host's /usr, a fresh
// tmpfs root, systemd as PID 1), on the host's network.
type nspawnUnit struct {
	bin, metrics string
	cmd          *exec.Cmd
	console      bytes.Buffer
	done         chan error
}

// needNspawn skips (fails under REACH_LAB_REQUIRED) where the unit cannot
// be booted: not root, or no systemd or systemd-nspawn.
func needNspawn(t *testing.T) {
	t.Helper()
	why := ""
	switch {
	case os.Geteuid() != 0:
		why = "not root"
	case !fileExists("/usr/lib/systemd/systemd"):
		why = "no /usr/lib/systemd/systemd"
	default:
		if _, err := exec.LookPath("systemd-nspawn"); err != nil {
			why = "no systemd-nspawn (Debian: apt-get install systemd-container)"
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("REACH_LAB_REQUIRED") == "1" {
		t.Fatalf("cannot boot the systemd unit but REACH_LAB_REQUIRED=1: %s", why)
	}
	t.Skipf("cannot boot the systemd unit: %s", why)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// bootUnit boots a container whose systemd starts the project's unit,
// with only ExecStart changed: the test's binary and free loopback ports.
func bootUnit(t *testing.T, udp, metrics int) *nspawnUnit {
	t.Helper()
	bin := reachBinary(t)
	unit, err := os.ReadFile("../../dist/systemd/reach-server.service")
	if err != nil {
		t.Fatal(err)
	}
	const binIn = "/opt/reach/reach"
	execLine := fmt.Sprintf("ExecStart=%s server --listen 127.0.0.1:%d --tls-port 0 --stun-alt-port %d --metrics 127.0.0.1:%d",
		binIn, udp, freePort(t), metrics)
	var lines []string
	n := 0
	for _, l := range strings.Split(string(unit), "\n") {
		if strings.HasPrefix(l, "ExecStart=/usr/local/bin/reach ") {
			l = execLine
			n++
		}
		lines = append(lines, l)
	}
	if n != 1 {
		t.Fatalf("the unit has %d ExecStart lines to replace, want 1", n)
	}
	dir := t.TempDir()
	unitFile := filepath.Join(dir, "reach-server.service")
	if err := os.WriteFile(unitFile, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	// The container's first boot (an empty /etc) enables units by preset:
	// none here but the one the test wants. (Without a private network
	// nspawn withholds CAP_NET_ADMIN, so nothing in it could reconfigure
	// the host's network anyway.)
	preset := filepath.Join(dir, "00-reach-test.preset")
	if err := os.WriteFile(preset, []byte("disable *\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	machine := fmt.Sprintf("reach-unit-%d", os.Getpid())
	u := &nspawnUnit{bin: binIn, metrics: fmt.Sprintf("127.0.0.1:%d", metrics), done: make(chan error, 1)}
	// --keep-unit --register=no: no systemd (nor D-Bus) on the host to
	// ask for a scope or register the machine with.
	u.cmd = exec.Command("systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "--console=pipe",
		"--volatile=yes", "--directory=/", "--machine="+machine,
		"--bind-ro="+bin+":"+binIn, "--bind-ro="+unitFile+":/etc/systemd/system/reach-server.service",
		"--bind-ro="+preset+":/etc/systemd/system-preset/00-reach-test.preset",
		"--boot", "systemd.wants=reach-server.service")
	u.cmd.Stdout, u.cmd.Stderr = &u.console, &u.console
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { u.done <- u.cmd.Wait() }()
	t.Cleanup(func() {
		u.cmd.Process.Kill() // no-op once halted
		<-u.done
		// nspawn leaves this behind when /run is not a tmpfs.
		os.RemoveAll("/run/systemd/nspawn/propagate/" + machine)
		if t.Failed() {
			t.Logf("container console:\n%s", u.console.String())
		}
	})
	return u
}

// healthy waits until the server's /healthz answers ok.
func (u *nspawnUnit) healthy(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	c := http.Client{Timeout: time.Second}
	for {
		resp, err := c.Get("http://" + u.metrics + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-u.done:
			t.Fatalf("the container ended before the server was healthy: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz not ok within %v: %v", within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pid finds the unit's server process.
func (u *nspawnUnit) pid(t *testing.T) int {
	t.Helper()
	p := u.pidOrZero()
	if p == 0 {
		t.Fatal("the server process is not running")
	}
	return p
}

// procStatus reads the named fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// connectString derives the server's connect string from the key in its
// state directory, read through the process's own root.
func connectString(t *testing.T, pid, udp int) (string, []byte) {
	t.Helper()
	path := fmt.Sprintf("/proc/%d/root/var/lib/reach/server.key", pid)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the key is not in StateDirectory: %v", err)
	}
	k, err := identity.LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return rendezvous.ServerAddr{ID: k.ID(), Host: "127.0.0.1", Port: uint16(udp)}.String(), raw
}

// relayedEcho registers a listener and a relay-only dialler with cs and
// echoes a message between them: rendezvous and relay work.
func relayedEcho(t *testing.T, cs, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lis := metricsNode(t, "lis", cs)
	dialer := metricsNode(t, "dialer", cs, reach.StrategyRelay)
	go func() {
		st, err := lis.Accept(ctx)
		if err != nil {
			return
		}
		io.Copy(st, st)
		st.Close()
	}()
	conn := echo(t, ctx, dialer, lis.ID(), msg)
	if s := conn.Session().Strategy(); s != reach.StrategyRelay {
		t.Fatalf("strategy %q, want relay", s)
	}
	conn.Close()
	lis.Close()
	dialer.Close()
}

// TestSystemdUnitBoots boots dist/systemd/reach-server.service under
// systemd (PID 1 of a throwaway container) and checks what the unit
// promises: the server answers /healthz and serves peers (a relayed echo)
// under the unit's sandbox, runs as a dynamic non-root user with only
// CAP_NET_BIND_SERVICE, no new privileges and a seccomp filter, keeps
// its key in StateDirectory across a crash that Restart=on-failure
// recovers from (same connect string), and stops when systemd halts.
func TestSystemdUnitBoots(t *testing.T) {
	needNspawn(t)
	if testing.Short() {
		t.Skip("boots a container")
	}
	udp := freePort(t)
	start := time.Now()
	u := bootUnit(t, udp, freePort(t))
	u.healthy(t, time.Minute)
	t.Logf("unit healthy %v after the container started", time.Since(start).Round(time.Millisecond))

	pid := u.pid(t)
	st := procStatus(t, pid)
	uid, _ := strconv.Atoi(strings.Fields(st["Uid"])[0])
	// DynamicUser= picks a UID in 61184–65519.
	if uid < 61184 || uid > 65519 {
		t.Errorf("runs as UID %d, want a dynamic user (61184-65519)", uid)
	}
	const netBindService = "0000000000000400" // CAP_NET_BIND_SERVICE (10) alone
	for _, f := range []string{"CapEff", "CapPrm", "CapBnd", "CapAmb"} {
		if st[f] != netBindService {
			t.Errorf("%s = %s, want %s (CAP_NET_BIND_SERVICE only)", f, st[f], netBindService)
		}
	}
	if st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
		t.Errorf("NoNewPrivs %s, Seccomp %s; want 1 and 2 (a filter)", st["NoNewPrivs"], st["Seccomp"])
	}
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if !strings.Contains(string(env), "STATE_DIRECTORY=/var/lib/reach\x00") {
		t.Error("STATE_DIRECTORY is not /var/lib/reach")
	}
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/root/usr/.reach-probe", pid), nil, 0o600); err == nil {
		t.Error("the server's /usr is writable (ProtectSystem=strict)")
	}

	cs, key := connectString(t, pid, udp)
	relayedEcho(t, cs, "under systemd")

	// A crash: systemd starts it again after RestartSec, with the same key.
	syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p := u.pidOrZero(); p != 0 && p != pid {
			pid = p
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not restarted within 30s of a crash")
		}
		time.Sleep(100 * time.Millisecond)
	}
	u.healthy(t, 30*time.Second)
	cs2, key2 := connectString(t, pid, udp)
	if cs2 != cs || !bytes.Equal(key, key2) {
		t.Fatalf("after the restart: %s, want %s (the same key)", cs2, cs)
	}
	relayedEcho(t, cs2, "after a restart")

	// systemd halts: it stops the server (SIGTERM) and the container ends.
	u.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-u.done:
		u.done <- err // for Cleanup
		if err != nil {
			t.Errorf("the container did not halt cleanly: %v", err)
		}
	case <-time.After(45 * time.Second):
		t.Fatal("the container did not halt within 45s")
	}
	if p := u.pidOrZero(); p != 0 {
		t.Errorf("the server (pid %d) outlived the container", p)
	}
}

// pidOrZero finds the unit's server process (its binary's path in the
// container and its metrics address are ours alone), zero if none.
func (u *nspawnUnit) pidOrZero() int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if args := strings.Split(string(cl), "\x00"); args[0] == u.bin && strings.Contains(string(cl), u.metrics) {
			return pid
		}
	}
	return 0
}
