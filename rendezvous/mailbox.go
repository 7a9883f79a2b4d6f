package rendezvous

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/identity"
)

// The short-code mailbox (docs/protocol.md, "Short codes"): a sender
// reserves a small slot number, then stores under it a sealed blob and
// the SHA-256 of a proof, both derived from a code the server never sees
// (package shortcode). A receiver that sends the same proof for that slot
// gets the blob, once. Wrong proofs count against the slot, which is
// burnt after CodeConfig.Attempts of them; lookups and stores are rated
// per source; the slots kept at once are capped.

// Defaults of CodeConfig.
const (
	// DefaultMaxCodes: slots kept at once, every state together.
	DefaultMaxCodes = 10000
	// DefaultCodesPerSource: slots reserved or waiting for their receiver
	// at once per source.
	DefaultCodesPerSource = 16
	// DefaultMaxCodeTTL: the longest a code waits for its receiver.
	DefaultMaxCodeTTL = 30 * time.Minute
	// DefaultCodeTTL: how long a code waits when its sender names no TTL.
	DefaultCodeTTL = 10 * time.Minute
	// DefaultCodeAttempts: wrong proofs for a slot before it is burnt.
	DefaultCodeAttempts = 3
	// DefaultCodeLookupRate and DefaultCodeLookupBurst: claims per source.
	DefaultCodeLookupRate  = 1.0
	DefaultCodeLookupBurst = 10
	// DefaultCodePutRate and DefaultCodePutBurst: reservations per source.
	DefaultCodePutRate  = 1.0
	DefaultCodePutBurst = 10
	// MaxCodeBlob is the largest blob a slot holds, in bytes.
	MaxCodeBlob = 1024
	// codeReserveTimeout: a reserved slot that got no put is freed.
	codeReserveTimeout = 30 * time.Second
	// codeProofLen is the length of a proof.
	codeProofLen = 32
)

// CodeConfig configures the server's short-code mailbox. Every zero value
// is the named default; a negative rate turns that rate limit off.
type CodeConfig struct {
	// Disable turns the mailbox off: CODE requests get ErrNoMailbox.
	Disable bool
	// MaxCodes: slots kept at once, waiting or spent (a spent slot is
	// kept until its code would have expired, so that its receiver is
	// told why it failed, and is dropped first when room is needed);
	// beyond, a reservation gets ErrBusy. Zero: DefaultMaxCodes.
	MaxCodes int
	// PerSource: slots one source may have reserved or waiting at once;
	// beyond, ErrBusy. Zero: DefaultCodesPerSource.
	PerSource int
	// MaxTTL caps the TTL a sender asks for. Zero: DefaultMaxCodeTTL.
	MaxTTL time.Duration
	// Attempts: wrong proofs a slot takes before it is burnt (then even
	// the right one gets ErrCodeBurnt). Zero: DefaultCodeAttempts.
	Attempts int
	// Lookups: claims per source; beyond, ErrRateLimited. Zero:
	// DefaultCodeLookupRate, DefaultCodeLookupBurst.
	Lookups Rate
	// Puts: reservations per source; beyond, ErrRateLimited. Zero:
	// DefaultCodePutRate, DefaultCodePutBurst.
	Puts Rate
}

func (c CodeConfig) withDefaults() CodeConfig {
	if c.MaxCodes <= 0 {
		c.MaxCodes = DefaultMaxCodes
	}
	if c.PerSource <= 0 {
		c.PerSource = DefaultCodesPerSource
	}
	if c.MaxTTL <= 0 {
		c.MaxTTL = DefaultMaxCodeTTL
	}
	if c.Attempts <= 0 {
		c.Attempts = DefaultCodeAttempts
	}
	defR := func(r *Rate, perSec float64, burst int) {
		if r.PerSecond == 0 {
			r.PerSecond = perSec
		}
		if r.Burst <= 0 {
			r.Burst = burst
		}
	}
	defR(&c.Lookups, DefaultCodeLookupRate, DefaultCodeLookupBurst)
	defR(&c.Puts, DefaultCodePutRate, DefaultCodePutBurst)
	return c
}

// Mailbox error codes of CODE_RESULT frames.
const (
	codeNoMailbox   = "no_mailbox"
	codeCodeUnknown = "code_unknown"
	codeCodeWrong   = "code_wrong"
	codeCodeUsed    = "code_used"
	codeCodeBurnt   = "code_burnt"
	codeCodeExpired = "code_expired"
)

// Frame bodies of the mailbox.
type (
	codeBody struct {
		ID    uint64 `json:"id"`
		Op    string `json:"op"` // reserve, put, claim, drop
		Slot  uint32 `json:"slot,omitempty"`
		Proof []byte `json:"proof,omitempty"`
		Blob  []byte `json:"blob,omitempty"`
		TTLMS int64  `json:"ttl_ms,omitempty"`
	}
	codeResultBody struct {
		ID           uint64 `json:"id"`
		Slot         uint32 `json:"slot,omitempty"`
		Blob         []byte `json:"blob,omitempty"`
		ExpiresMS    int64  `json:"expires_ms,omitempty"` // put: the TTL granted
		AttemptsLeft int    `json:"attempts_left,omitempty"`
		Error        string `json:"error,omitempty"`
		Reason       string `json:"reason,omitempty"`
	}
)

type slotState uint8

const (
	slotReserved slotState = iota // reserved, no blob yet
	slotLive                      // waiting for its receiver
	slotUsed                      // claimed
	slotBurnt                     // too many wrong proofs
	slotExpired                   // not claimed in time
)

// codeSlot is one slot of the mailbox.
type codeSlot struct {
	owner    identity.PeerID
	src      netip.Prefix
	state    slotState
	verifier [sha256.Size]byte // SHA-256 of the proof
	blob     []byte
	expires  time.Time // reserved or live: when it stops being so
	ttl      time.Duration
	wrong    int
}

// mailbox is the server's short-code store.
type mailbox struct {
	cfg          CodeConfig
	off          bool
	lookups      *buckets[netip.Prefix]
	puts         *buckets[netip.Prefix]
	mu           sync.Mutex
	slots        map[uint32]*codeSlot
	perSrc       map[netip.Prefix]int // reserved or live slots by source, no zero entries
	lastSweep    time.Time
	nextSlotHint uint32

	nPuts, nClaims, nWrong, nBurnt, nRefused, nLimited atomic.Uint64
}

func newMailbox(cfg CodeConfig, maxSources int) *mailbox {
	c := cfg.withDefaults()
	return &mailbox{cfg: c, off: cfg.Disable, slots: make(map[uint32]*codeSlot), perSrc: make(map[netip.Prefix]int),
		lookups: newBuckets[netip.Prefix](c.Lookups, maxSources), puts: newBuckets[netip.Prefix](c.Puts, maxSources)}
}

// handle answers one CODE request of a session.
func (m *mailbox) handle(ss *session, lim *limits, b codeBody) codeResultBody {
	res := codeResultBody{ID: b.ID}
	fail := func(code, format string, args ...any) codeResultBody {
		res.Error, res.Reason = code, fmt.Sprintf(format, args...)
		return res
	}
	if m.off {
		return fail(codeNoMailbox, "this server keeps no short codes")
	}
	now := time.Now()
	limitsOn := !lim.off
	switch b.Op {
	case "reserve":
		if limitsOn && !m.puts.allow(ss.src, now) {
			m.nLimited.Add(1)
			return fail(codeRateLimited, "too many codes from this address")
		}
		slot, code, why := m.reserve(ss.peer, ss.src, now)
		if code != "" {
			m.nRefused.Add(1)
			return fail(code, "%s", why)
		}
		res.Slot = slot
	case "put":
		if len(b.Blob) == 0 || len(b.Blob) > MaxCodeBlob || len(b.Proof) != codeProofLen {
			return fail(codeBadRequest, "a put needs a proof of %d bytes and a blob of 1 to %d bytes", codeProofLen, MaxCodeBlob)
		}
		ttl := min(time.Duration(b.TTLMS)*time.Millisecond, m.cfg.MaxTTL)
		if ttl <= 0 {
			ttl = min(DefaultCodeTTL, m.cfg.MaxTTL)
		}
		if code := m.put(ss.peer, b.Slot, b.Proof, b.Blob, ttl, now); code != "" {
			return fail(code, "slot %d is not reserved by this peer", b.Slot)
		}
		m.nPuts.Add(1)
		res.Slot, res.ExpiresMS = b.Slot, ttl.Milliseconds()
	case "claim":
		if limitsOn && !m.lookups.allow(ss.src, now) {
			m.nLimited.Add(1)
			return fail(codeRateLimited, "too many code lookups from this address")
		}
		if len(b.Proof) != codeProofLen {
			return fail(codeBadRequest, "a claim needs a proof of %d bytes", codeProofLen)
		}
		blob, left, code := m.claim(b.Slot, b.Proof, now)
		if code != "" {
			res.AttemptsLeft = left
			return fail(code, "slot %d", b.Slot)
		}
		m.nClaims.Add(1)
		res.Slot, res.Blob = b.Slot, blob
	case "drop":
		m.drop(ss.peer, b.Slot, now)
		res.Slot = b.Slot
	default:
		return fail(codeBadRequest, "unknown op %q", b.Op)
	}
	return res
}

// reserve allocates the smallest free slot number for owner.
func (m *mailbox) reserve(owner identity.PeerID, src netip.Prefix, now time.Time) (uint32, string, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked(now, false)
	if m.perSrc[src] >= m.cfg.PerSource {
		return 0, codeBusy, fmt.Sprintf("%d codes from this address are waiting", m.perSrc[src])
	}
	if len(m.slots) >= m.cfg.MaxCodes {
		m.sweepLocked(now, true)
		if len(m.slots) >= m.cfg.MaxCodes {
			return 0, codeBusy, "the server holds as many codes as it may"
		}
	}
	slot := uint32(1)
	for m.slots[slot] != nil {
		slot++
	}
	m.slots[slot] = &codeSlot{owner: owner, src: src, state: slotReserved, expires: now.Add(codeReserveTimeout)}
	m.perSrc[src]++
	return slot, "", ""
}

func (m *mailbox) put(owner identity.PeerID, slot uint32, proof, blob []byte, ttl time.Duration, now time.Time) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(slot, now)
	s := m.slots[slot]
	if s == nil || s.owner != owner || s.state != slotReserved {
		return codeBadRequest
	}
	s.state, s.verifier, s.blob, s.ttl, s.expires = slotLive, sha256.Sum256(proof), append([]byte(nil), blob...), ttl, now.Add(ttl)
	return ""
}

// claim checks proof against slot: the blob once on a match, else the
// error code (and the attempts left for a wrong proof).
func (m *mailbox) claim(slot uint32, proof []byte, now time.Time) ([]byte, int, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(slot, now)
	s := m.slots[slot]
	if s == nil {
		return nil, 0, codeCodeUnknown
	}
	switch s.state {
	case slotReserved:
		return nil, 0, codeCodeUnknown
	case slotUsed:
		return nil, 0, codeCodeUsed
	case slotBurnt:
		return nil, 0, codeCodeBurnt
	case slotExpired:
		return nil, 0, codeCodeExpired
	}
	v := sha256.Sum256(proof)
	if subtle.ConstantTimeCompare(v[:], s.verifier[:]) != 1 {
		m.nWrong.Add(1)
		s.wrong++
		if s.wrong >= m.cfg.Attempts {
			m.nBurnt.Add(1)
			m.spendLocked(s, slotBurnt)
			return nil, 0, codeCodeBurnt
		}
		return nil, m.cfg.Attempts - s.wrong, codeCodeWrong
	}
	blob := s.blob
	m.spendLocked(s, slotUsed)
	return blob, 0, ""
}

func (m *mailbox) drop(owner identity.PeerID, slot uint32, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(slot, now)
	if s := m.slots[slot]; s != nil && s.owner == owner && (s.state == slotLive || s.state == slotReserved) {
		m.spendLocked(s, slotUsed)
	}
}

// spendLocked turns a reserved or live slot into a tombstone of state st,
// kept until the code would have expired (at least a minute).
func (m *mailbox) spendLocked(s *codeSlot, st slotState) {
	if s.state == slotReserved || s.state == slotLive {
		if m.perSrc[s.src]--; m.perSrc[s.src] <= 0 {
			delete(m.perSrc, s.src)
		}
	}
	s.state, s.blob, s.verifier = st, nil, [sha256.Size]byte{}
}

// expireLocked turns slot into an expired tombstone (or frees it, if it
// was only reserved, or a tombstone past its time) when its time is up.
func (m *mailbox) expireLocked(slot uint32, now time.Time) {
	s := m.slots[slot]
	if s == nil || now.Before(s.expires) {
		return
	}
	switch s.state {
	case slotLive:
		m.spendLocked(s, slotExpired)
		s.expires = now.Add(max(s.ttl, time.Minute))
	case slotReserved:
		m.spendLocked(s, slotExpired)
		delete(m.slots, slot)
	default:
		delete(m.slots, slot)
	}
}

// sweepLocked expires what is due (at most once a second unless full),
// and, if full, drops tombstones too.
func (m *mailbox) sweepLocked(now time.Time, full bool) {
	if !full && now.Sub(m.lastSweep) < time.Second {
		return
	}
	m.lastSweep = now
	for slot := range m.slots {
		m.expireLocked(slot, now)
	}
	if !full {
		return
	}
	for slot, s := range m.slots {
		if s.state != slotLive && s.state != slotReserved {
			delete(m.slots, slot)
		}
	}
}

// len returns the slots kept now and of those, how many wait for their
// receiver.
func (m *mailbox) len() (all, live int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.slots {
		if s.state == slotLive {
			live++
		}
	}
	return len(m.slots), live
}

// CodeStats are the mailbox's counters (Server.CodeStats).
type CodeStats struct {
	Slots   int    // slots kept now, every state
	Live    int    // of those, codes waiting for their receiver
	Puts    uint64 // codes stored
	Claims  uint64 // codes claimed with the right proof
	Wrong   uint64 // wrong proofs
	Burnt   uint64 // codes burnt by wrong proofs
	Refused uint64 // reservations refused: the server's cap or the source's
	Limited uint64 // reservations and claims over their source's rate
}

// CodeStats returns a snapshot of the mailbox's counters.
func (s *Server) CodeStats() CodeStats {
	m := s.codes
	all, live := m.len()
	return CodeStats{Slots: all, Live: live, Puts: m.nPuts.Load(), Claims: m.nClaims.Load(), Wrong: m.nWrong.Load(),
		Burnt: m.nBurnt.Load(), Refused: m.nRefused.Load(), Limited: m.nLimited.Load()}
}
