package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestWalkthrough runs docs/walkthrough.sh, which runs README.md's "Two
// machines" commands on loopback and prints the transcript the README
// shows, and checks what a reader checks in it: the line alice's
// listen gets, the files verified, the sender's "has everything", and the
// web page through the forward that only bob may use.
func TestWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs five processes")
	}
	for _, tool := range []string{"bash", "curl", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("docs/walkthrough.sh needs %s: %v", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	local := freePort(t)
	cmd := exec.CommandContext(ctx, "bash", "../../docs/walkthrough.sh")
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", freePort(t)), fmt.Sprintf("WEB_PORT=%d", freePort(t)),
		fmt.Sprintf("LOCAL_PORT=%d", local))
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("docs/walkthrough.sh:\n%s", out)
	if err != nil {
		t.Fatalf("docs/walkthrough.sh: %v", err)
	}
	checkTranscript(t, out, "127.0.0.1", local)
}

// checkTranscript checks what a reader checks in docs/walkthrough.sh's
// transcript: the server's ready line (at serverIP), the line alice's
// listen gets, the files verified, the sender's "has everything", and the
// web page through the forward on local that only bob may use.
func checkTranscript(t *testing.T, out []byte, serverIP string, local int) {
	t.Helper()
	for _, re := range []string{
		`(?m)^reach server ready reach://[a-z2-7]{56}@` + regexp.QuoteMeta(serverIP) + `:\d+$`,
		`(?m)^listening [a-z2-7]{56}$`,
		`(?m)^bob\$ echo 'hello from bob' \| reach dial [a-z2-7]{56}\n\(exit 0\)$`,
		`(?m)^alice\$ cat notes.txt\nhello from bob$`,
		`(?m)^alice\$ reach recv --yes --out inbox \d+-[a-z]{4}-[a-z]{4}-[a-z]{4}$`,
		`(?m)^received 2 files, 4\.0 MiB in .*, verified$`,
		`(?m)^alice\$ ls inbox/photos\nbeach\.jpg\ndunes\.jpg$`,
		`(?m)^[a-z2-7]{10} has everything: sent 2 files, 4\.0 MiB in `,
		`(?m)^serving 1 allowed peer$`,
		fmt.Sprintf(`(?m)^forwarding 127\.0\.0\.1:%d -> [a-z2-7]{56}$`, local),
		`(?m)^bob\$ curl .*\nhello over reach$`,
	} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("the transcript has no match for %s", re)
		}
	}
	if strings.Contains(string(out), "reach: ") {
		t.Errorf("a command failed (a \"reach: \" line)")
	}
}
