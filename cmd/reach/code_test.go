package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach/shortcode"
)

// sendWithCode starts reach send of a random file with --json and returns
// the process, the file's bytes and the code from its ticket event.
func sendWithCode(t *testing.T, bin, cs string, flags ...string) (*proc, []byte, string) {
	t.Helper()
	data := make([]byte, 1<<20+3)
	rand.Read(data)
	src := filepath.Join(t.TempDir(), "payload.bin")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	key, _ := ncKey(t, "send")
	outR, outW := osPipe(t)
	args := append([]string{"send", "--json", "--server", cs, "--key", key}, flags...)
	send := startProc(t, nil, outW, bin, append(args, src)...)
	line := watch(outR).wait(t, `{"bytes":`, 30*time.Second)
	var ev struct {
		Event, Code, Ticket string
		CodeTTLMS           int64 `json:"code_ttl_ms"`
	}
	if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Event != "ticket" || ev.Code == "" {
		t.Fatalf("ticket event %q: %v", line, err)
	}
	if _, err := shortcode.Parse(ev.Code); err != nil {
		t.Fatalf("code %q: %v", ev.Code, err)
	}
	return send, data, ev.Code
}

// TestSendRecvCode: reach recv takes the short code reach send printed:
// the bytes arrive intact. A code with the right number and wrong words
// fails (wrong code, attempts left) and a used code fails (used), each
// with exit 1 and its own message; so does one that does not parse.
func TestSendRecvCode(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	send, data, code := sendWithCode(t, bin, cs)

	c, _ := shortcode.Parse(code)
	c.Words[0] = (c.Words[0] + 1) % (1 << shortcode.WordBits)
	_, errOut, exit := runReach(t, nil, "recv", "--yes", "--server", cs, "--out", t.TempDir(), c.String())
	if exit != exitError || !strings.Contains(errOut, "wrong code") || !strings.Contains(errOut, "2 attempts left") {
		t.Errorf("wrong code: exit %d, %q", exit, errOut)
	}
	dir := t.TempDir()
	if _, _, exit := runReach(t, nil, "recv", "--yes", "--server", cs, "--out", dir, strings.ToUpper(code)); exit != 0 {
		t.Fatalf("recv with the code: exit %d", exit)
	}
	got, err := os.ReadFile(filepath.Join(dir, "payload.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("received %d bytes, %v; want the %d sent", len(got), err, len(data))
	}
	if exit := send.exit(t, 15*time.Second); exit != 0 {
		t.Errorf("send exited %d", exit)
	}
	_, errOut, exit = runReach(t, nil, "recv", "--yes", "--server", cs, "--out", t.TempDir(), code)
	if exit != exitError || !strings.Contains(errOut, "used already") {
		t.Errorf("used code: exit %d, %q", exit, errOut)
	}
	_, errOut, exit = runReach(t, nil, "recv", "--yes", "--server", cs, "7-kato-bira-zemu")
	if exit != exitError || !strings.Contains(errOut, `"zemu" is not one of its words`) {
		t.Errorf("malformed code: exit %d, %q", exit, errOut)
	}
}

// TestSendRecvCodeExpired: a code not claimed within --code-ttl fails
// with "expired", while the sender still serves the ticket.
func TestSendRecvCodeExpired(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	_, _, code := sendWithCode(t, bin, cs, "--code-ttl", "1s")
	time.Sleep(1500 * time.Millisecond)
	_, errOut, exit := runReach(t, nil, "recv", "--yes", "--server", cs, "--out", t.TempDir(), code)
	if exit != exitError || !strings.Contains(errOut, "code expired") {
		t.Errorf("expired code: exit %d, %q", exit, errOut)
	}
}

// TestSendTicketOnceOnTerminal: on a terminal (script(1) gives send a
// pty for stdout and stderr) the ticket shows once, in the message; with
// stdout redirected it is also alone on stdout, for scripts.
func TestSendTicketOnceOnTerminal(t *testing.T) {
	bin := reachBinary(t)
	if _, err := exec.LookPath("script"); err != nil {
		t.Skip("needs script(1) for a pty")
	}
	cs := ncServer(t)
	src := filepath.Join(t.TempDir(), "f.txt")
	os.WriteFile(src, []byte("hello\n"), 0o600)
	key, _ := ncKey(t, "send")
	outR, outW := osPipe(t)
	cmd := exec.Command("script", "-qfec", strings.Join([]string{bin, "send", "--server", cs, "--key", key, src}, " "), "/dev/null")
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir())
	p := startCmd(t, cmd, nil, outW)
	out := watch(outR)
	out.waitFor(t, "reach recv reachsend_", 15*time.Second)
	time.Sleep(500 * time.Millisecond) // a second copy would follow at once
	p.cmd.Process.Kill()
	if n := strings.Count(out.String(), "reachsend_"); n != 1 {
		t.Errorf("the ticket shows %d times on a terminal, want once:\n%s", n, out)
	}

	<-p.done

	// On a terminal with stderr redirected (2>log), the terminal still
	// shows the ticket.
	errLog := filepath.Join(t.TempDir(), "stderr.log")
	outR2, outW2 := osPipe(t)
	cmd2 := exec.Command("script", "-qfec", strings.Join([]string{bin, "send", "--server", cs, "--key", key, src, "2>" + errLog}, " "), "/dev/null")
	cmd2.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir())
	p2 := startCmd(t, cmd2, nil, outW2)
	out2 := watch(outR2)
	out2.waitFor(t, "reachsend_", 15*time.Second)
	p2.cmd.Process.Kill()
	<-p2.done

	// Redirected, stdout holds the ticket alone.
	sr, sw := osPipe(t)
	send := startProc(t, nil, sw, bin, "send", "--server", cs, "--key", key, src)
	line := watch(sr).wait(t, "", 15*time.Second)
	if !strings.HasPrefix(line, "reachsend_") || strings.ContainsAny(line, " \t") {
		t.Errorf("stdout's first line %q, want the ticket alone", line)
	}
	send.cmd.Process.Kill()
}
