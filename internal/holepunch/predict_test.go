package holepunch

import (
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
)

// seqOffer is an introduction from a dialler behind a sequential
// symmetric NAT (on loopback, so the pings stay on this machine).
func seqOffer(peer identity.PeerID, attempt uint64, kind string) candidate.PeerInfo {
	return candidate.PeerInfo{Peer: peer, Attempt: attempt, PunchKey: NewKey(), Mapping: candidate.MappingVaries,
		Ports:      &candidate.PortAllocation{Kind: kind, Step: 1, Last: 30000},
		Candidates: []candidate.Candidate{{Addr: netip.MustParseAddrPort("127.0.0.1:29999"), Kind: candidate.Reflexive}}}
}

func remotesOf(a *Attempt) []netip.AddrPort {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]netip.AddrPort(nil), a.remotes...)
}

// TestPredictionCap: a listener punches a sequential dialler's next ports
// (30001 on), never more than candidate.MaxPredictPorts however many its
// limits ask for, and all its pings together stay within the attempt's
// packet budget; none with prediction off or for a random allocation.
func TestPredictionCap(t *testing.T) {
	const budget = 60
	r := newTestRung(t, Limits{PredictPorts: 1000, AttemptPackets: budget})
	k, _ := identity.GenerateKey()
	r.Introduced(seqOffer(k.ID(), 1, candidate.AllocSequential))
	at := r.Manager().Lookup(1)
	if at == nil {
		t.Fatal("no attempt")
	}
	rem := remotesOf(at)
	if len(rem) != 1+candidate.MaxPredictPorts {
		t.Fatalf("%d addresses punched, want the reflexive one and %d predicted: %v", len(rem), candidate.MaxPredictPorts, rem)
	}
	for i, a := range rem[1:] {
		if a.Port() != uint16(30001+i) {
			t.Fatalf("predicted %v, want ports from 30001 in sequence", rem[1:])
		}
	}
	time.Sleep(EarlyPhase + 300*time.Millisecond)
	if sent := at.Sent(); sent > budget || sent < len(rem) {
		t.Fatalf("%d pings to %d addresses, want each pinged and at most %d in all", sent, len(rem), budget)
	}

	off := newTestRung(t, Limits{PredictPorts: -1})
	off.Introduced(seqOffer(k.ID(), 2, candidate.AllocSequential))
	r.Introduced(seqOffer(k.ID(), 3, candidate.AllocRandom))
	for _, a := range []*Attempt{off.Manager().Lookup(2), r.Manager().Lookup(3)} {
		if a == nil || len(remotesOf(a)) != 1 {
			t.Fatalf("prediction off or a random NAT: want only the reflexive address punched")
		}
	}
	def := newTestRung(t, Limits{})
	def.Introduced(seqOffer(k.ID(), 4, candidate.AllocSequential))
	if a := def.Manager().Lookup(4); a == nil || len(remotesOf(a)) != 1+candidate.DefaultPredictPorts {
		t.Fatalf("default: want %d predicted ports", candidate.DefaultPredictPorts)
	}
}

// TestPredictionDetail: what a dialler's session says about prediction.
func TestPredictionDetail(t *testing.T) {
	seq := &candidate.PortAllocation{Kind: candidate.AllocSequential, Step: 1, Last: 20000}
	p := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.5:20001"), netip.MustParseAddrPort("203.0.113.5:20002")}
	them := candidate.PeerInfo{Mapping: candidate.MappingVaries, Ports: seq}
	us := candidate.PeerInfo{Mapping: candidate.MappingIndependent}
	for _, tc := range []struct {
		local, remote candidate.PeerInfo
		predicted     []netip.AddrPort
		won           netip.AddrPort
		want          string
	}{
		{us, them, p, p[1], "port prediction: the peer's NAT allocates ports sequential +1; punched its next 2 ports, and port 20002 answered"},
		{us, them, p, netip.MustParseAddrPort("203.0.113.5:4000"), "port prediction: the peer's NAT allocates ports sequential +1; punched its next 2 ports"},
		{them, us, nil, p[0], "port prediction: our NAT allocates ports sequential +1; the peer punched our next ports"},
		{us, us, nil, p[0], ""},
	} {
		if got := predictionDetail(tc.local, tc.remote, tc.predicted, tc.won); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

// TestPredictedPingsLimitedTTL: pings to a predicted port carry the
// limited TTL (they must not reach the peer's router) until the port
// answers; then they go at full TTL, like the pings to advertised
// addresses all along.
func TestPredictedPingsLimitedTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := &ttlSock{fakeSock: newFakeSock(), ttls: map[netip.AddrPort][]int{}}
		m := NewManager(fs, nil)
		defer m.Close()
		key := NewKey()
		refl := netip.MustParseAddrPort("198.51.100.7:20000")
		pred := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:20001"), netip.MustParseAddrPort("198.51.100.7:20002")}
		a, err := m.Start(Params{Attempt: 1, Key: key, Role: RoleDialer, Remote: []netip.AddrPort{refl},
			Predicted: pred, PredictTTL: 2, Budget: DefaultAttemptPackets})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		time.Sleep(500 * time.Millisecond)
		if fs.count(refl) == 0 || len(fs.primers(refl)) != 0 {
			t.Fatalf("advertised address: %d full, %d limited pings", fs.count(refl), len(fs.primers(refl)))
		}
		for _, p := range pred {
			if len(fs.primers(p)) == 0 || fs.count(p) != 0 {
				t.Fatalf("predicted %v: %d limited, %d full-TTL pings before it answered", p, len(fs.primers(p)), fs.count(p))
			}
		}
		// The peer's ping arrives from the second predicted port.
		fs.h((&packet{typ: typePing, role: RoleListener, attempt: 1, txid: 9}).marshal(key), pred[1])
		time.Sleep(500 * time.Millisecond)
		if fs.count(pred[1]) < 2 { // the pong, then pings
			t.Fatalf("answered predicted port: %d full-TTL packets after it answered", fs.count(pred[1]))
		}
		if fs.count(pred[0]) != 0 {
			t.Fatalf("silent predicted port got %d full-TTL pings", fs.count(pred[0]))
		}
	})
}
