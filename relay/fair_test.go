package relay_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
)

// TestRelayFairTable (issue 15): hostile links fill the relay's session
// table and keep sending, and an honest pair that comes later still gets
// its relayed session and echoes 1 MiB intact: in a full table a session
// from a smaller holder takes the place of one of the biggest holder's.
// The holders are compared by network (IPv4 /24) first, then by source
// within a network.
//
//   - four sources: each fills its MaxSessionsPerIP, and together the
//     table (the global-cap gap: 10 sources of 1024 fill the default
//     10,000);
//   - neighbour: one of them is in the honest pair's own /24;
//   - one network: 60 addresses of one /24, one session each, so that no
//     source holds more than the honest one will: only the network tier
//     finds the attacker.
func TestRelayFairTable(t *testing.T) {
	nets := func(prefix string, from, n int) []string {
		var ips []string
		for i := range n {
			ips = append(ips, fmt.Sprintf(prefix, from+i))
		}
		return ips
	}
	for _, c := range []struct {
		name     string
		ips      []string
		links    int
		ring     bool // each link sends to the next one only (one session each)
		max      int  // MaxSessions
		perIP    int  // MaxSessionsPerIP
		minEvict uint64
	}{
		{"four sources", nets("127.0.%d.10", 1, 4), 48, false, 300, 100, 2},
		{"neighbour", append([]string{"127.0.0.10"}, nets("127.0.%d.10", 1, 3)...), 48, false, 300, 100, 2},
		{"one network", nets("127.0.5.%d", 1, 60), 60, true, 50, 100, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			rs, rl := startServer(t, relay.ServerConfig{ConnRate: -1, MaxSessions: c.max, MaxSessionsPerIP: c.perIP})
			links, ids, refused := hostileLinks(t, rs.ServerAddr(), c.links, c.ips)
			if refused > 0 {
				t.Fatalf("%d hostile links refused", refused)
			}
			send := func() {
				for i, l := range links {
					if c.ring {
						l.Send(ids[(i+1)%len(ids)], []byte{1})
						continue
					}
					for j, id := range ids {
						if i != j {
							l.Send(id, []byte{1})
						}
					}
				}
			}
			send()
			time.Sleep(300 * time.Millisecond)
			send()
			time.Sleep(200 * time.Millisecond)
			full := rl.Metrics()
			t.Logf("hostile: %d links from %d sources, %d sessions (table %d); drops %v", len(links), len(c.ips), full.Sessions, c.max, full.Drops)
			if full.Sessions != c.max {
				t.Fatalf("the hostile links hold %d sessions, want the table full (%d)", full.Sessions, c.max)
			}
			// They go on sending, to take back what they lose.
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() {
				tk := time.NewTicker(100 * time.Millisecond)
				defer tk.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-tk.C:
						send()
					}
				}
			})
			defer wg.Wait()
			defer cancel()

			a := newNodeAt(t, rs.ConnectString(), "127.0.0.2")
			b := newNodeAt(t, rs.ConnectString(), "127.0.0.3")
			echo(b)
			dctx, dcancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer dcancel()
			start := time.Now()
			sess, err := a.DialSession(dctx, b.ID())
			if err != nil {
				t.Fatalf("honest pair: %v (metrics %+v)", err, rl.Metrics())
			}
			st, err := sess.OpenStream(dctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := roundTrip(st, 1<<20); err != nil {
				t.Fatalf("honest pair: %v", err)
			}
			st.Close()
			m := rl.Metrics()
			t.Logf("honest pair: relayed session and 1 MiB echoed intact in %v; sessions %d, evicted %d, drops %v",
				time.Since(start).Round(time.Millisecond), m.Sessions, m.Evicted, m.Drops)
			if m.Sessions > c.max {
				t.Errorf("%d sessions, table %d", m.Sessions, c.max)
			}
			if m.Evicted < c.minEvict {
				t.Errorf("evicted %d sessions, want at least %d (the honest pair's two)", m.Evicted, c.minEvict)
			}
			honest := map[identity.PeerID]bool{a.ID(): true, b.ID(): true}
			for _, ps := range rl.Peers() {
				if honest[ps.Peer] && ps.Sessions != 1 {
					t.Errorf("honest peer %s sends on %d sessions, want 1", ps.Peer.Short(), ps.Sessions)
				}
			}
		})
	}
}
