// Package shortcode turns a secret payload (a transfer ticket) into a
// short human code such as "7-kato-bira-zemo" and back, with a rendezvous
// server as the mailbox in between.
//
// The number is the slot the server keeps the payload under; the words
// (3 × 11 bits) never reach the server. From the code, the server's peer
// ID and the slot, Argon2id (RFC 9106's second recommended setting: 3
// passes, 64 MiB) stretches a key, and HKDF-SHA256 splits it into a proof
// and a sealing key. The server stores the SHA-256 of the proof and the
// payload sealed with XChaCha20-Poly1305; it hands the sealed payload,
// once, to whoever shows the proof, and burns the slot after a few wrong
// proofs (rendezvous.CodeConfig). A blob that does not open with the
// code's key (a server that lies) is ErrForged: nothing is dialled. The
// threat model is in docs/security.md, "Short codes".
package shortcode

import (
	"context"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/reachp2p/reach/rendezvous"
)

// Words is how many words a code has after its number.
const Words = 3

// SecretBits is the entropy of a code's words (what a guesser must find).
const SecretBits = Words * WordBits

// DefaultTTL is how long a code waits for its receiver unless told
// otherwise (the server may cap it).
const DefaultTTL = rendezvous.DefaultCodeTTL

// Argon2id parameters (RFC 9106, section 4, second recommended option).
const (
	argonTime    = 3
	argonMemory  = 64 * 1024 // KiB
	argonThreads = 4
)

// Named errors; the mailbox's own (rendezvous.ErrCodeUnknown,
// ErrCodeWrong, ErrCodeUsed, ErrCodeBurnt, ErrCodeExpired, ErrNoMailbox)
// come through as they are.
var (
	// ErrBadCode: a string is not a well-formed code (number, then
	// three words of the list).
	ErrBadCode = errors.New("shortcode: malformed code")
	// ErrForged: the server handed over a blob that the code's key does
	// not open: it was not sealed by whoever made the code.
	ErrForged = errors.New("shortcode: the server's answer was not sealed with this code")
)

// Code is a parsed short code.
type Code struct {
	Slot  uint32
	Words [Words]uint16
}

// String returns the code's text form, "7-kato-bira-zemo".
func (c Code) String() string {
	var b strings.Builder
	b.WriteString(strconv.FormatUint(uint64(c.Slot), 10))
	for _, w := range c.Words {
		b.WriteByte('-')
		b.WriteString(Word(w))
	}
	return b.String()
}

// Parse reads a code. Case, surrounding space, and spaces or underscores
// in place of dashes are forgiven. Errors wrap ErrBadCode.
func Parse(s string) (Code, error) {
	f := strings.FieldsFunc(strings.ToLower(strings.TrimSpace(s)), func(r rune) bool {
		return r == '-' || r == ' ' || r == '_' || r == '\t'
	})
	var c Code
	if len(f) != 1+Words {
		return c, fmt.Errorf("%w: want a number and %d words (like 7-kato-bira-zemo), got %d parts", ErrBadCode, Words, len(f))
	}
	n, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil || n == 0 {
		return c, fmt.Errorf("%w: %q is not a slot number", ErrBadCode, f[0])
	}
	c.Slot = uint32(n)
	for i, w := range f[1:] {
		idx, ok := WordIndex(w)
		if !ok {
			return c, fmt.Errorf("%w: %q is not one of its words (mistyped?)", ErrBadCode, w)
		}
		c.Words[i] = idx
	}
	return c, nil
}

// LooksLikeCode reports whether s has a code's shape (starts with a
// number and a separator), as opposed to a ticket.
func LooksLikeCode(s string) bool {
	s = strings.TrimSpace(s)
	i := strings.IndexAny(s, "-_ ")
	if i <= 0 {
		return false
	}
	_, err := strconv.ParseUint(s[:i], 10, 32)
	return err == nil
}

// keys derives the proof shown to the server and the sealing key from
// the code and the server's peer ID. The salt binds both to the server
// and the slot, so one stretched guess is worth one slot of one server.
func (c Code) keys(server rendezvous.ServerAddr) (proof, seal, ad []byte, err error) {
	ad = []byte("reach shortcode v1\x00")
	ad = append(ad, server.ID[:]...)
	ad = binary.BigEndian.AppendUint32(ad, c.Slot)
	secret := c.String()[len(strconv.FormatUint(uint64(c.Slot), 10))+1:]
	k := argon2.IDKey([]byte(secret), ad, argonTime, argonMemory, argonThreads, 32)
	if proof, err = hkdf.Key(sha256.New, k, ad, "proof", 32); err != nil {
		return nil, nil, nil, err
	}
	if seal, err = hkdf.Key(sha256.New, k, ad, "seal", chacha20poly1305.KeySize); err != nil {
		return nil, nil, nil, err
	}
	return proof, seal, ad, nil
}

// randomWords draws the words of a new code.
func randomWords() ([Words]uint16, error) {
	var w [Words]uint16
	for i := range w {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(listLen)))
		if err != nil {
			return w, err
		}
		w[i] = uint16(n.Int64())
	}
	return w, nil
}

// Publish stores payload (at most about 980 bytes) in mb under a new code
// for ttl (zero: DefaultTTL) and returns the code and where it is kept.
// Errors are mb's: rendezvous.ErrNoMailbox, ErrBusy, ErrRateLimited, ...
func Publish(ctx context.Context, mb *rendezvous.Mailbox, payload []byte, ttl time.Duration) (Code, rendezvous.CodeReceipt, error) {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	var code Code
	r, err := mb.Put(ctx, ttl, func(server rendezvous.ServerAddr, slot uint32) ([]byte, []byte, error) {
		w, err := randomWords()
		if err != nil {
			return nil, nil, err
		}
		code = Code{Slot: slot, Words: w}
		proof, key, ad, err := code.keys(server)
		if err != nil {
			return nil, nil, err
		}
		aead, err := chacha20poly1305.NewX(key)
		if err != nil {
			return nil, nil, err
		}
		nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(payload)+aead.Overhead())
		rand.Read(nonce)
		blob := aead.Seal(nonce, nonce, payload, ad)
		if len(blob) > rendezvous.MaxCodeBlob {
			return nil, nil, fmt.Errorf("shortcode: payload of %d bytes is too large", len(payload))
		}
		return proof, blob, nil
	})
	if err != nil {
		return Code{}, rendezvous.CodeReceipt{}, err
	}
	return code, r, nil
}

// Claim fetches and opens the payload of code from mb, once. Errors:
// rendezvous.ErrCodeUnknown (no such number), ErrCodeWrong (the words are
// not this code's), ErrCodeUsed, ErrCodeBurnt, ErrCodeExpired,
// ErrForged, and mb's.
func Claim(ctx context.Context, mb *rendezvous.Mailbox, code Code) ([]byte, error) {
	var key, ad []byte
	blob, _, err := mb.Claim(ctx, code.Slot, func(server rendezvous.ServerAddr) ([]byte, error) {
		proof, k, a, err := code.keys(server)
		key, ad = k, a
		return proof, err
	})
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	if len(blob) < aead.NonceSize()+aead.Overhead() {
		return nil, ErrForged
	}
	payload, err := aead.Open(nil, blob[:aead.NonceSize()], blob[aead.NonceSize():], ad)
	if err != nil {
		return nil, ErrForged
	}
	return payload, nil
}
