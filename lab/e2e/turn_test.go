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
	s := reachlab.NewScenario(t, reachlab.ServerConfig{}) // rendezvous and STUN, no relay
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	th, err := s.AddPublicHost(ctx, "turn")
	if err != nil {
		t.Fatal(err)
	}
	ct, err := th.StartCoturn(ctx, natlab.CoturnConfig{Users: map[string]string{"alice": "wonderland"}, TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	rh, err := s.AddPublicHost(ctx, "turnrest")
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
	sa, sb := s.Pair(t, natlab.Kind(natlab.Symmetric), natlab.Kind(natlab.Symmetric))
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
			cfg := reach.Config{DisablePortMapping: true, UpgradeInterval: -1, TURN: []reach.TURNServer{tc.srv}}
			na := s.Node(t, sa.Host, cfg)
			nb := s.Node(t, sb.Host, cfg)
			reachlab.MustWaitFor(t, 5*time.Second, "TURN allocations on both nodes", func() bool {
				return na.Status().TURN.IsValid() && nb.Status().TURN.IsValid()
			})
			t.Logf("allocations: %s, %s", na.Status().TURN, nb.Status().TURN)
			reachlab.Echo(t, nb)
			sess := checkEcho(t, ctx, na, nb, 2<<20)
			if sess.Strategy() != reach.StrategyTURN {
				t.Fatalf("strategy %q, want turn", sess.Strategy())
			}
		})
	}
}
