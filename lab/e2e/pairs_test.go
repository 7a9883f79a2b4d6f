package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// echoOnce accepts one stream on n and echoes it back until EOF.
func echoOnce(n *reach.Node) <-chan error {
	done := make(chan error, 1)
	go func() {
		c, err := n.Accept(context.Background())
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		if _, err := io.Copy(c, c); err != nil {
			done <- err
			return
		}
		done <- c.CloseWrite()
	}()
	return done
}

// roundTrip sends size random bytes on c while reading the echo, and checks
// that what came back is what was sent.
func roundTrip(c *reach.Stream, size int) error {
	data := make([]byte, size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return fmt.Errorf("reading echo after %d bytes: %w", n, err)
	}
	if err := <-werr; err != nil {
		return err
	}
	want := sha256.Sum256(data)
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("echo: got %d bytes, sha mismatch=%v", n, !bytes.Equal(h.Sum(nil), want[:]))
	}
	return nil
}

type pairResult struct {
	strategy string
	path     string
	elapsed  time.Duration
}

// connectPair starts a node on each host, dials from a to b, moves size
// bytes both ways, and returns what won.
func connectPair(t *testing.T, cs string, a, b *natlab.Host, size int, cfg reach.Config) pairResult {
	t.Helper()
	cfg.Servers = []string{cs}
	na := reachlab.NewNode(t, a, cfg)
	nb := reachlab.NewNode(t, b, cfg)
	echoed := echoOnce(nb)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	sess, err := na.DialSession(ctx, nb.ID())
	if err != nil {
		t.Fatalf("dial %s -> %s: %v", a.Name(), b.Name(), err)
	}
	el := time.Since(start)
	c, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, size); err != nil {
		t.Fatalf("%s -> %s over %s: %v", a.Name(), b.Name(), sess.Strategy(), err)
	}
	if err := <-echoed; err != nil {
		t.Fatalf("echo side: %v", err)
	}
	return pairResult{sess.Strategy(), sess.RemoteAddr().String(), el}
}

// TestLabPairs: peers behind every pair of {open, full cone, restricted,
// port-restricted, double NAT} connect with holepunch or direct, never
// anything slower; 10 MB move both ways intact. The listener's kind decides
// which: an open listener is reached direct, any NAT'd one by holepunch.
func TestLabPairs(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := l.AddPublicHost(ctx, "srv")
	if err != nil {
		t.Fatal(err)
	}
	_, cs := reachlab.StartServer(t, srv)
	kinds := []natlab.Kind{natlab.Open, natlab.Kind(natlab.FullCone), natlab.Kind(natlab.RestrictedCone), natlab.Kind(natlab.PortRestricted), natlab.KindDouble}
	sites := map[string]*natlab.Site{}
	for i, k := range kinds {
		for _, side := range []string{"a", "b"} {
			s, err := l.AddSite(ctx, fmt.Sprintf("k%d%s", i, side), k)
			if err != nil {
				t.Fatal(err)
			}
			sites[fmt.Sprintf("%d%s", i, side)] = s
		}
	}
	table := "\n"
	for i := range kinds {
		for j := i; j < len(kinds); j++ {
			a, b := sites[fmt.Sprintf("%da", i)], sites[fmt.Sprintf("%db", j)]
			name := fmt.Sprintf("%s->%s", kinds[i], kinds[j])
			t.Run(name, func(t *testing.T) {
				r := connectPair(t, cs, a.Host, b.Host, 10<<20, reach.Config{})
				want := reach.StrategyHolepunch
				if b.Kind == natlab.Open {
					want = reach.StrategyDirect
				}
				table += fmt.Sprintf("%-36s %-10s %-22s %v\n", name, r.strategy, r.path, r.elapsed.Round(time.Millisecond))
				if r.strategy != want {
					t.Errorf("strategy %s, want %s", r.strategy, want)
				}
			})
		}
	}
	t.Log(table)
}

// TestLabSymmetric: a peer behind a symmetric NAT connects directly (hole
// punched, no relay) to peers behind full-cone and restricted-cone NATs,
// in both directions: the cone side learns the symmetric side's
// peer-reflexive address from its checks.
func TestLabSymmetric(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, _ := l.AddPublicHost(ctx, "srv")
	_, cs := reachlab.StartServer(t, srv)
	sym, err := l.AddSite(ctx, "sym", natlab.Kind(natlab.Symmetric))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []natlab.Kind{natlab.Kind(natlab.FullCone), natlab.Kind(natlab.RestrictedCone)} {
		other, err := l.AddSite(ctx, string(k)[:4], k)
		if err != nil {
			t.Fatal(err)
		}
		t.Run("symmetric->"+string(k), func(t *testing.T) {
			r := connectPair(t, cs, sym.Host, other.Host, 1<<20, reach.Config{})
			if r.strategy != reach.StrategyHolepunch {
				t.Errorf("strategy %s, want holepunch", r.strategy)
			}
		})
		t.Run(string(k)+"->symmetric", func(t *testing.T) {
			r := connectPair(t, cs, other.Host, sym.Host, 1<<20, reach.Config{})
			if r.strategy != reach.StrategyHolepunch {
				t.Errorf("strategy %s, want holepunch", r.strategy)
			}
		})
	}
}

// TestLabSameLAN: two peers behind one NAT without hairpinning connect over
// their LAN addresses.
func TestLabSameLAN(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, _ := l.AddPublicHost(ctx, "srv")
	_, cs := reachlab.StartServer(t, srv)
	rt, err := l.AddRouter(ctx, natlab.RouterConfig{Name: "home", NAT: natlab.PortRestricted, Hairpin: false})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := rt.AddHost(ctx, "lana")
	b, err := rt.AddHost(ctx, "lanb")
	if err != nil {
		t.Fatal(err)
	}
	r := connectPair(t, cs, a, b, 10<<20, reach.Config{})
	if r.strategy != reach.StrategyDirect {
		t.Errorf("strategy %s, want direct", r.strategy)
	}
	if want := b.Addr().String(); len(r.path) < len(want) || r.path[:len(want)] != want {
		t.Errorf("path %s, want b's LAN address %s", r.path, want)
	}
}
