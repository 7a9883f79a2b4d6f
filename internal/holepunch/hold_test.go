package holepunch

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
)

// ttlSock is a fakeSock that also records packets sent with a TTL.
type ttlSock struct {
	*fakeSock
	mu   sync.Mutex
	ttls map[netip.AddrPort][]int
}

func (s *ttlSock) WriteToTTL(_ []byte, to netip.AddrPort, ttl int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ttls[to] = append(s.ttls[to], ttl)
	return nil
}

func (s *ttlSock) primers(to netip.AddrPort) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.ttls[to]...)
}

// TestHoldPrimers: a listener-side attempt with a hold sends one primer
// with the asked TTL to each address before Start returns, then no full
// ping until the hold has passed.
func TestHoldPrimers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := &ttlSock{fakeSock: newFakeSock(), ttls: map[netip.AddrPort][]int{}}
		m := NewManager(fs, nil)
		defer m.Close()
		remotes := addrs(2)
		a, err := m.Start(Params{Attempt: 1, Key: NewKey(), Role: RoleListener, Remote: remotes,
			Budget: DefaultAttemptPackets, Hold: 300 * time.Millisecond, PrimerTTL: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		for _, r := range remotes {
			if p := fs.primers(r); len(p) != 1 || p[0] != 2 {
				t.Fatalf("primers to %v when Start returned: %v, want one with TTL 2", r, p)
			}
		}
		time.Sleep(299 * time.Millisecond)
		synctest.Wait()
		if n := fs.total(); n != 0 {
			t.Fatalf("%d full pings during the hold", n)
		}
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if n := fs.total(); n != len(remotes) {
			t.Fatalf("%d full pings right after the hold, want one per address", n)
		}
	})
}

// TestHoldEndsWhenHeard: a packet from the peer ends the hold at once.
func TestHoldEndsWhenHeard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := &ttlSock{fakeSock: newFakeSock(), ttls: map[netip.AddrPort][]int{}}
		m := NewManager(fs, nil)
		defer m.Close()
		key := NewKey()
		remotes := addrs(2)
		a, err := m.Start(Params{Attempt: 1, Key: key, Role: RoleListener, Remote: remotes,
			Budget: DefaultAttemptPackets, Hold: time.Second, PrimerTTL: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		time.Sleep(10 * time.Millisecond)
		fs.h((&packet{typ: typePing, role: RoleDialer, attempt: 1, txid: 5}).marshal(key), remotes[0])
		synctest.Wait()
		// The pong answers at once; the hold is over, so both addresses
		// get their full pings now, not after a second.
		if n := fs.count(remotes[1]); n < 1 {
			t.Fatalf("no full ping to the other address after the peer was heard")
		}
	})
}

func TestHoldFor(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct{ own, dialler, want time.Duration }{
		{0, 0, 0},
		{40 * ms, 0, 180 * ms},
		{0, 40 * ms, 180 * ms},
		{40 * ms, 120 * ms, 260 * ms},
		{3 * time.Second, 3 * time.Second, maxHold},
	} {
		if got := holdFor(tc.own, tc.dialler); got != tc.want {
			t.Errorf("holdFor(%v, %v) = %v, want %v", tc.own, tc.dialler, got, tc.want)
		}
	}
}

// TestDiallerBudget: the dialling side's attempt (started by the rung's
// Offer before the introduction, then given the peer's addresses) is
// bounded like the listening side's: addresses that never answer get
// pings only in their early phase, within the budget. (Unbounded, 8
// silent addresses cost 656 pings over a dial's 10 s.)
func TestDiallerBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSock()
		r := &Rung{h: &rung.Host{}, m: NewManager(fs, nil), limits: Limits{}.withDefaults()}
		defer r.m.Close()
		offer := candidate.PeerInfo{Attempt: 7}
		release := r.Offer(context.Background(), &offer)
		if release == nil {
			t.Fatal("Offer started no attempt")
		}
		r.m.Lookup(7).AddRemotes(addrs(8))
		time.Sleep(10 * time.Second) // a dial's whole check time
		release()
		if n := fs.total(); n > DefaultAttemptPackets {
			t.Fatalf("%d pings in a dial's 10 s, want at most %d", n, DefaultAttemptPackets)
		}
		t.Logf("dialling side, 8 silent addresses: %d pings in 10 s", fs.total())
	})
}
