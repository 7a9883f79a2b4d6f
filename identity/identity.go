// Package identity holds a peer's long-term Ed25519 key and its printable
// peer ID, loads and saves keys, and makes and checks the self-signed TLS 1.3
// certificates that pin a session to the key a peer dialled.
//
// A peer ID is the lowercase, unpadded base32 encoding of the 32-byte public
// key followed by a 3-byte checksum (the first bytes of SHA-256 over a domain
// tag and the key). It is always 56 characters long, so a truncated or
// mistyped ID is rejected by ParsePeerID with ErrBadPeerID rather than naming
// a different peer.
package identity

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// IDLen is the length of a printable peer ID in characters.
const IDLen = 56

const checksumLen = 3

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Named errors. Test with errors.Is.
var (
	// ErrBadPeerID: a string is not a well-formed peer ID (wrong length,
	// alphabet or checksum).
	ErrBadPeerID = errors.New("identity: malformed peer ID")
	// ErrKeyPermissions: a key file can be read by group or others.
	ErrKeyPermissions = errors.New("identity: key file is readable by other users")
	// ErrBadKeyFile: a key file does not hold a reach Ed25519 private key.
	ErrBadKeyFile = errors.New("identity: not a reach private key file")
)

// PeerID is a peer's public key. Its zero value is not a valid ID.
type PeerID [ed25519.PublicKeySize]byte

// PeerIDFromPublicKey converts an Ed25519 public key.
func PeerIDFromPublicKey(pub ed25519.PublicKey) (PeerID, error) {
	var id PeerID
	if len(pub) != ed25519.PublicKeySize {
		return id, fmt.Errorf("%w: public key is %d bytes, want %d", ErrBadPeerID, len(pub), ed25519.PublicKeySize)
	}
	if smallOrder(pub) {
		return id, fmt.Errorf("%w: public key is a point of small order (no node's key)", ErrBadPeerID)
	}
	copy(id[:], pub)
	return id, nil
}

func checksum(pub []byte) []byte {
	h := sha256.New()
	h.Write([]byte("reach peer id v1"))
	h.Write(pub)
	return h.Sum(nil)[:checksumLen]
}

// String returns the 56-character printable form.
func (id PeerID) String() string {
	buf := make([]byte, 0, len(id)+checksumLen)
	buf = append(buf, id[:]...)
	buf = append(buf, checksum(id[:])...)
	return idEncoding.EncodeToString(buf)
}

// Short returns the first 10 characters, for logs.
func (id PeerID) Short() string { return id.String()[:10] }

// IsZero reports whether id is the zero value.
func (id PeerID) IsZero() bool { return id == PeerID{} }

// PublicKey returns the Ed25519 public key.
func (id PeerID) PublicKey() ed25519.PublicKey { return ed25519.PublicKey(bytes.Clone(id[:])) }

// MarshalText implements encoding.TextMarshaler.
func (id PeerID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *PeerID) UnmarshalText(b []byte) error {
	p, err := ParsePeerID(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}

// ParsePeerID parses the printable form. Surrounding space is ignored and
// upper case is accepted; anything else that is not exactly a valid ID
// returns an error wrapping ErrBadPeerID.
func ParsePeerID(s string) (PeerID, error) {
	var id PeerID
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) != IDLen {
		return id, fmt.Errorf("%w: %d characters, want %d", ErrBadPeerID, len(s), IDLen)
	}
	raw, err := idEncoding.DecodeString(s)
	if err != nil || len(raw) != len(id)+checksumLen {
		return id, fmt.Errorf("%w: not base32", ErrBadPeerID)
	}
	if !bytes.Equal(checksum(raw[:len(id)]), raw[len(id):]) {
		return id, fmt.Errorf("%w: checksum mismatch (typo?)", ErrBadPeerID)
	}
	copy(id[:], raw)
	return id, nil
}

// Key is a peer's private key.
type Key struct {
	priv ed25519.PrivateKey
}

// GenerateKey makes a new random key.
func GenerateKey() (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Key{priv: priv}, nil
}

// KeyFromSeed builds a key from a 32-byte Ed25519 seed.
func KeyFromSeed(seed []byte) (*Key, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%w: seed is %d bytes, want %d", ErrBadKeyFile, len(seed), ed25519.SeedSize)
	}
	return &Key{priv: ed25519.NewKeyFromSeed(seed)}, nil
}

// ID returns the key's peer ID.
func (k *Key) ID() PeerID {
	var id PeerID
	copy(id[:], k.priv.Public().(ed25519.PublicKey))
	return id
}

// Private returns the Ed25519 private key (for TLS).
func (k *Key) Private() ed25519.PrivateKey { return k.priv }

// Sign signs msg with the key.
func (k *Key) Sign(msg []byte) []byte { return ed25519.Sign(k.priv, msg) }

// Verify checks a signature made by id's key. It is false for an id that
// is no node's key (a small-order point, for which some signature
// verifies for every message).
func Verify(id PeerID, msg, sig []byte) bool {
	return !smallOrder(id[:]) && ed25519.Verify(id[:], msg, sig)
}

const pemType = "REACH ED25519 PRIVATE KEY"

// SaveKey writes k to path with mode 0600, creating parent directories
// (mode 0700). It refuses to overwrite an existing file.
func SaveKey(path string, k *Key) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	data := pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: k.priv.Seed()})
	// Written whole to a temporary file, then linked into place: a
	// process that loads path at the same moment (two commands started
	// at once with the default key) never reads a half-written key, and
	// of two that create it, one wins and the other fails with
	// fs.ErrExist.
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return &fs.PathError{Op: "create", Path: path, Err: fs.ErrExist}
		}
		return err
	}
	return nil
}

// LoadKey reads a key written by SaveKey. A file readable by group or others
// is refused with an error wrapping ErrKeyPermissions.
func LoadKey(path string) (*Key, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; run chmod 600 %s", ErrKeyPermissions, path, st.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != pemType {
		return nil, fmt.Errorf("%w: %s", ErrBadKeyFile, path)
	}
	return KeyFromSeed(block.Bytes)
}

// LoadOrCreateKey loads the key at path, or creates and saves a new one if
// the file does not exist. created reports which happened.
func LoadOrCreateKey(path string) (k *Key, created bool, err error) {
	k, err = LoadKey(path)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	k, err = GenerateKey()
	if err != nil {
		return nil, false, err
	}
	if err := SaveKey(path, k); err != nil {
		if errors.Is(err, fs.ErrExist) { // another process created it first
			k, err = LoadKey(path)
			return k, false, err
		}
		return nil, false, err
	}
	return k, true, nil
}
