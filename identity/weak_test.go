package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"
)

// TestSmallOrderKeys: the identity point's encoding (01 00…00) and the
// other small-order points are no node's key: a signature that Go's
// ed25519.Verify accepts for any message under them does not verify here,
// and they are not a PeerID; real keys are.
func TestSmallOrderKeys(t *testing.T) {
	identityPoint := make([]byte, 32)
	identityPoint[0] = 1
	// A point of order 2: y = -1 (p-1, little endian).
	order2 := []byte{0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}
	// R = the identity point, S = 0: R == [S]B - [k]A for A of small order
	// when [k]A happens to be the identity, which for A = identity is
	// always.
	sig := make([]byte, 64)
	sig[0] = 1
	msg := []byte("reach relay key proof v1\x00 any message")
	if !ed25519.Verify(identityPoint, msg, sig) {
		t.Fatal("the premise: ed25519.Verify accepts the forged signature for the identity point")
	}
	for name, pub := range map[string][]byte{"identity": identityPoint, "order 2": order2} {
		var id PeerID
		copy(id[:], pub)
		if Verify(id, msg, sig) {
			t.Errorf("%s: Verify accepted a forged signature", name)
		}
		if _, err := PeerIDFromPublicKey(pub); !errors.Is(err, ErrBadPeerID) {
			t.Errorf("%s: PeerIDFromPublicKey = %v, want ErrBadPeerID", name, err)
		}
	}
	for range 100 {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id, err := PeerIDFromPublicKey(pub)
		if err != nil {
			t.Fatalf("a real key: %v", err)
		}
		if !Verify(id, msg, ed25519.Sign(priv, msg)) {
			t.Fatal("a real key's signature did not verify")
		}
	}
}
