package relay

import (
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/reachp2p/reach/identity"
)

// ALPNKeyProof is the relay's ALPN for byte-stream links (TLS, WebSocket)
// whose node proves its key in HELLO instead of with a TLS client
// certificate (docs/protocol.md, "Key proof in HELLO"): the server asks
// for no certificate, so it neither parses nor keeps one (about 2.5 KB per
// link). A node offers it before ALPN; a server without it picks ALPN and
// asks for the certificate, as before.
const ALPNKeyProof = "reach-relay/2"

// KeyProofALPNs implements rendezvous.KeyProofProtocol: the server's TCP
// ports offer ALPNRecord and ALPNKeyProof, in this order of preference,
// and hand their connections to ServeTLS.
func (s *Server) KeyProofALPNs() []string {
	if s.noRecords {
		return []string{ALPNKeyProof} // a test's server of the last age
	}
	return []string{ALPNRecord, ALPNKeyProof}
}

// keyProofLabel is the TLS exporter label of the key proof; keyProofPrefix
// starts the signed message (no other signature of a node's key starts
// so).
const keyProofLabel = "EXPORTER-reach-relay-key-proof"

var keyProofPrefix = []byte("reach relay key proof v1\x00")

// keyProofLen is a proof's length: the node's key and its signature.
const keyProofLen = identityLen + ed25519.SignatureSize

// ErrKeyProof: a link under ALPNKeyProof whose HELLO held no proof of the
// node's key, or one that does not verify for this connection (a wrong
// signature, or one made for another connection).
var ErrKeyProof = errors.New("relay: no valid proof of the node's key")

// Why a key proof was refused (ERROR key_proof's reason).
var (
	errProofMissing = fmt.Errorf("%w: HELLO holds no key proof", ErrKeyProof)
	errProofBad     = fmt.Errorf("%w: the signature does not verify for this connection", ErrKeyProof)
)

// keyProofMessage is what a node signs: bound to this TLS connection by
// its exporter (a proof made on one connection fails on any other).
func keyProofMessage(cs tls.ConnectionState) ([]byte, error) {
	ekm, err := cs.ExportKeyingMaterial(keyProofLabel, nil, 32)
	if err != nil {
		return nil, err
	}
	return append(append([]byte(nil), keyProofPrefix...), ekm...), nil
}

// appendKeyProof appends k's proof for the connection to b (a HELLO body,
// before the token).
func appendKeyProof(b []byte, k *identity.Key, cs tls.ConnectionState) ([]byte, error) {
	msg, err := keyProofMessage(cs)
	if err != nil {
		return nil, err
	}
	id := k.ID()
	return append(append(b, id[:]...), k.Sign(msg)...), nil
}

// checkKeyProof checks the proof that starts a HELLO body under
// ALPNKeyProof: the node's ID and the rest of the body (its token).
func checkKeyProof(cs tls.ConnectionState, body []byte) (identity.PeerID, []byte, error) {
	if len(body) < keyProofLen {
		return identity.PeerID{}, nil, errProofMissing
	}
	id, err := identity.PeerIDFromPublicKey(ed25519.PublicKey(body[:identityLen]))
	if err != nil || id.IsZero() {
		return identity.PeerID{}, nil, errProofBad
	}
	msg, err := keyProofMessage(cs)
	if err != nil || !identity.Verify(id, msg, body[identityLen:keyProofLen]) {
		return identity.PeerID{}, nil, errProofBad
	}
	return id, body[keyProofLen:], nil
}
