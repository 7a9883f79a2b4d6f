package tlstake

import (
	"bytes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// refEnd is how the reference reader says a stream ends.
type refEnd int

const (
	refEOF       refEnd = iota // at a record boundary, no close_notify
	refTruncated               // inside a record
	refClose                   // close_notify
	refAlert                   // another alert
	refBad                     // a record this side refuses (an alert goes back)
)

// refKeys is one direction's key and IV, derived from a secret apart
// from dir (TestRFC8448Keys checks expandLabel).
type refKeys struct {
	secret []byte
	aead   cipher.AEAD
	iv     []byte
	seq    uint64
}

func newRefKeys(t testing.TB, secret []byte) *refKeys {
	key, err := expandLabel(suiteAES128.hash, secret, "key", 16)
	if err != nil {
		t.Fatal(err)
	}
	iv, err := expandLabel(suiteAES128.hash, secret, "iv", 12)
	if err != nil {
		t.Fatal(err)
	}
	a, err := aesGCM(key)
	if err != nil {
		t.Fatal(err)
	}
	return &refKeys{secret: secret, aead: a, iv: iv}
}

// open opens one record (header first): nil on failure.
func (k *refKeys) open(rec []byte) []byte {
	nonce := bytes.Clone(k.iv)
	var ctr [8]byte
	binary.BigEndian.PutUint64(ctr[:], k.seq)
	for i := range ctr {
		nonce[4+i] ^= ctr[i]
	}
	k.seq++
	p, err := k.aead.Open(nil, nonce, rec[recordHeaderLen:], rec[:recordHeaderLen])
	if err != nil {
		return nil
	}
	return p
}

// refRead is what a reader that follows RFC 8446 (and crypto/tls's
// limit on records without data) makes of in: the application data, and
// how it ends.
func refRead(t testing.TB, secret, in []byte) ([]byte, refEnd) {
	k := newRefKeys(t, secret)
	var plain, hs []byte
	useless := 0
	for {
		if len(in) == 0 {
			return plain, refEOF
		}
		if len(in) >= recordHeaderLen && (in[0] != typeAppData || int(binary.BigEndian.Uint16(in[3:])) > maxCiphertext) {
			return plain, refBad
		}
		if len(in) < recordHeaderLen || len(in) < recordHeaderLen+int(binary.BigEndian.Uint16(in[3:])) {
			return plain, refTruncated
		}
		n := recordHeaderLen + int(binary.BigEndian.Uint16(in[3:]))
		inner := k.open(in[:n])
		in = in[n:]
		if inner == nil || len(inner) > maxPlaintext+1 {
			return plain, refBad
		}
		inner = bytes.TrimRight(inner, "\x00")
		if len(inner) == 0 {
			return plain, refBad
		}
		typ, content := inner[len(inner)-1], inner[:len(inner)-1]
		if len(hs) > 0 && typ != typeHandshake {
			return plain, refBad
		}
		if typ == typeAppData && len(content) > 0 {
			useless = 0
		} else if useless++; useless > maxUselessRecords {
			return plain, refBad
		}
		switch typ {
		case typeAppData:
			plain = append(plain, content...)
		case typeAlert:
			switch {
			case len(content) != 2:
				return plain, refBad
			case content[1] == 0:
				return plain, refClose
			case content[1] != 90:
				return plain, refAlert
			}
		case typeHandshake:
			hs = append(hs, content...)
			if len(content) == 0 || len(hs) > 5 || hs[0] != 24 ||
				len(hs) >= 4 && !bytes.Equal(hs[1:4], []byte{0, 0, 1}) || len(hs) == 5 && hs[4] > 1 {
				return plain, refBad
			}
			if len(hs) == 5 {
				next, err := expandLabel(suiteAES128.hash, k.secret, "traffic upd", 32)
				if err != nil {
					t.Fatal(err)
				}
				k, hs = newRefKeys(t, next), nil
			}
		default:
			return plain, refBad
		}
	}
}

// fuzzSeeds are valid client streams under RFC 8448's client secret:
// data, padding, a KeyUpdate whole and split, alerts, empty records.
func fuzzSeeds(t testing.TB) [][]byte {
	var d dir
	if err := d.init(suiteAES128, unhex(t, rfcClientSecret)); err != nil {
		t.Fatal(err)
	}
	seal := func(w []byte, typ byte, content []byte, pad int) []byte {
		w, err := sealPadded(&d, w, typ, content, pad)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	keyUpdate := func(w []byte, parts ...[]byte) []byte {
		for _, p := range parts {
			w = seal(w, typeHandshake, p, 0)
		}
		if err := d.update(); err != nil {
			t.Fatal(err)
		}
		return w
	}
	var seeds [][]byte
	w := seal(nil, typeAppData, []byte("hello"), 0)
	w = seal(w, typeAppData, nil, 3)
	w = seal(w, typeAppData, bytes.Repeat([]byte{7}, 300), 20)
	w = keyUpdate(w, []byte{24, 0, 0, 1, 1})
	w = seal(w, typeAppData, []byte("after a key update"), 0)
	w = keyUpdate(w, []byte{24, 0}, []byte{0, 1, 0})
	w = seal(w, typeAlert, []byte{1, 90}, 0)
	w = seal(w, typeAppData, []byte("after a split key update"), 0)
	seeds = append(seeds, bytes.Clone(w))
	saved := d
	seeds = append(seeds, seal(bytes.Clone(w), typeAlert, []byte{1, 0}, 0))
	d = saved
	seeds = append(seeds, seal(bytes.Clone(w), typeAlert, []byte{2, 40}, 0))
	seeds = append(seeds, bytes.Clone(unhex(t, rfcClientAppRecord)))
	return seeds
}

// FuzzConnRead: whatever arrives after the handshake, a Conn never
// panics, returns exactly the application data of the records that open
// (as refRead reads them), in order, and ends as refRead says: EOF at a
// close_notify or a clean end, ErrUnexpectedEOF inside a record, ErrAlert
// for the peer's alert, ErrRecord (and one fatal alert sent, under the
// server's key) for a record it refuses. The first two bytes choose how
// the bytes arrive (at most chunk per read) and the reader's buffer size.
func FuzzConnRead(f *testing.F) {
	for i, s := range fuzzSeeds(f) {
		f.Add(append([]byte{0, 0}, s...))
		f.Add(append([]byte{byte(i + 1), byte(3 * i)}, s...))
	}
	f.Add([]byte{0, 0, 23, 3, 3, 0, 0})
	f.Add([]byte{1, 1, 21, 3, 3, 0, 2, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		chunk, rsize, in := int(data[0]), 1+int(data[1])*64, data[2:]
		raw := &memConn{r: bytes.Clone(in), chunk: chunk}
		c := &Conn{raw: raw}
		if err := c.in.init(suiteAES128, unhex(t, rfcClientSecret)); err != nil {
			t.Fatal(err)
		}
		if err := c.out.init(suiteAES128, unhex(t, rfcServerSecret)); err != nil {
			t.Fatal(err)
		}
		var got []byte
		buf := make([]byte, rsize)
		var err error
		for err == nil {
			var n int
			n, err = c.Read(buf)
			got = append(got, buf[:n]...)
		}
		want, end := refRead(t, unhex(t, rfcClientSecret), in)
		if !bytes.Equal(got, want) {
			t.Fatalf("read %d bytes, want the %d of the records that open (%v)", len(got), len(want), err)
		}
		var re *recordError
		switch end {
		case refEOF, refClose:
			if err != io.EOF {
				t.Fatalf("ended with %v, want EOF", err)
			}
		case refTruncated:
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("ended with %v, want ErrUnexpectedEOF", err)
			}
		case refAlert:
			if !errors.Is(err, ErrAlert) {
				t.Fatalf("ended with %v, want ErrAlert", err)
			}
		case refBad:
			if !errors.As(err, &re) || !errors.Is(err, ErrRecord) {
				t.Fatalf("ended with %v, want ErrRecord", err)
			}
		}
		// What was written back: one fatal alert after a refused record,
		// nothing otherwise.
		sent := raw.w.Bytes()
		if end != refBad {
			if len(sent) != 0 {
				t.Fatalf("wrote %d bytes after %v", len(sent), err)
			}
			return
		}
		k := newRefKeys(t, unhex(t, rfcServerSecret))
		if len(sent) < recordHeaderLen || len(sent) != recordHeaderLen+int(binary.BigEndian.Uint16(sent[3:])) {
			t.Fatalf("wrote %x, want one alert record", sent)
		}
		if a := k.open(sent); !bytes.Equal(a, []byte{2, re.alert, typeAlert}) {
			t.Fatalf("wrote a record holding %x, want the fatal alert %d", a, re.alert)
		}
		// The error stays.
		if _, err2 := c.Read(buf); !errors.Is(err2, ErrRecord) {
			t.Fatalf("read after %v: %v", err, err2)
		}
	})
}
