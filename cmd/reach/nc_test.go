package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// The binary, built once for the tests of this file.
var (
	ncOnce sync.Once
	ncDir  string
	ncBin  string
	ncErr  error
)

func TestMain(m *testing.M) {
	// reach server keeps its key in a default directory (the real home's,
	// or /var/lib/reach as root): keep the tests' servers out of both.
	stateDir := ""
	if os.Getenv("STATE_DIRECTORY") == "" {
		var err error
		if stateDir, err = os.MkdirTemp("", "reach-server-state"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Setenv("STATE_DIRECTORY", stateDir)
	}
	// Commands a test runs without --key (send, recv) use the default
	// key in the user's config directory: a temporary one, never the
	// real home's.
	configDir, err := os.MkdirTemp("", "reach-config")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("XDG_CONFIG_HOME", configDir)
	code := m.Run()
	os.RemoveAll(configDir)
	if ncDir != "" {
		os.RemoveAll(ncDir)
	}
	if stateDir != "" {
		os.RemoveAll(stateDir)
	}
	os.Exit(code)
}

func reachBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	ncOnce.Do(func() {
		if ncDir, ncErr = os.MkdirTemp("", "reach-nc-test"); ncErr != nil {
			return
		}
		ncBin = filepath.Join(ncDir, "reach")
		args := []string{"build", "-o", ncBin}
		if os.Getenv("REACH_TEST_RACE") != "" {
			// The commands the tests run, with the race detector: a
			// race makes them exit 66 with "WARNING: DATA RACE".
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			ncErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if ncErr != nil {
		t.Fatal(ncErr)
	}
	return ncBin
}

// ncServer runs rendezvous, STUN and the relay on loopback, in process,
// until the test ends, and returns its connect string.
func ncServer(t *testing.T) string {
	t.Helper()
	rs, _ := loopbackServer(t)
	return rs.ConnectString()
}

// loopbackServer is ncServer's server and relay.
func loopbackServer(t *testing.T) (*rendezvous.RunningServer, *relay.Server) {
	t.Helper()
	rl := relay.NewServer(relay.ServerConfig{Logger: testLogger(t).With("part", "relay")})
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
		Logger:    testLogger(t).With("part", "server"),
		Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl},
	}, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs, rl
}

// ncKey makes a key file and returns its path and peer ID.
func ncKey(t *testing.T, name string) (string, identity.PeerID) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".key")
	k, _, err := identity.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, k.ID()
}

// proc is a reach command running on this host; it is killed when the
// test ends.
type proc struct {
	cmd    *exec.Cmd
	stderr *lineWatcher
	done   chan struct{}
	err    error // after done
}

func startProc(t *testing.T, stdin io.Reader, stdout io.Writer, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	// A config directory of its own: its default key, never the user's.
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir())
	return startCmd(t, cmd, stdin, stdout)
}

// startCmd starts cmd as startProc does.
func startCmd(t *testing.T, cmd *exec.Cmd, stdin io.Reader, stdout io.Writer) *proc {
	t.Helper()
	p := &proc{cmd: cmd, done: make(chan struct{})}
	p.cmd.WaitDelay = 2 * time.Second // stdin copying must not hold Wait
	p.cmd.Stdin = stdin
	p.cmd.Stdout = stdout
	pr, pw := io.Pipe()
	p.cmd.Stderr = pw
	p.stderr = watch(pr)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		t.Logf("%s stderr:\n%s", strings.Join(p.cmd.Args[:2], " "), p.stderr)
	})
	return p
}

// exit waits at most d for the process to end and returns its exit code.
func (p *proc) exit(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s did not exit within %v; stderr:\n%s", strings.Join(p.cmd.Args[:2], " "), d, p.stderr)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// osPipe is an os.Pipe closed when the test ends: a child gets the file
// itself, so nothing copies and its end is seen at once.
func osPipe(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// pacedReader yields size pseudo-random bytes at about rate bytes per
// second, hashing what it hands out.
type pacedReader struct {
	left, sent int64
	rate       float64
	start      time.Time
	rnd        *rand.ChaCha8
	sum        hash.Hash
}

func newPacedReader(size int64, rate float64) *pacedReader {
	return &pacedReader{left: size, rate: rate, rnd: rand.NewChaCha8([32]byte{1}), sum: sha256.New()}
}

func (r *pacedReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if r.start.IsZero() {
		r.start = time.Now()
	}
	n := int(min(int64(len(p)), 64<<10, r.left))
	if wait := time.Until(r.start.Add(time.Duration(float64(r.sent) / r.rate * float64(time.Second)))); wait > 0 {
		time.Sleep(wait)
	}
	r.rnd.Read(p[:n])
	r.sum.Write(p[:n])
	r.sent += int64(n)
	r.left -= int64(n)
	return n, nil
}

// countingHash is an io.Writer that hashes and counts.
type countingHash struct {
	n   int64
	sum hash.Hash
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.sum.Write(p)
}

// connectedStrategy reads the strategy of dial --json's "connected" event.
func connectedStrategy(t *testing.T, w *lineWatcher) string {
	t.Helper()
	line := w.wait(t, `{"elapsed_ms"`, 30*time.Second)
	var ev struct{ Event, Strategy string }
	if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Event != "connected" {
		t.Fatalf("connected event %q: %v", line, err)
	}
	return ev.Strategy
}

// TestListenHalfClosed: `reach listen > out </dev/null` half-closes at
// once; `producer | reach dial PEER` still delivers all of a 100 MiB
// stream paced over 20 s, directly and through the relay: both exit 0 and
// the listener's output has the producer's SHA-256.
func TestListenHalfClosed(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	for _, strategy := range []string{"direct", "relay"} {
		t.Run(strategy, func(t *testing.T) {
			t.Parallel()
			lisKey, lisID := ncKey(t, "lis")
			dialKey, _ := ncKey(t, "dial")
			got := &countingHash{sum: sha256.New()}
			lis := startProc(t, nil, got, bin, "listen", "--key", lisKey, "--server", cs)
			lis.stderr.wait(t, "listening ", 15*time.Second)
			const size = 100 << 20
			src := newPacedReader(size, 5e6)
			var dialOut bytes.Buffer
			dial := startProc(t, src, &dialOut, bin, "dial", "--json", "--strategies", strategy,
				"--key", dialKey, "--server", cs, lisID.String())
			if s := connectedStrategy(t, dial.stderr); s != strategy {
				t.Fatalf("strategy %q, want %q", s, strategy)
			}
			if code := dial.exit(t, 90*time.Second); code != 0 {
				t.Fatalf("dial exited %d", code)
			}
			if code := lis.exit(t, 15*time.Second); code != 0 {
				t.Fatalf("listen exited %d", code)
			}
			if got.n != size || !bytes.Equal(got.sum.Sum(nil), src.sum.Sum(nil)) {
				t.Fatalf("listener wrote %d bytes, SHA-256 %x; dialler read %d, SHA-256 %x",
					got.n, got.sum.Sum(nil), src.sent, src.sum.Sum(nil))
			}
			if dialOut.Len() != 0 {
				t.Errorf("dialler printed %d bytes, want none (the listener's stdin is empty)", dialOut.Len())
			}
		})
	}
}

// TestInterruptTellsPeer: Ctrl-C (SIGINT) on either side of an idle
// listen/dial pair ends that side with exit 130 and "interrupted", and the
// other side within 1 s (not at its idle timeout) with exit 3 and "the
// peer was interrupted".
func TestInterruptTellsPeer(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	for _, strategy := range []string{"direct", "relay"} {
		for _, victim := range []string{"dial", "listen"} {
			t.Run(strategy+"/"+victim, func(t *testing.T) {
				t.Parallel()
				lisKey, lisID := ncKey(t, "lis")
				dialKey, _ := ncKey(t, "dial")
				// Both stdins stay open: neither side would end by itself.
				lisIn, _ := osPipe(t)
				dialIn, dialInW := osPipe(t)
				lisOutR, lisOutW := osPipe(t)
				lisOut := watch(lisOutR)
				lis := startProc(t, lisIn, lisOutW, bin, "listen", "--key", lisKey, "--server", cs)
				lis.stderr.wait(t, "listening ", 15*time.Second)
				dial := startProc(t, dialIn, io.Discard, bin, "dial", "--json", "--strategies", strategy,
					"--key", dialKey, "--server", cs, lisID.String())
				if s := connectedStrategy(t, dial.stderr); s != strategy {
					t.Fatalf("strategy %q, want %q", s, strategy)
				}
				go io.WriteString(dialInW, "hello\n")
				lisOut.wait(t, "hello", 10*time.Second)

				hit, other := dial, lis
				if victim == "listen" {
					hit, other = lis, dial
				}
				signalled := time.Now()
				if err := hit.cmd.Process.Signal(syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
				if code := other.exit(t, time.Second); code != exitPeerGone {
					t.Errorf("the other side exited %d, want %d", code, exitPeerGone)
				}
				t.Logf("the other side exited %v after the SIGINT", time.Since(signalled).Round(time.Millisecond))
				if code := hit.exit(t, 5*time.Second); code != exitInterrupted {
					t.Errorf("the interrupted side exited %d, want %d", code, exitInterrupted)
				}
				if s := hit.stderr.String(); !strings.Contains(s, "reach: interrupted") {
					t.Errorf("the interrupted side said:\n%s", s)
				}
				if s := other.stderr.String(); !strings.Contains(s, "the peer was interrupted") {
					t.Errorf("the other side said:\n%s", s)
				}
			})
		}
	}
}
