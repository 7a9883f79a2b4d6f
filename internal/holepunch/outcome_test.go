package holepunch

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
)

// outcomes records a rung's listening-side punch outcomes.
type outcomes struct {
	mu sync.Mutex
	n  map[string]int
}

func recordOutcomes(r *Rung) *outcomes {
	o := &outcomes{n: map[string]int{}}
	r.h.ListenerPunch = func(s string) { o.mu.Lock(); o.n[s]++; o.mu.Unlock() }
	return o
}

func (o *outcomes) get(s string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[s]
}

func (o *outcomes) total() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, v := range o.n {
		n += v
	}
	return n
}

// waitOutcome waits until outcome o has been counted want times.
func waitOutcome(t *testing.T, rec *outcomes, o string, want int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for rec.get(o) < want {
		if time.Since(start) > within {
			t.Fatalf("%s counted %d times after %v, want %d", o, rec.get(o), within, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// TestListenerPunchOutcomes: every introduction that asks for a punch
// has the listening side's outcome counted once: heard as soon as the
// dialler's checks arrive (long before Linger ends), unheard when Linger
// ends in silence, skipped over the limits, no_candidates when no address
// of the dialler may be punched; one without a punch key is not counted.
func TestListenerPunchOutcomes(t *testing.T) {
	const linger = 300 * time.Millisecond
	r := newTestRung(t, Limits{PerPeer: 2})
	r.Linger = linger
	rec := recordOutcomes(r)
	listener := r.h.Socket.LocalAddr()

	// Heard: a dialler on another socket runs its side of the punch.
	dsock := loopSock(t)
	dm := NewManager(dsock, nil)
	t.Cleanup(dm.Close)
	dk, _ := identity.GenerateKey()
	key := NewKey()
	da, err := dm.Start(Params{Attempt: 1, Key: key, Role: RoleDialer, Remote: []netip.AddrPort{listener}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(da.Close)
	r.Introduced(candidate.PeerInfo{Peer: dk.ID(), Attempt: 1, PunchKey: key,
		Candidates: []candidate.Candidate{{Addr: dsock.LocalAddr(), Kind: candidate.Host}}})
	took := waitOutcome(t, rec, OutcomeHeard, 1, linger/2)
	t.Logf("heard after %v", took)

	// Unheard: the dialler's address answers nothing.
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	sk, _ := identity.GenerateKey()
	r.Introduced(candidate.PeerInfo{Peer: sk.ID(), Attempt: 2, PunchKey: NewKey(),
		Candidates: []candidate.Candidate{{Addr: silent.LocalAddr().(*net.UDPAddr).AddrPort(), Kind: candidate.Host}}})
	if rec.get(OutcomeUnheard) != 0 {
		t.Fatal("unheard before Linger ended")
	}
	took = waitOutcome(t, rec, OutcomeUnheard, 1, 5*time.Second)
	if took < linger/2 {
		t.Errorf("unheard after %v, before Linger (%v) ended", took, linger)
	}

	// Skipped: the same dialler's third introduction, over PerPeer 2.
	r.Introduced(candidate.PeerInfo{Peer: sk.ID(), Attempt: 3, PunchKey: NewKey(),
		Candidates: []candidate.Candidate{{Addr: silent.LocalAddr().(*net.UDPAddr).AddrPort(), Kind: candidate.Host}}})
	r.Introduced(candidate.PeerInfo{Peer: sk.ID(), Attempt: 4, PunchKey: NewKey(),
		Candidates: []candidate.Candidate{{Addr: silent.LocalAddr().(*net.UDPAddr).AddrPort(), Kind: candidate.Host}}})
	if rec.get(OutcomeSkipped) != 1 {
		t.Errorf("skipped %d, want 1", rec.get(OutcomeSkipped))
	}

	// No candidates: nothing at all to punch.
	nk, _ := identity.GenerateKey()
	r.Introduced(candidate.PeerInfo{Peer: nk.ID(), Attempt: 5, PunchKey: NewKey()})
	if rec.get(OutcomeNoCandidates) != 1 {
		t.Errorf("no_candidates %d, want 1", rec.get(OutcomeNoCandidates))
	}

	// No punch key: the dialler did not ask for a punch.
	r.Introduced(candidate.PeerInfo{Peer: nk.ID(), Attempt: 6,
		Candidates: []candidate.Candidate{{Addr: dsock.LocalAddr(), Kind: candidate.Host}}})

	// Attempt 3 lingers unheard too; then every punch has one outcome.
	waitOutcome(t, rec, OutcomeUnheard, 2, 5*time.Second)
	time.Sleep(linger)
	if rec.get(OutcomeHeard) != 1 || rec.total() != 5 {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		t.Errorf("outcomes %v, want heard 1, unheard 2, skipped 1, no_candidates 1", rec.n)
	}
}
