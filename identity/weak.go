package identity

import "filippo.io/edwards25519"

// smallOrder reports whether pub, an encoded Ed25519 public key, is a
// point of small order (the identity and the other points of order 2, 4
// or 8): a key no node can have. (An encoding that is no point of the
// curve is not one: ed25519.Verify fails for it anyway.) Go's
// ed25519.Verify accepts a signature such as 01 00…00 | 00…00 from the
// identity point for every message, so without this check anyone could
// prove such an ID (a TLS certificate self-signed "by" it, or a relay key
// proof). A key made by ed25519.GenerateKey is never one of them.
func smallOrder(pub []byte) bool {
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return false
	}
	return new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1
}
