package supernode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tLogWriter sends log lines to t.Log until the test's cleanups end (a
// goroutine that logs after the test returned must not panic).
type tLogWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// testLogger is a debug logger writing through t.Log.
func testLogger(t testing.TB) *slog.Logger {
	w := &tLogWriter{t: t}
	// Registered first, so it runs after every later cleanup.
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func mustKey(t testing.TB) *identity.Key {
	t.Helper()
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func secret(i int) []byte { return []byte(fmt.Sprintf("secret-%02d-0123456789abcdef0123456789", i)) }

func serverAddr(t testing.TB, port uint16) rendezvous.ServerAddr {
	return rendezvous.ServerAddr{ID: mustKey(t).ID(), Host: "127.0.0.1", Port: port}
}

func admitted(sa rendezvous.ServerAddr, sec []byte) rendezvous.VolunteerStatus {
	return rendezvous.VolunteerStatus{Server: sa, Admitted: true,
		Observed: netip.MustParseAddrPort("198.51.100.7:4900"), Secret: sec}
}

func TestAuthorizeAllowList(t *testing.T) {
	a, b, c := mustKey(t).ID(), mustKey(t).ID(), mustKey(t).ID()
	v := NewVolunteer(Config{Enable: true, Allow: []identity.PeerID{a, b}}, testLogger(t))
	// A server's admission does not widen an allow-list.
	sa := serverAddr(t, 1)
	v.Verdict(admitted(sa, secret(0)))
	exp := time.Now().Add(time.Minute)
	for _, tc := range []struct {
		name  string
		peer  identity.PeerID
		token string
		want  error
	}{
		{"listed, no token", a, "", nil},
		{"listed, garbage token", b, "garbage", nil},
		{"not listed, no token", c, "", ErrNotAllowed},
		{"not listed, valid server token", c, rendezvous.NewSupernodeToken(secret(0), c, exp), ErrNotAllowed},
	} {
		_, err := v.authorize(tc.peer, tc.token)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: authorize = %v, want %v", tc.name, err, tc.want)
		}
	}
	// The offer carries the allow-list to the servers.
	if o := v.Offer(); len(o.Allow) != 2 || o.Allow[0] != a || o.Allow[1] != b {
		t.Errorf("Offer().Allow = %v, want [%s %s]", o.Allow, a.Short(), b.Short())
	}
}

func TestAuthorizeTokens(t *testing.T) {
	me, other := mustKey(t).ID(), mustKey(t).ID()
	v := NewVolunteer(Config{Enable: true}, testLogger(t))
	exp := time.Now().Add(time.Minute)
	good := rendezvous.NewSupernodeToken(secret(1), me, exp)

	// Before any admission, no token is valid.
	if _, err := v.authorize(me, good); !errors.Is(err, relay.ErrBadToken) {
		t.Fatalf("before admission: authorize = %v, want ErrBadToken", err)
	}
	// A refusal carries no secret that could admit anyone.
	v.Verdict(rendezvous.VolunteerStatus{Server: serverAddr(t, 1), Secret: secret(1),
		Err: &rendezvous.VolunteerError{Code: "unreachable"}})
	if _, err := v.authorize(me, good); !errors.Is(err, relay.ErrBadToken) {
		t.Fatalf("after a refusal with a secret: authorize = %v, want ErrBadToken", err)
	}
	v.Verdict(admitted(serverAddr(t, 2), secret(1)))

	for _, tc := range []struct {
		name  string
		peer  identity.PeerID
		token string
		want  error
	}{
		{"own valid token", me, good, nil},
		{"token of another peer", other, good, relay.ErrBadToken},
		{"forged (other secret)", me, rendezvous.NewSupernodeToken(secret(99), me, exp), relay.ErrBadToken},
		{"forged (tampered expiry)", me, tamperExpiry(good), relay.ErrBadToken},
		{"expired", me, rendezvous.NewSupernodeToken(secret(1), me, time.Now().Add(-time.Second)), relay.ErrTokenExpired},
		{"expired, of another peer", other, rendezvous.NewSupernodeToken(secret(1), me, time.Now().Add(-time.Second)), relay.ErrBadToken},
		{"no token", me, "", relay.ErrBadToken},
		{"garbage", me, "not-a-token", relay.ErrBadToken},
	} {
		_, err := v.authorize(tc.peer, tc.token)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: authorize = %v, want %v", tc.name, err, tc.want)
		}
	}
	// The relay ends (or narrows) the link at the token's expiry.
	if got, err := v.authorize(me, good); err != nil || !got.Equal(time.Unix(exp.Unix(), 0)) {
		t.Errorf("authorize = %v, %v; want the token's expiry %v", got, err, time.Unix(exp.Unix(), 0))
	}
}

// tamperExpiry moves a token's expiry a day later, keeping its MAC.
func tamperExpiry(tok string) string {
	exp, mac, _ := strings.Cut(tok, ":")
	var sec int64
	fmt.Sscan(exp, &sec)
	return fmt.Sprintf("%d:%s", sec+86400, mac)
}

func TestAuthorizeKeepsRecentSecrets(t *testing.T) {
	me := mustKey(t).ID()
	v := NewVolunteer(Config{Enable: true}, testLogger(t))
	exp := time.Now().Add(time.Minute)
	tok := func(i int) string { return rendezvous.NewSupernodeToken(secret(i), me, exp) }

	// maxSecrets admissions (by as many servers, one failing over to the
	// next): every one's tokens stay valid.
	for i := range maxSecrets {
		v.Verdict(admitted(serverAddr(t, uint16(100+i)), secret(i)))
	}
	for i := range maxSecrets {
		if _, err := v.authorize(me, tok(i)); err != nil {
			t.Errorf("after %d admissions, token of admission %d: %v", maxSecrets, i, err)
		}
	}
	// One more: the oldest secret is forgotten, the others stay.
	v.Verdict(admitted(serverAddr(t, 200), secret(maxSecrets)))
	if _, err := v.authorize(me, tok(0)); !errors.Is(err, relay.ErrBadToken) {
		t.Errorf("token of the oldest of %d admissions: authorize = %v, want ErrBadToken", maxSecrets+1, err)
	}
	for i := 1; i <= maxSecrets; i++ {
		if _, err := v.authorize(me, tok(i)); err != nil {
			t.Errorf("after %d admissions, token of admission %d: %v", maxSecrets+1, i, err)
		}
	}
	// An expired token under a forgotten secret is just bad.
	if _, err := v.authorize(me, rendezvous.NewSupernodeToken(secret(0), me, time.Now().Add(-time.Second))); !errors.Is(err, relay.ErrBadToken) {
		t.Errorf("expired token under a forgotten secret: %v, want ErrBadToken", err)
	}
	// A server that drops the volunteer later does not revoke its tokens
	// (they expire on their own).
	v.Verdict(rendezvous.VolunteerStatus{Server: serverAddr(t, 200), Err: &rendezvous.VolunteerError{Code: "unreachable"}})
	if _, err := v.authorize(me, tok(maxSecrets)); err != nil {
		t.Errorf("token of a server that later dropped the volunteer: %v", err)
	}
}

// TestAuthorizeConcurrentWithVerdict: the relay server checks links on
// its own goroutines while verdicts arrive from the rendezvous client's.
// Run with -race.
func TestAuthorizeConcurrentWithVerdict(t *testing.T) {
	me := mustKey(t).ID()
	v := NewVolunteer(Config{Enable: true}, testLogger(t))
	exp := time.Now().Add(time.Minute)
	v.Verdict(admitted(serverAddr(t, 1), secret(0)))
	tok := rendezvous.NewSupernodeToken(secret(0), me, exp)
	sa := serverAddr(t, 2)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var bad error
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := v.authorize(me, tok); err != nil && bad == nil {
				bad = err
			}
		}
	})
	// Fewer than maxSecrets more admissions: secret(0) must stay valid
	// throughout.
	for i := 1; i < maxSecrets; i++ {
		v.Verdict(admitted(sa, secret(i)))
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if bad != nil {
		t.Errorf("a valid token was refused while verdicts arrived: %v", bad)
	}
}

func TestWaitAndStatus(t *testing.T) {
	v := NewVolunteer(Config{Enable: true}, testLogger(t))
	s1, s2 := serverAddr(t, 1), serverAddr(t, 2)

	// Nothing yet: Wait ends with ctx, Status shows no verdict.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := v.Wait(ctx, rendezvous.ServerAddr{})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait without verdict = %v, want DeadlineExceeded", err)
	}
	if st := v.Status(s1); !st.Volunteering || st.Admitted || st.Err != nil || st.Observed.IsValid() || st.Sessions != 0 || len(st.Peers) != 0 {
		t.Fatalf("Status before any verdict = %+v", st)
	}

	// A verdict unblocks waiters: one for any server, one for s1; one
	// for s2 keeps waiting.
	type res struct {
		st  rendezvous.VolunteerStatus
		err error
	}
	anyc, s1c, s2c := make(chan res, 1), make(chan res, 1), make(chan res, 1)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	for sa, ch := range map[rendezvous.ServerAddr]chan res{{}: anyc, s1: s1c, s2: s2c} {
		go func() {
			st, err := v.Wait(ctx, sa)
			ch <- res{st, err}
		}()
	}
	time.Sleep(20 * time.Millisecond) // let them block
	obs := netip.MustParseAddrPort("198.51.100.7:4900")
	v.Verdict(rendezvous.VolunteerStatus{Server: s1, Admitted: true, Observed: obs, Secret: secret(1)})
	for name, ch := range map[string]chan res{"any": anyc, "s1": s1c} {
		select {
		case r := <-ch:
			if r.err != nil || !r.st.Admitted || r.st.Server != s1 || r.st.Observed != obs {
				t.Errorf("Wait(%s) = %+v, %v; want s1's admission", name, r.st, r.err)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("Wait(%s) still blocked after a verdict", name)
		}
	}
	select {
	case r := <-s2c:
		t.Fatalf("Wait(s2) returned on s1's verdict: %+v, %v", r.st, r.err)
	case <-time.After(50 * time.Millisecond):
	}
	refusal := &rendezvous.VolunteerError{Code: "unreachable", Reason: "no answer"}
	v.Verdict(rendezvous.VolunteerStatus{Server: s2, Err: refusal})
	select {
	case r := <-s2c:
		if r.err != nil || r.st.Admitted || !errors.Is(r.st.Err, rendezvous.ErrNotAdmitted) {
			t.Errorf("Wait(s2) = %+v, %v; want s2's refusal", r.st, r.err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Wait(s2) still blocked after s2's verdict")
	}

	// Status reports the verdict of the server asked about.
	if st := v.Status(s1); !st.Volunteering || !st.Admitted || st.Observed != obs || st.Err != nil {
		t.Errorf("Status(s1) = %+v, want admitted at %v", st, obs)
	}
	st := v.Status(s2)
	var ve *rendezvous.VolunteerError
	if !st.Volunteering || st.Admitted || st.Observed.IsValid() || !errors.As(st.Err, &ve) || ve.Code != "unreachable" || !errors.Is(st.Err, rendezvous.ErrNotAdmitted) {
		t.Errorf("Status(s2) = %+v, want s2's refusal", st)
	}
	if st := v.Status(serverAddr(t, 3)); st.Admitted || st.Err != nil {
		t.Errorf("Status(unknown server) = %+v, want no verdict", st)
	}
	// A later verdict replaces the server's earlier one (dropped after a
	// failed re-check).
	v.Verdict(rendezvous.VolunteerStatus{Server: s1, Err: &rendezvous.VolunteerError{Code: "unreachable"}})
	if st := v.Status(s1); st.Admitted || st.Observed.IsValid() || !errors.Is(st.Err, rendezvous.ErrNotAdmitted) {
		t.Errorf("Status(s1) after being dropped = %+v", st)
	}
	// Wait for a server that already decided returns at once.
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	if st, err := v.Wait(ctx2, s1); err != nil || st.Admitted || st.Server != s1 {
		t.Errorf("Wait(s1) after its verdicts = %+v, %v", st, err)
	}
}

func TestConfigLimits(t *testing.T) {
	for _, tc := range []struct {
		set, want int
	}{{0, 8}, {-3, 8}, {1, 1}, {5, 5}} {
		c := Config{Enable: true, MaxSessions: tc.set}
		if got := c.maxSessions(); got != tc.want {
			t.Errorf("Config{MaxSessions: %d}.maxSessions() = %d, want %d", tc.set, got, tc.want)
		}
		// The servers are told the same number (it spreads introductions).
		if got := NewVolunteer(c, nil).Offer().MaxSessions; got != tc.want {
			t.Errorf("Config{MaxSessions: %d}: Offer().MaxSessions = %d, want %d", tc.set, got, tc.want)
		}
	}
	if o := NewVolunteer(Config{Enable: true}, nil).Offer(); o.Allow != nil {
		t.Errorf("Offer().Allow without an allow-list = %v, want nil", o.Allow)
	}
}
