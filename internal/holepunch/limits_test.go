package holepunch

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/internal/sock"
)

// fakeSock counts what the manager sends, per address, with no real
// socket (so a synctest bubble can run the manager's timers).
type fakeSock struct {
	mu   sync.Mutex
	sent map[netip.AddrPort]int
	h    sock.Handler
}

func newFakeSock() *fakeSock { return &fakeSock{sent: map[netip.AddrPort]int{}} }

func (f *fakeSock) WriteTo(_ []byte, to netip.AddrPort) error {
	f.mu.Lock()
	f.sent[to]++
	f.mu.Unlock()
	return nil
}

func (f *fakeSock) Handle(_ byte, h sock.Handler) {
	f.mu.Lock()
	f.h = h
	f.mu.Unlock()
}

func (f *fakeSock) count(to netip.AddrPort) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent[to]
}

func (f *fakeSock) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.sent {
		n += c
	}
	return n
}

func addrs(n int) []netip.AddrPort {
	var out []netip.AddrPort
	for i := range n {
		out = append(out, netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), uint16(1000+i)))
	}
	return out
}

// TestAttemptBudget: a listener-side attempt to addresses that never
// answer sends no more than its budget over its whole life, pings each
// address only during the early phase, and then falls silent.
func TestAttemptBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSock()
		m := NewManager(fs, nil)
		defer m.Close()
		remotes := addrs(8)
		a, err := m.Start(Params{Attempt: 1, Key: NewKey(), Role: RoleListener, Remote: remotes, Budget: DefaultAttemptPackets})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(EarlyPhase + 100*time.Millisecond)
		early := fs.total()
		time.Sleep(DefaultLinger)
		a.Close()
		total := fs.total()
		t.Logf("8 silent addresses: %d pings in the early phase, %d in all", early, total)
		if total > DefaultAttemptPackets/2+len(remotes) || total != early {
			t.Fatalf("%d pings in the early phase, %d in all: want at most about half the budget (%d), none after the early phase",
				early, total, DefaultAttemptPackets/2)
		}
		if per := fs.count(remotes[0]); per > int(EarlyPhase/(40*time.Millisecond))+1 {
			t.Fatalf("%d pings to one address", per)
		}
	})
}

// TestAnsweredAddressKeepsPinged: an address that answered keeps getting
// pings after the early phase (the path stays open while the dialler
// comes), within the budget.
func TestAnsweredAddressKeepsPinged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSock()
		m := NewManager(fs, nil)
		defer m.Close()
		key := NewKey()
		remotes := addrs(3)
		a, err := m.Start(Params{Attempt: 1, Key: key, Role: RoleListener, Remote: remotes, Budget: DefaultAttemptPackets})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		// The dialler's check arrives from its reflexive address.
		fs.h((&packet{typ: typePing, role: RoleDialer, attempt: 1, txid: 5}).marshal(key), remotes[1])
		time.Sleep(EarlyPhase + 100*time.Millisecond)
		before, silent := fs.count(remotes[1]), fs.count(remotes[0])
		time.Sleep(5 * time.Second)
		if got := fs.count(remotes[1]) - before; got < 15 {
			t.Fatalf("answered address: %d pings in 5 s after the early phase, want about 20", got)
		}
		if got := fs.count(remotes[0]); got != silent {
			t.Fatalf("silent address: pinged %d times after its early phase", got-silent)
		}
		time.Sleep(60 * time.Second)
		if a.Sent() > DefaultAttemptPackets {
			t.Fatalf("%d pings, budget %d", a.Sent(), DefaultAttemptPackets)
		}
	})
}

// TestManagerRate: all attempts together send no more than the node's
// packet rate (plus one burst).
func TestManagerRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSock()
		m := NewManager(fs, nil)
		defer m.Close()
		m.SetRate(100)
		for i := range 10 {
			a, err := m.Start(Params{Attempt: uint64(i + 1), Key: NewKey(), Role: RoleDialer, Remote: addrs(8)})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
		}
		time.Sleep(10 * time.Second)
		if got, limit := fs.total(), 100*10+100/5; got > limit {
			t.Fatalf("%d packets in 10 s at 100 pps (limit %d)", got, limit)
		}
		if m.Throttled() == 0 {
			t.Fatal("nothing throttled")
		}
	})
}

func newTestRung(t *testing.T, limits Limits) *Rung {
	t.Helper()
	return newRungOn(t, limits, true, nil, netip.AddrPort{})
}

// newRungOn makes a rung on a loopback socket for a node that is local (a
// one-machine setup) or not, with the given interface addresses and
// observed address.
func newRungOn(t *testing.T, limits Limits, local bool, ifaces []net.Addr, observed netip.AddrPort) *Rung {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	s := loopSock(t)
	h := &rung.Host{
		Socket: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Context: ctx,
		Go:             func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() },
		Local:          local,
		InterfaceAddrs: func() ([]net.Addr, error) { return ifaces, nil },
		Observed:       func() netip.AddrPort { return observed },
	}
	r := NewRung(h, time.Minute, limits)
	t.Cleanup(r.Close)
	return r
}

func introduction(peer identity.PeerID, attempt uint64) candidate.PeerInfo {
	return candidate.PeerInfo{Peer: peer, Attempt: attempt, PunchKey: NewKey(),
		Candidates: []candidate.Candidate{{Addr: netip.MustParseAddrPort("127.0.0.1:9"), Kind: candidate.Host}}}
}

func running(r *Rung) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running
}

// TestRungMaxAttempts: at most MaxAttempts listener-side attempts run at
// once; further introductions are skipped and counted.
func TestRungMaxAttempts(t *testing.T) {
	r := newTestRung(t, Limits{})
	for i := range 40 {
		k, _ := identity.GenerateKey()
		r.Introduced(introduction(k.ID(), uint64(i+1)))
	}
	if got := running(r); got != DefaultMaxAttempts {
		t.Fatalf("%d attempts running, want %d", got, DefaultMaxAttempts)
	}
	if got := r.Skipped(); got != 40-DefaultMaxAttempts {
		t.Fatalf("skipped %d, want %d", got, 40-DefaultMaxAttempts)
	}
}

// TestRungPerPeerRate: one dialler gets PerPeer introductions punched,
// then none until its bucket refills; another dialler is not affected.
func TestRungPerPeerRate(t *testing.T) {
	r := newTestRung(t, Limits{MaxAttempts: 100})
	k, _ := identity.GenerateKey()
	for i := range 25 {
		r.Introduced(introduction(k.ID(), uint64(i+1)))
	}
	if got := running(r); got != DefaultPerPeer {
		t.Fatalf("%d attempts for one dialler, want %d", got, DefaultPerPeer)
	}
	if got := r.Skipped(); got != 25-DefaultPerPeer {
		t.Fatalf("skipped %d, want %d", got, 25-DefaultPerPeer)
	}
	other, _ := identity.GenerateKey()
	r.Introduced(introduction(other.ID(), 100))
	if got := running(r); got != DefaultPerPeer+1 {
		t.Fatalf("another dialler was refused: %d running", got)
	}
}

// TestPeerBucketRefills: the per-dialler bucket gives one introduction
// back every 60/PerPeer seconds.
func TestPeerBucketRefills(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &bucket{}
		b.set(float64(DefaultPerPeer)/60, DefaultPerPeer)
		n := 0
		for b.take(time.Now()) {
			n++
		}
		if n != DefaultPerPeer {
			t.Fatalf("burst of %d", n)
		}
		time.Sleep(60 * time.Second / DefaultPerPeer)
		if !b.take(time.Now()) || b.take(time.Now()) {
			t.Fatal("want exactly one introduction back after 6 s")
		}
	})
}

// TestRungFilters: a node on a real network (not a one-machine setup)
// starts no attempt for an introduction listing only loopback and own-LAN
// addresses from a dialler elsewhere, but punches a genuine LAN peer
// (behind the same public address) on its LAN address.
func TestRungFilters(t *testing.T) {
	lan := []net.Addr{&net.IPNet{IP: net.IPv4(192, 168, 1, 2), Mask: net.CIDRMask(24, 32)}}
	r := newRungOn(t, Limits{}, false, lan, netip.MustParseAddrPort("203.0.113.7:4000"))
	k, _ := identity.GenerateKey()
	hostile := candidate.PeerInfo{Peer: k.ID(), Attempt: 1, PunchKey: NewKey(), Candidates: []candidate.Candidate{
		{Addr: netip.MustParseAddrPort("127.0.0.1:22"), Kind: candidate.Host},
		{Addr: netip.MustParseAddrPort("192.168.1.1:53"), Kind: candidate.Host},
		{Addr: netip.MustParseAddrPort("192.168.1.255:9"), Kind: candidate.Mapped},
		{Addr: netip.MustParseAddrPort("[::1]:22"), Kind: candidate.Host},
	}}
	r.Introduced(hostile)
	if r.Manager().Lookup(1) != nil || running(r) != 0 {
		t.Fatal("punching loopback or own-LAN addresses for a dialler elsewhere")
	}
	lanPeer := candidate.PeerInfo{Peer: k.ID(), Attempt: 3, PunchKey: NewKey(), Candidates: []candidate.Candidate{
		{Addr: netip.MustParseAddrPort("192.168.1.9:4000"), Kind: candidate.Host},
		{Addr: netip.MustParseAddrPort("203.0.113.7:4100"), Kind: candidate.Reflexive},
	}}
	r.Introduced(lanPeer)
	at := r.Manager().Lookup(3)
	if at == nil {
		t.Fatal("a genuine LAN peer is not punched")
	}
	at.mu.Lock()
	remotes := append([]netip.AddrPort(nil), at.remotes...)
	at.mu.Unlock()
	if len(remotes) != 2 || remotes[1] != netip.MustParseAddrPort("192.168.1.9:4000") {
		t.Fatalf("LAN peer: punching %v, want its reflexive and LAN addresses", remotes)
	}
}
