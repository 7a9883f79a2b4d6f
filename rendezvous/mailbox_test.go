package rendezvous

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"
)

// mailboxClient starts a registered client of rs.
func mailboxClient(t *testing.T, rs *RunningServer, name string) *Mailbox {
	t.Helper()
	return startClient(t, name, mustKey(t), []ServerAddr{rs.ServerAddr()}, newTransport(t)).Mailbox()
}

// putCode stores blob under proof and returns the receipt.
func putCode(t *testing.T, mb *Mailbox, ttl time.Duration, proof, blob []byte) CodeReceipt {
	t.Helper()
	r, err := mb.Put(testCtx(t, 5*time.Second), ttl, func(ServerAddr, uint32) ([]byte, []byte, error) { return proof, blob, nil })
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	return r
}

func claimCode(t *testing.T, mb *Mailbox, slot uint32, proof []byte) ([]byte, error) {
	t.Helper()
	b, _, err := mb.Claim(testCtx(t, 5*time.Second), slot, func(ServerAddr) ([]byte, error) { return proof, nil })
	return b, err
}

// TestMailboxClaimOnce: the blob comes back for the right proof, once; a
// second claim is ErrCodeUsed, an unknown slot ErrCodeUnknown, a sender's
// drop makes its code used.
func TestMailboxClaimOnce(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	sender, receiver := mailboxClient(t, rs, "sender"), mailboxClient(t, rs, "receiver")
	proof, blob := randBytes(32), randBytes(300)
	r := putCode(t, sender, 0, proof, blob)
	if r.Slot != 1 || r.TTL != DefaultCodeTTL || r.Server != rs.ServerAddr() {
		t.Errorf("receipt %+v; want slot 1, TTL %v at %v", r, DefaultCodeTTL, rs.ServerAddr())
	}
	got, err := claimCode(t, receiver, r.Slot, proof)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("claim: %d bytes, %v", len(got), err)
	}
	if _, err := claimCode(t, receiver, r.Slot, proof); !errors.Is(err, ErrCodeUsed) {
		t.Errorf("second claim: %v; want ErrCodeUsed", err)
	}
	if _, err := claimCode(t, receiver, 99, proof); !errors.Is(err, ErrCodeUnknown) {
		t.Errorf("unknown slot: %v; want ErrCodeUnknown", err)
	}
	r2 := putCode(t, sender, time.Minute, proof, blob)
	if r2.Slot == r.Slot {
		t.Errorf("slot %d handed out again while its tombstone is kept", r2.Slot)
	}
	if err := sender.Drop(testCtx(t, 5*time.Second), r2); err != nil {
		t.Fatal(err)
	}
	if _, err := claimCode(t, receiver, r2.Slot, proof); !errors.Is(err, ErrCodeUsed) {
		t.Errorf("claim after drop: %v; want ErrCodeUsed", err)
	}
	if st := rs.CodeStats(); st.Puts != 2 || st.Claims != 1 || st.Live != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestMailboxGuessFlood: wrong proofs count against the slot: after
// DefaultCodeAttempts of them the code is burnt (the right proof too gets
// ErrCodeBurnt); the source's lookups are rated (ErrRateLimited after the
// burst), so a guesser gets DefaultCodeLookupBurst tries at once and one
// a second after.
func TestMailboxGuessFlood(t *testing.T) {
	rs := startTestServer(t, ServerConfig{Limits: testLimits(LimitConfig{})})
	sender, guesser := mailboxClient(t, rs, "sender"), mailboxClient(t, rs, "guesser")
	proof := randBytes(32)
	r := putCode(t, sender, 0, proof, randBytes(100))
	var limited, wrong, burnt int
	start := time.Now()
	for i := range 50 {
		_, err := claimCode(t, guesser, r.Slot, randBytes(32))
		var ce *CodeError
		switch {
		case errors.Is(err, ErrCodeWrong) && errors.As(err, &ce):
			wrong++
			if want := DefaultCodeAttempts - i - 1; ce.AttemptsLeft != want {
				t.Errorf("guess %d: %d attempts left, want %d", i, ce.AttemptsLeft, want)
			}
		case errors.Is(err, ErrCodeBurnt):
			burnt++
		case errors.Is(err, ErrRateLimited):
			limited++
		default:
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	// The bucket refills at DefaultCodeLookupRate while the flood runs.
	allowed := DefaultCodeLookupBurst + int(DefaultCodeLookupRate*time.Since(start).Seconds()) + 1
	t.Logf("50 guesses in %v: %d wrong, %d burnt, %d rate limited (at most %d answered)", time.Since(start).Round(time.Millisecond),
		wrong, burnt, limited, allowed)
	if wrong != DefaultCodeAttempts-1 || burnt+wrong > allowed || limited < 50-allowed {
		t.Errorf("%d wrong, %d burnt, %d limited; want %d wrong, the rest beyond the burst of %d limited", wrong, burnt, limited,
			DefaultCodeAttempts-1, DefaultCodeLookupBurst)
	}
	// The right proof, from a fresh address's point of view (another
	// client on the same loopback source waits for a token).
	time.Sleep(1100 * time.Millisecond)
	if _, err := claimCode(t, mailboxClient(t, rs, "receiver"), r.Slot, proof); !errors.Is(err, ErrCodeBurnt) {
		t.Errorf("right proof after the flood: %v; want ErrCodeBurnt", err)
	}
	if st := rs.CodeStats(); st.Burnt != 1 || st.Wrong != DefaultCodeAttempts || st.Limited == 0 || st.Claims != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestMailboxExpiry: a code not claimed within its TTL is ErrCodeExpired.
func TestMailboxExpiry(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	sender, receiver := mailboxClient(t, rs, "sender"), mailboxClient(t, rs, "receiver")
	proof := randBytes(32)
	r := putCode(t, sender, 200*time.Millisecond, proof, randBytes(10))
	if r.TTL != 200*time.Millisecond {
		t.Errorf("TTL %v", r.TTL)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := claimCode(t, receiver, r.Slot, proof); !errors.Is(err, ErrCodeExpired) {
		t.Errorf("claim after the TTL: %v; want ErrCodeExpired", err)
	}
	// The server caps the TTL.
	rs2 := startTestServer(t, ServerConfig{Codes: CodeConfig{MaxTTL: time.Second}})
	if r := putCode(t, mailboxClient(t, rs2, "sender2"), time.Hour, proof, randBytes(10)); r.TTL != time.Second {
		t.Errorf("TTL %v asked for an hour, want the server's cap of 1s", r.TTL)
	}
}

// TestMailboxPutFlood: one source gets DefaultCodePutBurst codes at once
// (then ErrRateLimited) and keeps at most DefaultCodesPerSource; with those
// off, the server keeps at most MaxCodes (then ErrBusy), makes room by
// dropping spent codes, and goes on serving.
func TestMailboxPutFlood(t *testing.T) {
	seal := func(ServerAddr, uint32) ([]byte, []byte, error) { return randBytes(32), randBytes(MaxCodeBlob), nil }
	var floodTime time.Duration
	flood := func(mb *Mailbox, n int) (ok, busy, limited int) {
		start := time.Now()
		defer func() { floodTime = time.Since(start) }()
		for range n {
			_, err := mb.Put(testCtx(t, 5*time.Second), 0, seal)
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrRateLimited):
				limited++
			case errors.Is(err, ErrBusy):
				busy++
			default:
				t.Fatalf("put: %v", err)
			}
		}
		return
	}
	rs := startTestServer(t, ServerConfig{Limits: testLimits(LimitConfig{})})
	ok, busy, limited := flood(mailboxClient(t, rs, "flooder"), 200)
	allowed := DefaultCodePutBurst + int(DefaultCodePutRate*floodTime.Seconds()) + 1
	t.Logf("defaults: 200 puts in %v: %d stored, %d busy, %d rate limited", floodTime.Round(time.Millisecond), ok, busy, limited)
	if ok > allowed || limited < 200-allowed || rs.CodeStats().Slots > DefaultCodesPerSource {
		t.Errorf("%d stored, %d limited, %d kept; want at most the burst of %d stored, the rest limited", ok, limited,
			rs.CodeStats().Slots, DefaultCodePutBurst)
	}

	// Without the rate, the source's cap holds.
	rs = startTestServer(t, ServerConfig{Codes: CodeConfig{Puts: Rate{PerSecond: -1}}})
	ok, busy, limited = flood(mailboxClient(t, rs, "flooder"), 50)
	t.Logf("no put rate: 50 puts from one source: %d stored, %d busy, %d rate limited", ok, busy, limited)
	if ok != DefaultCodesPerSource || busy != 50-DefaultCodesPerSource || rs.CodeStats().Live != DefaultCodesPerSource {
		t.Errorf("%d stored, %d busy; want %d stored (the source's cap), the rest busy", ok, busy, DefaultCodesPerSource)
	}

	const max = 50
	rs = startTestServer(t, ServerConfig{Codes: CodeConfig{MaxCodes: max, PerSource: 1000, Puts: Rate{PerSecond: -1}}})
	mb := mailboxClient(t, rs, "flooder")
	ok, busy, limited = flood(mb, 3*max)
	t.Logf("cap %d: %d puts: %d stored, %d busy, %d rate limited", max, 3*max, ok, busy, limited)
	if ok != max || busy != 2*max || rs.CodeStats().Slots != max {
		t.Errorf("%d stored, %d busy, %d kept; want %d, %d, %d", ok, busy, rs.CodeStats().Slots, max, 2*max, max)
	}
	// The server still serves: a put after one code was spent (its
	// tombstone makes room) and its claim, and a new registration.
	receiver := mailboxClient(t, rs, "receiver")
	proof := randBytes(32)
	if _, err := claimCode(t, receiver, 1, proof); !errors.Is(err, ErrCodeWrong) {
		t.Fatalf("claim: %v", err)
	}
	for range DefaultCodeAttempts - 1 {
		claimCode(t, receiver, 1, proof)
	}
	r := putCode(t, mb, 0, proof, []byte("after the flood"))
	if b, err := claimCode(t, receiver, r.Slot, proof); err != nil || string(b) != "after the flood" {
		t.Errorf("claim after the flood: %q, %v", b, err)
	}
}

// TestMailboxDisabled: a server without a mailbox says so at once.
func TestMailboxDisabled(t *testing.T) {
	rs := startTestServer(t, ServerConfig{Codes: CodeConfig{Disable: true}})
	mb := mailboxClient(t, rs, "sender")
	_, err := mb.Put(testCtx(t, 5*time.Second), 0, func(ServerAddr, uint32) ([]byte, []byte, error) {
		return nil, nil, fmt.Errorf("seal called")
	})
	if !errors.Is(err, ErrNoMailbox) {
		t.Errorf("put: %v; want ErrNoMailbox", err)
	}
	if _, err := claimCode(t, mb, 1, randBytes(32)); !errors.Is(err, ErrNoMailbox) {
		t.Errorf("claim: %v; want ErrNoMailbox", err)
	}
}
