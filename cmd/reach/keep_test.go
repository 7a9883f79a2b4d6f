package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/stream"
)

// safeBuffer is a bytes.Buffer a child's stdout copier writes while the
// test reads it.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// TestListenKeep: `reach listen --keep` serves dialler after dialler:
// three in a row, then three at once, each exits 0 and its bytes reach
// the listener's stdout whole (never interleaved with another's); the
// listener's stdin ("greeting") goes to the first dialler and the others
// get the end of data at once; a dialler interrupted midway is logged and
// the next one is served; Ctrl-C ends the listener with exit 130.
func TestListenKeep(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	lisKey, lisID := ncKey(t, "lis")
	out := &safeBuffer{}
	lis := startProc(t, strings.NewReader("greeting\n"), out, bin, "listen", "--keep", "--json", "--key", lisKey, "--server", cs)
	lis.stderr.wait(t, "serving ", 15*time.Second)

	payload := func() []byte {
		b := make([]byte, 256<<10)
		rand.Read(b)
		return b
	}
	dial := func(in []byte) *proc {
		key, _ := ncKey(t, "dial")
		return startProc(t, bytes.NewReader(in), &safeBuffer{}, bin, "dial", "--key", key, "--server", cs, lisID.String())
	}
	var sent [][]byte
	for i := range 3 {
		p := payload()
		d := dial(p)
		if code := d.exit(t, 30*time.Second); code != 0 {
			t.Fatalf("dialler %d exited %d", i, code)
		}
		got := d.cmd.Stdout.(*safeBuffer).Bytes()
		want := ""
		if i == 0 {
			want = "greeting\n"
		}
		if string(got) != want {
			t.Errorf("dialler %d read %q from the listener, want %q", i, got, want)
		}
		sent = append(sent, p)
	}

	// An interrupted dialler: the listener logs it and goes on.
	inR, inW := osPipe(t)
	key, _ := ncKey(t, "quitter")
	quitter := startProc(t, inR, io.Discard, bin, "dial", "--json", "--key", key, "--server", cs, lisID.String())
	connectedStrategy(t, quitter.stderr)
	partial := []byte("a partial line from the quitter\n")
	inW.Write(partial)
	time.Sleep(300 * time.Millisecond)
	quitter.cmd.Process.Signal(syscall.SIGINT)
	if code := quitter.exit(t, 5*time.Second); code != exitInterrupted {
		t.Errorf("the interrupted dialler exited %d", code)
	}
	lis.stderr.waitFor(t, "failed after", 5*time.Second)

	var wg sync.WaitGroup
	for range 3 {
		p := payload()
		sent = append(sent, p)
		d := dial(p)
		wg.Go(func() {
			if code := d.exit(t, 60*time.Second); code != 0 {
				t.Errorf("a concurrent dialler exited %d", code)
			}
		})
	}
	wg.Wait()
	lis.cmd.Process.Signal(syscall.SIGINT)
	if code := lis.exit(t, 5*time.Second); code != exitInterrupted {
		t.Errorf("listen --keep exited %d on SIGINT, want %d", code, exitInterrupted)
	}

	// stdout is the payloads whole, one after another, with the quitter's
	// partial line between the third and the fourth.
	rest := out.Bytes()
	total := len(partial)
	for _, p := range sent {
		total += len(p)
	}
	if len(rest) != total {
		t.Errorf("listener wrote %d bytes, want %d", len(rest), total)
	}
	for i := range 3 {
		if !bytes.HasPrefix(rest, sent[i]) {
			t.Fatalf("dialler %d's bytes are not next on stdout", i)
		}
		rest = rest[len(sent[i]):]
	}
	if !bytes.HasPrefix(rest, partial) {
		t.Fatalf("the quitter's partial line is not next on stdout")
	}
	rest = rest[len(partial):]
	concurrent := sent[3:]
	for len(rest) > 0 && len(concurrent) > 0 {
		found := false
		for i, p := range concurrent {
			if bytes.HasPrefix(rest, p) {
				rest = rest[len(p):]
				concurrent = append(concurrent[:i:i], concurrent[i+1:]...)
				found = true
				break
			}
		}
		if !found {
			t.Fatalf("stdout has %d bytes that are not a concurrent dialler's payload, whole", len(rest))
		}
	}

	var done, failed int
	for _, line := range strings.Split(lis.stderr.String(), "\n") {
		var ev struct {
			Event    string
			Received int64
			Error    *string
		}
		if json.Unmarshal([]byte(line), &ev) != nil || ev.Event != "dialler_done" {
			continue
		}
		if ev.Error != nil {
			failed++
		} else {
			done++
		}
	}
	if done != 6 || failed != 1 {
		t.Errorf("dialler_done events: %d without error, %d with one; want 6 and 1", done, failed)
	}
}

// TestListenBusy: a plain `reach listen` serves one dialler; a second one
// that comes meanwhile fails at once (exit 1, "serves another dialler")
// instead of having its data taken and dropped, and the first one's
// bytes arrive intact.
func TestListenBusy(t *testing.T) {
	bin := reachBinary(t)
	cs := ncServer(t)
	lisKey, lisID := ncKey(t, "lis")
	lisIn, lisInW := osPipe(t)
	out := &safeBuffer{}
	lis := startProc(t, lisIn, out, bin, "listen", "--key", lisKey, "--server", cs)
	lis.stderr.wait(t, "listening ", 15*time.Second)

	firstIn, firstInW := osPipe(t)
	key1, _ := ncKey(t, "first")
	first := startProc(t, firstIn, io.Discard, bin, "dial", "--json", "--key", key1, "--server", cs, lisID.String())
	connectedStrategy(t, first.stderr)
	firstInW.Write([]byte("from the first\n"))

	key2, _ := ncKey(t, "second")
	second := startProc(t, strings.NewReader("from the second\n"), io.Discard, bin, "dial", "--key", key2, "--server", cs, lisID.String())
	if code := second.exit(t, 15*time.Second); code != exitError {
		t.Errorf("the second dialler exited %d, want %d", code, exitError)
	}
	if s := second.stderr.String(); !strings.Contains(s, "serves another dialler") {
		t.Errorf("the second dialler said:\n%s", s)
	}
	firstInW.Close()
	lisInW.Close()
	if code := first.exit(t, 15*time.Second); code != 0 {
		t.Errorf("the first dialler exited %d", code)
	}
	if code := lis.exit(t, 15*time.Second); code != 0 {
		t.Errorf("listen exited %d", code)
	}
	if got := string(out.Bytes()); got != "from the first\n" {
		t.Errorf("listener wrote %q, want the first dialler's line only", got)
	}
}

// TestListenKeepFlood: one peer opens 200 streams at once to a `reach
// listen --keep`: the listener serves them in turn, at most 64 wait
// (Config.AcceptQueue) and the rest are refused. No stream is lost
// silently: each one either ends cleanly and its line is on the
// listener's stdout, or fails with an error. Over QUIC (direct) and
// TLS+yamux (direct-tcp), whose refusals are yamux RSTs carrying the
// code.
func TestListenKeepFlood(t *testing.T) {
	for _, strategy := range []string{"direct", "direct-tcp"} {
		t.Run(strategy, func(t *testing.T) { testListenKeepFlood(t, strategy) })
	}
}

func testListenKeepFlood(t *testing.T, strategy string) {
	bin := reachBinary(t)
	cs := ncServer(t)
	lisKey, lisID := ncKey(t, "lis")
	out := &safeBuffer{}
	lis := startProc(t, nil, out, bin, "listen", "--keep", "--key", lisKey, "--server", cs)
	lis.stderr.wait(t, "serving ", 15*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	key, _ := ncKey(t, "flood")
	k, _, err := identity.LoadOrCreateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	n, err := reach.New(ctx, reach.Config{Servers: []string{cs}, Key: k, Logger: testLogger(t), Strategies: []string{strategy}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Abort()
	sess, err := n.DialSession(ctx, lisID)
	if err != nil {
		t.Fatal(err)
	}
	if sess.Strategy() != strategy {
		t.Fatalf("session by %s, want %s", sess.Strategy(), strategy)
	}
	const streams = 200
	errs := make([]error, streams)
	var wg sync.WaitGroup
	for i := range streams {
		c, err := sess.OpenStream(ctx)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		wg.Go(func() {
			defer c.Close()
			if _, err := fmt.Fprintf(c, "stream %d\n", i); err != nil {
				errs[i] = err
				return
			}
			if err := c.CloseWrite(); err != nil {
				errs[i] = err
				return
			}
			_, errs[i] = io.ReadAll(c)
		})
	}
	wg.Wait()
	lis.cmd.Process.Signal(syscall.SIGINT)
	if code := lis.exit(t, 10*time.Second); code != exitInterrupted {
		t.Errorf("listen --keep exited %d on SIGINT", code)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(string(out.Bytes()), "\n") {
		lines[l] = true
	}
	var served, refused int
	for i, err := range errs {
		line := fmt.Sprintf("stream %d", i)
		switch {
		case err == nil && !lines[line]:
			t.Errorf("stream %d ended cleanly but its line is not on stdout: lost silently", i)
		case err == nil:
			served++
		case lines[line]:
			t.Errorf("stream %d was served (its line is on stdout) but failed: %v", i, err)
		default:
			refused++
		}
	}
	t.Logf("%d streams served, %d refused; first refusal: %v", served, refused, firstErr(errs))
	for _, err := range errs {
		if err != nil && !errors.Is(err, stream.ErrPeerRefused) {
			t.Errorf("a stream failed with %v, want ErrPeerRefused", err)
			break
		}
	}
	if served < 64 || refused == 0 {
		t.Errorf("%d served, %d refused: want at least the 64 of the accept queue served and some refused", served, refused)
	}
}

func firstErr(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
