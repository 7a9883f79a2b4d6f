package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
)

// runReach runs the binary with args (and env added to the environment,
// with a config directory of its own unless env sets one) and returns
// what it printed and its exit code; it fails the test after 30 s.
func runReach(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	bin := reachBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir(), "REACH_KEY=", "REACH_SERVER=")
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("reach %s did not exit within 30s; stderr:\n%s", strings.Join(args, " "), errb.String())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("reach %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out.String(), errb.String())
	return out.String(), errb.String(), code
}

// TestCLIHelp: reach --help, -h and help, and every command's --help and
// -h, print usage on stdout (the command's own: its usage line and its
// flags) and nothing on stderr, with exit 0.
func TestCLIHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		out, errOut, code := runReach(t, nil, args...)
		if code != 0 || !strings.HasPrefix(out, "usage: reach <command>") || errOut != "" {
			t.Errorf("reach %s: exit %d, stdout %q, stderr %q", args[0], code, out, errOut)
		}
		for _, c := range commands {
			if !strings.Contains(out, "\n  "+c.name+" ") {
				t.Errorf("reach %s does not list %s", args[0], c.name)
			}
		}
	}
	for _, c := range append(commands, command{name: "help"}) {
		for _, h := range []string{"--help", "-h"} {
			out, errOut, code := runReach(t, nil, c.name, h)
			if code != 0 || errOut != "" {
				t.Errorf("reach %s %s: exit %d, stderr %q", c.name, h, code, errOut)
			}
			if !strings.HasPrefix(out, "usage: reach ") {
				t.Errorf("reach %s %s: stdout does not start with a usage line: %q", c.name, h, out)
			}
			if c.name != "help" && c.name != "version" && c.name != "lab" && !strings.Contains(out, "\nFlags") {
				t.Errorf("reach %s %s lists no flags:\n%s", c.name, h, out)
			}
		}
	}
	out, _, code := runReach(t, nil, "help", "dial")
	if code != 0 || !strings.HasPrefix(out, "usage: reach dial [flags] PEER") || !strings.Contains(out, "-timeout duration") {
		t.Errorf("reach help dial: exit %d:\n%s", code, out)
	}
}

// TestCLIVersion: reach version and reach --version print the version and
// the Go version on stdout.
func TestCLIVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		out, errOut, code := runReach(t, nil, arg)
		if code != 0 || !strings.HasPrefix(out, "reach ") || !strings.Contains(out, runtime.Version()) || errOut != "" {
			t.Errorf("reach %s: exit %d, stdout %q, stderr %q", arg, code, out, errOut)
		}
	}
}

// TestCLIUsageErrors: an unknown command, an unknown flag, a missing
// argument: exit 2, the message naming it and a hint on stderr, nothing
// on stdout.
func TestCLIUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		want, hint string
	}{
		{[]string{"bogus"}, `reach: unknown command "bogus"`, "run 'reach --help'"},
		{[]string{"help", "bogus"}, `reach: unknown command "bogus"`, "run 'reach --help'"},
		{[]string{"--bogus"}, `reach: unknown flag "--bogus"`, "run 'reach --help'"},
		{[]string{"listen", "--bogus"}, "reach: unknown flag -bogus", "run 'reach listen --help'"},
		{[]string{"recv", "--max-size"}, "reach: flag needs an argument: -max-size", "run 'reach recv --help'"},
		{[]string{"ping", "--count", "x", "PEER"}, `reach: invalid value "x" for flag -count`, "run 'reach ping --help'"},
		{[]string{"dial"}, "reach: dial takes one PEER, got 0 arguments", "run 'reach dial --help'"},
		{[]string{"lab", "sideways"}, `reach: unknown lab command "sideways"`, "run 'reach lab --help'"},
		{nil, "usage: reach <command>", ""},
	} {
		out, errOut, code := runReach(t, nil, tc.args...)
		if code != exitUsage || out != "" || !strings.HasPrefix(errOut, tc.want) || !strings.Contains(errOut, tc.hint) {
			t.Errorf("reach %s: exit %d, stdout %q, stderr %q; want exit 2 and %q, %q on stderr",
				strings.Join(tc.args, " "), code, out, errOut, tc.want, tc.hint)
		}
	}
}

// TestCLIDefaultKey: without --key and REACH_KEY, reach id creates the
// default key in the config directory (0600 in a 0700 directory) and
// prints the same ID next time; REACH_KEY names another key file and
// --key wins over both; a key readable by others is refused in one line.
func TestCLIDefaultKey(t *testing.T) {
	cfg := t.TempDir()
	env := []string{"XDG_CONFIG_HOME=" + cfg}
	first, _, code := runReach(t, env, "id")
	if code != 0 {
		t.Fatalf("reach id exited %d", code)
	}
	id, err := identity.ParsePeerID(strings.TrimSpace(first))
	if err != nil {
		t.Fatalf("reach id printed %q: %v", first, err)
	}
	keyFile := filepath.Join(cfg, "reach", "key")
	for path, want := range map[string]os.FileMode{keyFile: 0o600, filepath.Dir(keyFile): 0o700} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: %v, %v; want mode %04o", path, st.Mode(), err, want)
		}
	}
	k, err := identity.LoadKey(keyFile)
	if err != nil || k.ID() != id {
		t.Errorf("the key file holds %v (%v), reach id said %s", k.ID(), err, id)
	}
	if again, _, _ := runReach(t, env, "id"); again != first {
		t.Errorf("second reach id printed %q, first %q", again, first)
	}

	other := filepath.Join(t.TempDir(), "other.key")
	viaEnv, _, code := runReach(t, append(env, "REACH_KEY="+other), "id")
	if code != 0 || viaEnv == first {
		t.Errorf("REACH_KEY: exit %d, %q (the default key is %q)", code, viaEnv, first)
	}
	if k, err := identity.LoadKey(other); err != nil || k.ID().String() != strings.TrimSpace(viaEnv) {
		t.Errorf("REACH_KEY's file: %v, %v; reach id said %q", k, err, viaEnv)
	}
	third := filepath.Join(t.TempDir(), "third.key")
	viaFlag, _, _ := runReach(t, append(env, "REACH_KEY="+other), "id", "--key", third)
	if viaFlag == viaEnv || viaFlag == first {
		t.Errorf("--key did not win: %q", viaFlag)
	}

	if err := os.Chmod(other, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runReach(t, append(env, "REACH_KEY="+other), "id")
	if code != exitError || out != "" || !strings.HasPrefix(errOut, "reach: ") || strings.Count(errOut, "\n") != 1 ||
		!strings.Contains(errOut, "chmod 600") {
		t.Errorf("a world-readable key: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestCLIOneLineError: dialling a peer the server never saw, and one
// that has gone, prints one line: "reach: ", what is wrong and the peer
// ID, no package prefixes; exit 1. With --json the error event comes too.
func TestCLIOneLineError(t *testing.T) {
	cs := ncServer(t)
	_, unknown := ncKey(t, "unknown")
	out, errOut, code := runReach(t, nil, "dial", "--server", cs, unknown.String())
	want := "reach: unknown peer " + unknown.String() + ": it has not registered with this server"
	if code != exitError || out != "" || !strings.HasPrefix(errOut, want) || strings.Count(errOut, "\n") != 1 ||
		strings.Contains(errOut, "rendezvous:") {
		t.Errorf("exit %d, stderr %q; want one line starting %q", code, errOut, want)
	}
	_, errOut, _ = runReach(t, nil, "dial", "--json", "--server", cs, unknown.String())
	if lines := strings.Split(strings.TrimSpace(errOut), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], `{"error":"unknown peer `) ||
		!strings.HasPrefix(lines[1], want) {
		t.Errorf("--json: stderr %q", errOut)
	}

	// A peer that registered, then went away.
	key, gone := ncKey(t, "gone")
	lisIn, _ := osPipe(t)
	lis := startProc(t, lisIn, nil, reachBinary(t), "listen", "--key", key, "--server", cs)
	lis.stderr.wait(t, "listening ", 15*time.Second)
	lis.cmd.Process.Signal(syscall.SIGTERM)
	lis.exit(t, 10*time.Second)
	_, errOut, code = runReach(t, nil, "dial", "--server", cs, gone.String())
	want = "reach: peer " + gone.String() + " is offline"
	if code != exitError || !strings.HasPrefix(errOut, want) || strings.Count(errOut, "\n") != 1 {
		t.Errorf("exit %d, stderr %q; want one line starting %q", code, errOut, want)
	}
}

// TestCLISameKey: a second reach listen with the same key takes the
// registration; the first says so in one line naming the peer ID and
// exits 1 (it does not sit offline unaware), and the second is the one
// dialled.
func TestCLISameKey(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	cfg := t.TempDir()
	id, _, _ := runReach(t, []string{"XDG_CONFIG_HOME=" + cfg}, "id")
	id = strings.TrimSpace(id)
	listen := func() *proc {
		in, _ := osPipe(t)
		c := exec.Command(bin, "listen", "--server", cs)
		c.Env = append(os.Environ(), "XDG_CONFIG_HOME="+cfg, "REACH_KEY=")
		return startCmd(t, c, in, nil)
	}
	first := listen()
	first.stderr.wait(t, "listening "+id, 15*time.Second)
	second := listen()
	second.stderr.wait(t, "listening "+id, 15*time.Second)
	if code := first.exit(t, 15*time.Second); code != exitError {
		t.Errorf("the first listener exited %d, want %d", code, exitError)
	}
	want := "reach: another process registered this key (peer ID " + id + "); this one is offline"
	if got := first.stderr.wait(t, "reach: ", time.Second); got != want {
		t.Errorf("the first listener said %q, want %q", got, want)
	}
	select {
	case <-second.done:
		t.Errorf("the second listener exited too:\n%s", second.stderr)
	default:
	}
}

// TestCLIDialBesideListen: on one machine, `reach listen` in one shell and
// `reach dial` in another, both with the default key: the dial takes a
// one-time key (and says so) instead of pushing the listener offline, and
// the bytes cross.
func TestCLIDialBesideListen(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	cfg := t.TempDir()
	env := append(os.Environ(), "XDG_CONFIG_HOME="+cfg, "REACH_KEY=", "REACH_SERVER=")
	id, _, _ := runReach(t, []string{"XDG_CONFIG_HOME=" + cfg}, "id")
	id = strings.TrimSpace(id)
	var got bytes.Buffer
	lc := exec.Command(bin, "listen", "--server", cs)
	lc.Env = env
	lis := startCmd(t, lc, strings.NewReader(""), &got)
	lis.stderr.wait(t, "listening "+id, 15*time.Second)
	dc := exec.Command(bin, "dial", "--server", cs, id)
	dc.Env = env
	dial := startCmd(t, dc, strings.NewReader("hello beside the listener\n"), io.Discard)
	if code := dial.exit(t, 30*time.Second); code != 0 {
		t.Fatalf("dial exited %d:\n%s", code, dial.stderr)
	}
	if note := dial.stderr.wait(t, "reach: the default key is in use", time.Second); !strings.Contains(note, "one-time key") {
		t.Errorf("dial said %q", note)
	}
	if code := lis.exit(t, 15*time.Second); code != 0 {
		t.Fatalf("listen exited %d:\n%s", code, lis.stderr)
	}
	if got.String() != "hello beside the listener\n" {
		t.Errorf("listener got %q", got.String())
	}
}

// TestCLINetcheckNoAnswer: netcheck with no server answering prints its
// report, whose verdict says relay only, and exits 1 with the reason.
func TestCLINetcheckNoAnswer(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0") // bound, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	out, errOut, code := runReach(t, nil, "netcheck", "--stun", pc.LocalAddr().String(), "--timeout", "1s", "--no-portmap")
	if code != exitError {
		t.Errorf("exit %d, want %d", code, exitError)
	}
	if !strings.Contains(out, "verdict:          relay only") {
		t.Errorf("report without the relay-only verdict:\n%s", out)
	}
	if !strings.HasPrefix(errOut, "reach: no server answered over UDP") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Errorf("stderr %q, want one line naming the cause", errOut)
	}
}
