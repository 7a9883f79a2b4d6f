package e2e_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabTURN: two peers behind symmetric NATs (no UPnP), whose server has
// no relay, connect through coturn as their TURN relay: over UDP with
// long-term credentials, over TLS (5349, the lab's self-signed
// certificate trusted through RootCAs) and over TCP with REST-API
// credentials derived from coturn's shared secret. Data moves intact both
// ways and the session's rung is turn.
func TestLabTURN(t *testing.T) {
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	srv, err := l.AddPublicHost(ctx, "srv")
	if err != nil {
		t.Fatal(err)
	}
	_, cs := reachlab.StartServer(t, srv) // rendezvous and STUN, no relay
	th, err := l.AddPublicHost(ctx, "turn")
	if err != nil {
		t.Fatal(err)
	}
	ct, err := th.StartCoturn(ctx, natlab.CoturnConfig{Users: map[string]string{"alice": "wonderland"}, TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	rh, err := l.AddPublicHost(ctx, "turnrest")
	if err != nil {
		t.Fatal(err)
	}
	ctREST, err := rh.StartCoturn(ctx, natlab.CoturnConfig{Secret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("coturn log:\n%s\ncoturn (REST) log:\n%s", ct.Log(), ctREST.Log())
		}
	})
	sa, err := l.AddSite(ctx, "syma", natlab.Kind(natlab.Symmetric))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := l.AddSite(ctx, "symb", natlab.Kind(natlab.Symmetric))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ct.Certificate())
	for _, tc := range []struct {
		name string
		srv  reach.TURNServer
	}{
		{"udp", reach.TURNServer{URL: "turn:" + ct.Addr().String(), Username: "alice", Password: "wonderland"}},
		{"tls", reach.TURNServer{URL: "turns:" + ct.TLSAddr().String(), Username: "alice", Password: "wonderland", RootCAs: roots}},
		{"tcp-rest", reach.TURNServer{URL: "turn:" + ctREST.Addr().String() + "?transport=tcp", Secret: "s3cret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := reach.Config{Servers: []string{cs}, DisablePortMapping: true, UpgradeInterval: -1,
				TURN: []reach.TURNServer{tc.srv}}
			na := reachlab.NewNode(t, sa.Host, cfg)
			nb := reachlab.NewNode(t, sb.Host, cfg)
			for _, n := range []*reach.Node{na, nb} {
				for deadline := time.Now().Add(5 * time.Second); !n.Status().TURN.IsValid(); time.Sleep(20 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatal("no TURN allocation after 5s")
					}
				}
			}
			t.Logf("allocations: %s, %s", na.Status().TURN, nb.Status().TURN)
			echoed := echoOnce(nb)
			start := time.Now()
			sess, err := na.DialSession(ctx, nb.ID())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %s after %v", tc.name, sess.Strategy(), time.Since(start))
			if sess.Strategy() != reach.StrategyTURN {
				t.Fatalf("strategy %q, want turn", sess.Strategy())
			}
			c, err := sess.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := roundTrip(c, 2<<20); err != nil {
				t.Fatal(err)
			}
			if err := <-echoed; err != nil {
				t.Fatal(err)
			}
		})
	}
}
