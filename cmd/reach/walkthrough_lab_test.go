//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

// TestWalkthroughLab runs docs/walkthrough.sh (README.md's "Two machines"
// commands) in the lab, each shell on a machine of its own: the server on
// a public address, alice and bob each behind a NAT of its own (no shared
// loopback, no shared LAN): port-restricted and full-cone (TestCLILab's
// pair: a hole punch), and both symmetric with random ports (nothing to
// punch or predict: the relay, as the lab matrix has it). README's
// commands do not say which path won; the transcript is checked as
// TestWalkthrough does.
func TestWalkthroughLab(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("docs/walkthrough.sh needs %s: %v", tool, err)
		}
	}
	for _, tc := range []struct {
		name       string
		alice, bob natlab.NAT
	}{
		{"port-restricted+full-cone", natlab.PortRestricted, natlab.FullCone},
		{"symmetric+symmetric", natlab.Symmetric, natlab.Symmetric},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := natlab.NewT(t)
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			srv, err := l.AddPublicHost(ctx, "srv")
			if err != nil {
				t.Fatal(err)
			}
			alice, err := l.AddSite(ctx, "alice", natlab.Kind(tc.alice))
			if err != nil {
				t.Fatal(err)
			}
			bob, err := l.AddSite(ctx, "bob", natlab.Kind(tc.bob))
			if err != nil {
				t.Fatal(err)
			}
			const local = 18080
			cmd := exec.CommandContext(ctx, "bash", "../../docs/walkthrough.sh")
			cmd.Env = append(os.Environ(), "PORT=4950", "WEB_PORT=18000", fmt.Sprintf("LOCAL_PORT=%d", local),
				"SERVER_IP="+srv.Addr().String(), "SERVER_NS="+srv.Namespace(),
				"ALICE_NS="+alice.Host.Namespace(), "BOB_NS="+bob.Host.Namespace())
			cmd.WaitDelay = 5 * time.Second
			start := time.Now()
			out, err := cmd.CombinedOutput()
			t.Logf("docs/walkthrough.sh in the lab, alice %s, bob %s (%v):\n%s", tc.alice, tc.bob,
				time.Since(start).Round(100*time.Millisecond), out)
			if err != nil {
				t.Fatalf("docs/walkthrough.sh: %v", err)
			}
			checkTranscript(t, out, srv.Addr().String(), local)
		})
	}
}
