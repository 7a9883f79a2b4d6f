package tlstake

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"hash"
	"slices"
)

// suite is a TLS 1.3 cipher suite: its AEAD's key length and
// constructor, and its HKDF hash. Only TLS_AES_128_GCM_SHA256 is taken
// over: what Go's client (reach's) picks on hardware with AES; its record
// layer is tested against crypto/tls and RFC 8448's trace. Another suite
// (a TLS-inspecting proxy's choice, a client without AES instructions)
// stays with crypto/tls.
type suite struct {
	keyLen int
	hash   func() hash.Hash
	aead   func(key []byte) (cipher.AEAD, error)
}

func aesGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

var suiteAES128 = &suite{16, sha256.New, aesGCM}

// suiteOf returns TLS 1.3 suite id's, or nil.
func suiteOf(id uint16) *suite {
	if id == tls.TLS_AES_128_GCM_SHA256 {
		return suiteAES128
	}
	return nil
}

// expandLabel is RFC 8446 §7.1's HKDF-Expand-Label with an empty context.
func expandLabel(h func() hash.Hash, secret []byte, label string, n int) ([]byte, error) {
	info := make([]byte, 0, 2+1+6+len(label)+1)
	info = binary.BigEndian.AppendUint16(info, uint16(n))
	info = append(info, byte(6+len(label)))
	info = append(info, "tls13 "...)
	info = append(info, label...)
	info = append(info, 0)
	return hkdf.Expand(h, secret, string(info), n)
}

// errCounter: a direction sealed or opened 2^64 records (never in
// practice: KeyUpdate resets the counter long before).
var errCounter = errors.New("tlstake: record counter exhausted")

// dir is one direction's traffic keys (§7.2): its current secret, the
// IV derived from it, the record counter, and the AEAD, which Idle
// drops and the next record rebuilds (the secret is all it needs).
type dir struct {
	s      *suite
	secret [32]byte // s.hash's size
	iv     [12]byte
	seq    uint64
	aead   cipher.AEAD // nil: rebuild before use
	nonce  [12]byte    // the current record's (a field: no allocation)
}

// init sets the direction's secret (a new one: counter 0).
func (d *dir) init(s *suite, secret []byte) error {
	if len(secret) != s.hash().Size() {
		return errors.New("tlstake: traffic secret of the wrong length")
	}
	d.s = s
	clear(d.secret[:])
	copy(d.secret[:], secret)
	iv, err := expandLabel(s.hash, secret, "iv", len(d.iv))
	if err != nil {
		return err
	}
	copy(d.iv[:], iv)
	d.seq, d.aead = 0, nil
	return d.key()
}

// key builds the AEAD from the secret if it was dropped.
func (d *dir) key() error {
	if d.aead != nil {
		return nil
	}
	k, err := expandLabel(d.s.hash, d.secret[:d.s.hash().Size()], "key", d.s.keyLen)
	if err != nil {
		return err
	}
	d.aead, err = d.s.aead(k)
	clear(k)
	return err
}

// update moves to the next traffic secret (§7.2, KeyUpdate).
func (d *dir) update() error {
	n := d.s.hash().Size()
	next, err := expandLabel(d.s.hash, d.secret[:n], "traffic upd", n)
	if err != nil {
		return err
	}
	err = d.init(d.s, next)
	clear(next)
	return err
}

// step sets the nonce of the next record (§5.3) and counts it.
func (d *dir) step() error {
	if d.seq == ^uint64(0) {
		return errCounter
	}
	if err := d.key(); err != nil {
		return err
	}
	d.nonce = d.iv
	var ctr [8]byte
	binary.BigEndian.PutUint64(ctr[:], d.seq)
	for i, b := range ctr {
		d.nonce[4+i] ^= b
	}
	d.seq++
	return nil
}

// seal appends one record of typ holding plain (≤ maxPlaintext) to dst.
func (d *dir) seal(dst []byte, typ byte, plain []byte) ([]byte, error) {
	if err := d.step(); err != nil {
		return dst, err
	}
	h := len(dst)
	n := len(plain) + 1 + d.aead.Overhead()
	dst = slices.Grow(dst, recordHeaderLen+n) // sealed in place below
	dst = append(dst, typeAppData, 3, 3, byte(n>>8), byte(n))
	dst = append(dst, plain...)
	dst = append(dst, typ)
	inner := dst[h+recordHeaderLen:]
	d.aead.Seal(inner[:0], d.nonce[:], inner, dst[h:h+recordHeaderLen])
	return dst[:h+recordHeaderLen+n], nil
}

// open opens rec (a whole record, header first) in place: its content
// type and content.
func (d *dir) open(rec []byte) (byte, []byte, error) {
	if err := d.step(); err != nil {
		return 0, nil, err
	}
	ct := rec[recordHeaderLen:]
	plain, err := d.aead.Open(ct[:0], d.nonce[:], ct, rec[:recordHeaderLen])
	if err != nil {
		return 0, nil, errBadMAC
	}
	// §5.4: the whole TLSInnerPlaintext, padding included, is at most
	// 2^14+1 bytes (crypto/tls refuses a longer one the same way).
	if len(plain) > maxPlaintext+1 {
		return 0, nil, errOverflow
	}
	// The content type is the last byte that is not 0 (§5.4's padding).
	i := len(plain) - 1
	for i >= 0 && plain[i] == 0 {
		i--
	}
	if i < 0 {
		return 0, nil, errNoType
	}
	return plain[i], plain[:i], nil
}
