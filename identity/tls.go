package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"
)

// ErrWrongPeer: the remote side proved a key other than the one dialled.
var ErrWrongPeer = errors.New("identity: remote peer has a different key than the one dialled")

// ErrBadCertificate: the remote certificate is not a reach self-signed
// Ed25519 certificate.
var ErrBadCertificate = errors.New("identity: remote certificate is not a valid reach certificate")

// WrongPeerError says which key was wanted and which was proved. It
// unwraps to ErrWrongPeer.
type WrongPeerError struct {
	Want, Got PeerID
}

func (e *WrongPeerError) Error() string {
	return fmt.Sprintf("identity: dialled peer %s but the remote proved key %s", e.Want, e.Got)
}

// Unwrap returns ErrWrongPeer.
func (e *WrongPeerError) Unwrap() error { return ErrWrongPeer }

// Certificate returns a self-signed TLS certificate for the key. It is
// valid from one hour ago for ten years; peers check the key, not the dates.
func (k *Key) Certificate() (tls.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: k.ID().String()},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.priv.Public(), k.priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k.priv}, nil
}

// PeerIDFromCerts checks a raw certificate chain as presented in a TLS
// handshake (one self-signed Ed25519 certificate) and returns its peer ID.
func PeerIDFromCerts(rawCerts [][]byte) (PeerID, error) {
	var id PeerID
	if len(rawCerts) != 1 {
		return id, fmt.Errorf("%w: %d certificates, want 1", ErrBadCertificate, len(rawCerts))
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return id, fmt.Errorf("%w: %v", ErrBadCertificate, err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return id, fmt.Errorf("%w: key is not Ed25519", ErrBadCertificate)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		return id, fmt.Errorf("%w: not self-signed: %v", ErrBadCertificate, err)
	}
	return PeerIDFromPublicKey(pub)
}

// PeerIDFromState returns the peer ID proved in a completed handshake.
func PeerIDFromState(cs tls.ConnectionState) (PeerID, error) {
	raw := make([][]byte, 0, len(cs.PeerCertificates))
	for _, c := range cs.PeerCertificates {
		raw = append(raw, c.Raw)
	}
	return PeerIDFromCerts(raw)
}

// Pin records the outcome of a client-side key check so that the caller
// can return the named error even when the TLS stack wraps it in an alert.
type Pin struct {
	mu  sync.Mutex
	err error
}

// Err returns the check's error, if the check failed.
func (p *Pin) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *Pin) set(err error) error {
	p.mu.Lock()
	p.err = err
	p.mu.Unlock()
	return err
}

// ClientTLSConfig returns a TLS 1.3 client config that presents k's
// certificate and accepts the remote only if it proves want's key. After a
// failed handshake, pin.Err() holds a *WrongPeerError or ErrBadCertificate.
func ClientTLSConfig(k *Key, want PeerID, alpn ...string) (cfg *tls.Config, pin *Pin, err error) {
	cert, err := k.Certificate()
	if err != nil {
		return nil, nil, err
	}
	pin = &Pin{}
	cfg = &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate: we pin the key, not a CA chain
		ServerName:         "reach",
		NextProtos:         alpn,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			got, err := PeerIDFromCerts(raw)
			if err != nil {
				return pin.set(err)
			}
			if got != want {
				return pin.set(&WrongPeerError{Want: want, Got: got})
			}
			return nil
		},
	}
	return cfg, pin, nil
}

// ServerTLSConfig returns a TLS 1.3 server config that presents k's
// certificate and requires the client to prove an Ed25519 key of its own;
// any well-formed key is accepted (read it with PeerIDFromState).
func ServerTLSConfig(k *Key, alpn ...string) (*tls.Config, error) {
	cert, err := k.Certificate()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		NextProtos:   alpn,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := PeerIDFromCerts(raw)
			return err
		},
	}, nil
}
