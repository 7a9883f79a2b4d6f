package holepunch

import (
	"net/netip"
	"testing"
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
