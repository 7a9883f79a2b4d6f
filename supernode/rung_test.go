package supernode

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// testHost is a node's host on a loopback socket (as in
// internal/ladder's tests); observed is what its server saw (invalid:
// none), signalling whether it has servers.
func testHost(t *testing.T, signalling bool, observed netip.AddrPort) *rung.Host {
	t.Helper()
	s, err := sock.Listen(sock.Config{Addr: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		s.Close()
	})
	server := serverAddr(t, 4900)
	return &rung.Host{
		Key: mustKey(t), Socket: s, Logger: testLogger(t),
		Context: ctx, Go: func(f func()) { wg.Go(f) }, Local: true, Signalling: signalling,
		InterfaceAddrs: func() ([]net.Addr, error) { return nil, nil },
		Server:         func() rendezvous.ServerAddr { return server },
		Observed:       func() netip.AddrPort { return observed },
		Accepted:       func(*stream.Session) bool { return false },
		Event:          func(rung.Event) {},
	}
}

func newRung(t *testing.T, h *rung.Host, cfg Config) *Rung {
	t.Helper()
	r := NewRung(h, cfg)
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

var (
	srflx = candidate.Candidate{Kind: candidate.Reflexive, Addr: netip.MustParseAddrPort("203.0.113.5:4900")}
	lan   = candidate.Candidate{Kind: candidate.Host, Addr: netip.MustParseAddrPort("10.0.0.5:4900")}
)

func volunteerCand(t testing.TB) candidate.Candidate {
	return candidate.Candidate{Kind: candidate.Supernode, Addr: netip.MustParseAddrPort("198.51.100.9:4901"),
		Peer: mustKey(t).ID(), Token: "1:x"}
}

func TestRungPlan(t *testing.T) {
	r := newRung(t, testHost(t, true, netip.MustParseAddrPort("203.0.113.1:4900")), Config{})
	vol := volunteerCand(t)
	noPeer := vol
	noPeer.Peer = identity.PeerID{}
	for _, tc := range []struct {
		name  string
		cands []candidate.Candidate
		keep  bool
	}{
		{"reflexive and volunteer", []candidate.Candidate{lan, srflx, vol}, true},
		{"volunteer, no reflexive (peer over TCP)", []candidate.Candidate{lan, vol}, false},
		{"reflexive, no volunteer", []candidate.Candidate{lan, srflx}, false},
		{"reflexive, volunteer without key", []candidate.Candidate{srflx, noPeer}, false},
		{"nothing", nil, false},
	} {
		a := &rung.Attempt{Remote: candidate.PeerInfo{Candidates: tc.cands}}
		hs, keep := r.Plan(a, 700*time.Millisecond)
		if keep != tc.keep {
			t.Errorf("%s: Plan keeps the rung = %v, want %v", tc.name, keep, tc.keep)
		}
		if keep && hs != 700*time.Millisecond {
			t.Errorf("%s: Plan head start = %v, want the table's 700ms", tc.name, hs)
		}
	}
}

func TestRungConnectNoVolunteer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// A peer's answer without volunteers.
	r := newRung(t, testHost(t, true, netip.MustParseAddrPort("203.0.113.1:4900")), Config{})
	a := &rung.Attempt{Remote: candidate.PeerInfo{Candidates: []candidate.Candidate{lan, srflx}}}
	if sess, err := r.Connect(ctx, a); !errors.Is(err, ErrNoVolunteer) || sess != nil {
		t.Errorf("Connect without volunteers = %v, %v; want ErrNoVolunteer", sess, err)
	}
	// A node without servers has no pool: volunteers in the answer do
	// not help.
	r2 := newRung(t, testHost(t, false, netip.AddrPort{}), Config{})
	a2 := &rung.Attempt{Remote: candidate.PeerInfo{Candidates: []candidate.Candidate{srflx, volunteerCand(t)}}}
	if sess, err := r2.Connect(ctx, a2); !errors.Is(err, ErrNoVolunteer) || sess != nil {
		t.Errorf("Connect without servers = %v, %v; want ErrNoVolunteer", sess, err)
	}
}

func TestRungOffer(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		signalling bool
		observed   netip.AddrPort
		want       bool
	}{
		{"servers, UDP works", true, netip.MustParseAddrPort("203.0.113.1:4900"), true},
		{"servers over TCP (no observed UDP)", true, netip.AddrPort{}, false},
		{"no servers", false, netip.AddrPort{}, false},
	} {
		r := newRung(t, testHost(t, tc.signalling, tc.observed), Config{})
		var offer candidate.PeerInfo
		if release := r.Offer(ctx, &offer); release != nil {
			release()
		}
		if offer.WantSupernodes != tc.want {
			t.Errorf("%s: offer asks for supernodes = %v, want %v", tc.name, offer.WantSupernodes, tc.want)
		}
	}
}

func TestRungVolunteerSetup(t *testing.T) {
	// Without Enable: no relay handler, no offer, not admitted.
	off := newRung(t, testHost(t, true, netip.AddrPort{}), Config{})
	if h := off.Handlers(); len(h) != 0 {
		t.Errorf("Handlers without Enable = %v, want none", h)
	}
	var cc rendezvous.ClientConfig
	off.Signalling(&cc)
	if cc.Volunteer != nil || cc.OnVolunteer != nil {
		t.Errorf("Signalling without Enable set Volunteer=%+v OnVolunteer set=%v", cc.Volunteer, cc.OnVolunteer != nil)
	}
	if st := off.Status(); st.Volunteering || st.Admitted {
		t.Errorf("Status without Enable = %+v", st)
	}

	// With Enable: the relay ALPN is served and the offer goes out with
	// the default limit.
	on := newRung(t, testHost(t, true, netip.AddrPort{}), Config{Enable: true})
	if h := on.Handlers(); len(h) != 1 || h[relay.ALPN] == nil {
		t.Errorf("Handlers with Enable = %v, want %q only", h, relay.ALPN)
	}
	on.Signalling(&cc)
	if cc.Volunteer == nil || cc.Volunteer.MaxSessions != 8 || cc.OnVolunteer == nil {
		t.Fatalf("Signalling with Enable: Volunteer=%+v OnVolunteer set=%v", cc.Volunteer, cc.OnVolunteer != nil)
	}
	// The verdicts the client reports reach the rung's Status (for the
	// host's current server).
	obs := netip.MustParseAddrPort("198.51.100.7:4900")
	cc.OnVolunteer(rendezvous.VolunteerStatus{Server: on.h.Server(), Admitted: true, Observed: obs, Secret: secret(0)})
	if st := on.Status(); !st.Volunteering || !st.Admitted || st.Observed != obs || st.Err != nil {
		t.Errorf("Status after admission = %+v", st)
	}
}

func TestRungWait(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// Without Enable, or without servers: not admitted, at once.
	for name, r := range map[string]*Rung{
		"no Enable":  newRung(t, testHost(t, true, netip.AddrPort{}), Config{}),
		"no servers": newRung(t, testHost(t, false, netip.AddrPort{}), Config{Enable: true}),
	} {
		start := time.Now()
		if _, err := r.Wait(ctx); !errors.Is(err, rendezvous.ErrNotAdmitted) {
			t.Errorf("%s: Wait = %v, want ErrNotAdmitted", name, err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("%s: Wait took %v", name, d)
		}
	}

	// With Enable: Wait blocks until the verdict; a refusal is its error.
	r := newRung(t, testHost(t, true, netip.AddrPort{}), Config{Enable: true})
	var cc rendezvous.ClientConfig
	r.Signalling(&cc)
	done := make(chan error, 1)
	go func() {
		_, err := r.Wait(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v before any verdict", err)
	case <-time.After(50 * time.Millisecond):
	}
	cc.OnVolunteer(rendezvous.VolunteerStatus{Server: r.h.Server(), Err: &rendezvous.VolunteerError{Code: "unreachable"}})
	select {
	case err := <-done:
		var ve *rendezvous.VolunteerError
		if !errors.Is(err, rendezvous.ErrNotAdmitted) || !errors.As(err, &ve) || ve.Code != "unreachable" {
			t.Errorf("Wait after a refusal = %v, want the *VolunteerError (ErrNotAdmitted)", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Wait still blocked after the verdict")
	}

	// Admitted: no error, the status carries the observed address.
	r2 := newRung(t, testHost(t, true, netip.AddrPort{}), Config{Enable: true})
	r2.Signalling(&cc)
	obs := netip.MustParseAddrPort("198.51.100.7:4900")
	cc.OnVolunteer(rendezvous.VolunteerStatus{Server: r2.h.Server(), Admitted: true, Observed: obs, Secret: secret(0)})
	if st, err := r2.Wait(ctx); err != nil || !st.Admitted || st.Observed != obs {
		t.Errorf("Wait after admission = %+v, %v", st, err)
	}
}
