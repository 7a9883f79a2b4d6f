package rendezvous

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
)

// serveDialBack accepts (and closes) connections with VolunteerALPN on tr,
// as a volunteer's node listener does, until the test ends.
func serveDialBack(t *testing.T, tr *quic.Transport, key *identity.Key) {
	t.Helper()
	tlsCfg, err := identity.ServerTLSConfig(key, VolunteerALPN)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tr.Listen(tlsCfg, &quic.Config{EnableDatagrams: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			qc, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			qc.CloseWithError(0, "")
		}
	})
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
}

// verdicts collects a client's VolunteerStatus reports.
func verdicts(cfg *ClientConfig, offer VolunteerOffer) chan VolunteerStatus {
	ch := make(chan VolunteerStatus, 8)
	cfg.Volunteer = &offer
	cfg.OnVolunteer = func(s VolunteerStatus) { ch <- s }
	return ch
}

func waitVerdict(t *testing.T, ch chan VolunteerStatus) VolunteerStatus {
	t.Helper()
	select {
	case s := <-ch:
		t.Logf("verdict: admitted=%v observed=%v err=%v", s.Admitted, s.Observed, s.Err)
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no VOLUNTEERED within 10s")
	}
	return VolunteerStatus{}
}

// TestSupernodeAdmission: a volunteer that answers the dial-back is
// admitted and handed to a pair that asks, with tokens that check only
// for their holder; one that does not answer is refused (unreachable); one
// registered over TCP is refused (no_udp); the registry forgets a
// volunteer that disconnects.
func TestSupernodeAdmission(t *testing.T) {
	rs := startTestServer(t, ServerConfig{Supernodes: SupernodeConfig{DialBackTimeout: time.Second}})
	servers := []ServerAddr{rs.ServerAddr()}

	vk, vtr := mustKey(t), newTransport(t)
	serveDialBack(t, vtr, vk)
	var vcfg []clientOpt
	var admitted chan VolunteerStatus
	vcfg = append(vcfg, func(c *ClientConfig) { admitted = verdicts(c, VolunteerOffer{MaxSessions: 4}) })
	vc := startClient(t, "volunteer", vk, servers, vtr, vcfg...)
	st := waitVerdict(t, admitted)
	if !st.Admitted || st.Observed != vc.Observed() || len(st.Secret) != 32 {
		t.Fatalf("verdict %+v, want admitted at %v with a secret", st, vc.Observed())
	}

	// A volunteer without a listener does not complete the dial-back.
	var refused chan VolunteerStatus
	startClient(t, "deaf", mustKey(t), servers, newTransport(t), func(c *ClientConfig) { refused = verdicts(c, VolunteerOffer{}) })
	if st := waitVerdict(t, refused); st.Admitted || !errors.Is(st.Err, ErrNotAdmitted) || st.Err.(*VolunteerError).Code != codeUnreachable {
		t.Fatalf("deaf volunteer: %+v", st)
	}
	// Over TCP there is no address to dial back.
	var tcpRefused chan VolunteerStatus
	startClient(t, "tcp", mustKey(t), servers, nil, forceTCP, func(c *ClientConfig) { tcpRefused = verdicts(c, VolunteerOffer{}) })
	if st := waitVerdict(t, tcpRefused); st.Admitted || st.Err.(*VolunteerError).Code != codeNoUDP {
		t.Fatalf("TCP volunteer: %+v", st)
	}
	if v := rs.Volunteers(); len(v) != 1 || v[0] != vk.ID() {
		t.Fatalf("volunteers %v, want only %s", v, vk.ID().Short())
	}

	// A pair that asks gets the volunteer, with a token each.
	ak, bk := mustKey(t), mustKey(t)
	a := startClient(t, "a", ak, servers, newTransport(t))
	b := startClient(t, "b", bk, servers, newTransport(t))
	var offered PeerInfo
	var wg sync.WaitGroup
	wg.Go(func() {
		in := <-b.Incoming()
		offered = in.Offer
		in.Accept(PeerInfo{})
	})
	ans, err := a.Connect(testCtx(t, 5*time.Second), bk.ID(), PeerInfo{WantSupernodes: true,
		Candidates: []Candidate{{Addr: vc.Observed(), Kind: Supernode, Peer: ak.ID(), Token: "forged"}}})
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	check := func(who string, info PeerInfo, holder identity.PeerID) {
		var sn []Candidate
		for _, c := range info.Candidates {
			if c.Kind == Supernode {
				sn = append(sn, c)
			}
		}
		if len(sn) != 1 || sn[0].Peer != vk.ID() || sn[0].Addr != st.Observed {
			t.Fatalf("%s: supernode candidates %+v", who, sn)
		}
		if err := CheckSupernodeToken(st.Secret, holder, sn[0].Token, time.Now()); err != nil {
			t.Fatalf("%s: token: %v", who, err)
		}
		if err := CheckSupernodeToken(st.Secret, vk.ID(), sn[0].Token, time.Now()); !errors.Is(err, ErrBadSupernodeToken) {
			t.Fatalf("%s: token checks for another peer: %v", who, err)
		}
		if err := CheckSupernodeToken(st.Secret, holder, sn[0].Token, time.Now().Add(time.Hour)); !errors.Is(err, ErrSupernodeTokenExpired) {
			t.Fatalf("%s: token after its expiry: %v", who, err)
		}
	}
	check("answer to the dialler", ans, ak.ID())
	check("offer to the target", offered, bk.ID())

	// Without asking, no volunteers.
	wg.Go(func() {
		in := <-b.Incoming()
		in.Accept(PeerInfo{})
	})
	ans, err = a.Connect(testCtx(t, 5*time.Second), bk.ID(), PeerInfo{})
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range ans.Candidates {
		if c.Kind == Supernode {
			t.Fatalf("supernode candidate without asking: %+v", c)
		}
	}

	vc.Close()
	waitFor(t, "the volunteer to be forgotten", func() bool { return len(rs.Volunteers()) == 0 })
}

// TestSupernodeAllowList: a volunteer with an allow-list is handed only to
// pairs that are both on it.
func TestSupernodeAllowList(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	servers := []ServerAddr{rs.ServerAddr()}
	ak, bk, ck := mustKey(t), mustKey(t), mustKey(t)
	vk, vtr := mustKey(t), newTransport(t)
	serveDialBack(t, vtr, vk)
	var ch chan VolunteerStatus
	startClient(t, "volunteer", vk, servers, vtr, func(c *ClientConfig) {
		ch = verdicts(c, VolunteerOffer{Allow: []identity.PeerID{ak.ID(), bk.ID()}})
	})
	if st := waitVerdict(t, ch); !st.Admitted {
		t.Fatal(st.Err)
	}
	if f, to := rs.pickSupernodes(ak.ID(), bk.ID()); len(f) != 1 || len(to) != 1 {
		t.Fatalf("allowed pair got %d/%d volunteers", len(f), len(to))
	}
	if f, _ := rs.pickSupernodes(ak.ID(), ck.ID()); len(f) != 0 {
		t.Fatalf("pair with a stranger got %d volunteers", len(f))
	}
}

// TestSupernodeRankingHostile: a volunteer that declares an enormous
// capacity is believed only up to MaxDeclared, so it does not win every
// introduction over an honest one; and introductions to unknown peers do
// not count as load on anybody (they used to be counted before the target
// was looked up).
func TestSupernodeRankingHostile(t *testing.T) {
	rs := startTestServer(t, ServerConfig{Supernodes: SupernodeConfig{DialBackTimeout: time.Second, PerIntro: 1, MaxDeclared: 4}})
	servers := []ServerAddr{rs.ServerAddr()}
	volunteer := func(name string, capacity int) *identity.Key {
		k, tr := mustKey(t), newTransport(t)
		serveDialBack(t, tr, k)
		var ch chan VolunteerStatus
		startClient(t, name, k, servers, tr, func(c *ClientConfig) { ch = verdicts(c, VolunteerOffer{MaxSessions: capacity}) })
		if st := waitVerdict(t, ch); !st.Admitted {
			t.Fatalf("%s not admitted: %+v", name, st)
		}
		return k
	}
	hostile := volunteer("hostile", 1_000_000)
	honest := volunteer("honest", 4)
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	// Dials to peers that do not exist: no volunteer is handed out.
	for range 20 {
		if _, err := a.Connect(testCtx(t, 5*time.Second), mustKey(t).ID(), PeerInfo{WantSupernodes: true}); !errors.Is(err, ErrUnknownPeer) {
			t.Fatalf("dial to nobody: %v, want ErrUnknownPeer", err)
		}
	}
	bk := mustKey(t)
	b := startClient(t, "b", bk, servers, newTransport(t))
	answerAll(t, b)
	got := map[identity.PeerID]int{}
	for range 8 {
		ans, err := a.Connect(testCtx(t, 5*time.Second), bk.ID(), PeerInfo{WantSupernodes: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range ans.Volunteers() {
			got[c.Peer]++
		}
	}
	t.Logf("8 introductions: hostile (declares 1,000,000) handed %d, honest (4) handed %d", got[hostile.ID()], got[honest.ID()])
	if got[honest.ID()] < 3 {
		t.Errorf("honest volunteer handed %d of 8 introductions, want its share (the hostile one may not take them all)", got[honest.ID()])
	}
}
