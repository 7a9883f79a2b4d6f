package identity

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzParsePeerID parses arbitrary strings as peer IDs
// (docs/security.md, "Fuzzing"). Properties: errors wrap ErrBadPeerID; a
// parsed ID prints as the input, trimmed and lower-cased (one text form
// per key); the bytes, read as a key, round-trip through String.
func FuzzParsePeerID(f *testing.F) {
	for i := range 3 {
		k, err := KeyFromSeed(bytes.Repeat([]byte{byte(i)}, 32))
		if err != nil {
			f.Fatal(err)
		}
		s := k.ID().String()
		f.Add(s, []byte(s))
		f.Add(" "+strings.ToUpper(s)+"\n", []byte(k.ID().PublicKey()))
		f.Add(s[:IDLen-1]+"a", []byte(s[:10]))
	}
	f.Add("", []byte{})
	f.Add(strings.Repeat("a", IDLen), bytes.Repeat([]byte{0xff}, 32))
	f.Add(strings.Repeat("1", IDLen), []byte("x"))
	f.Add(strings.Repeat("\u0130", IDLen/2), []byte("x")) // lower-cases to 3 bytes
	f.Fuzz(func(t *testing.T, s string, raw []byte) {
		id, err := ParsePeerID(s)
		if err != nil {
			if !errors.Is(err, ErrBadPeerID) {
				t.Fatalf("error %v does not wrap ErrBadPeerID", err)
			}
		} else if got, want := id.String(), strings.ToLower(strings.TrimSpace(s)); got != want {
			t.Fatalf("%q parsed to an ID that prints as %q", s, got)
		}
		var u PeerID
		if uerr := u.UnmarshalText([]byte(s)); (uerr == nil) != (err == nil) || u != id {
			t.Fatalf("UnmarshalText(%q) = %v, %v; ParsePeerID: %v, %v", s, u, uerr, id, err)
		}
		// Any 32 bytes but a small-order point are an ID whose text form
		// parses back.
		if len(raw) == 32 && smallOrder(raw) {
			if _, err := PeerIDFromPublicKey(raw); !errors.Is(err, ErrBadPeerID) {
				t.Fatalf("small-order key %x accepted: %v", raw, err)
			}
		} else if len(raw) == 32 {
			id, err := PeerIDFromPublicKey(raw)
			if err != nil {
				t.Fatal(err)
			}
			back, err := ParsePeerID(id.String())
			if err != nil || back != id || len(id.String()) != IDLen {
				t.Fatalf("%x prints as %q, which parses to %x, %v", raw, id.String(), back, err)
			}
		} else if _, err := PeerIDFromPublicKey(raw); !errors.Is(err, ErrBadPeerID) {
			t.Fatalf("%d-byte key accepted: %v", len(raw), err)
		}
	})
}
