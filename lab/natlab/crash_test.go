package natlab

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestCrashedRunLeftovers kills a process that owns a lab (SIGKILL: no
// cleanup runs) and checks that its namespaces are gone after the next New,
// so a crashed run cannot break the next one.
func TestCrashedRunLeftovers(t *testing.T) {
	if os.Getenv("NATLAB_CRASH_CHILD") == "1" {
		ctx := context.Background()
		l, err := New(ctx, Config{})
		if err != nil {
			os.Exit(3)
		}
		rt, err := l.AddRouter(ctx, RouterConfig{Name: "cr", NAT: Symmetric})
		if err != nil {
			os.Exit(4)
		}
		if _, err := rt.AddHost(ctx, "crh"); err != nil {
			os.Exit(5)
		}
		os.Stdout.WriteString("LAB " + l.ID() + "\n")
		time.Sleep(time.Minute) // stay alive until the parent kills us
		os.Exit(0)
	}
	Require(t)
	ctx := ctxT(t, time.Minute)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashedRunLeftovers$")
	cmd.Env = append(os.Environ(), "NATLAB_CRASH_CHILD=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var id string
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "LAB" {
			id = f[1]
			break
		}
	}
	if id == "" {
		cmd.Process.Kill()
		t.Fatalf("child did not build its lab: %v", cmd.Wait())
	}
	cmd.Process.Kill()
	cmd.Wait()
	prefix := Prefix + id + "-"
	if !nsExists(t, prefix+"cr") {
		t.Fatalf("the killed child's namespaces are not there; the test proves nothing")
	}
	l, err := New(ctx, Config{Logger: TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	list, _ := output(ctx, "ip", "netns", "list")
	if strings.Contains(list, prefix) {
		t.Fatalf("leftovers of the crashed lab survived New:\n%s", list)
	}
	// and the new lab works with the same names
	rt, err := l.AddRouter(ctx, RouterConfig{Name: "cr", NAT: Symmetric})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.AddHost(ctx, "crh"); err != nil {
		t.Fatal(err)
	}
}
