package tlstake

import (
	"bytes"
	"encoding/hex"
	"io"
	"strings"
	"testing"
)

// RFC 8448 section 3 ("Simple 1-RTT Handshake", TLS_AES_128_GCM_SHA256):
// the application traffic secrets, the keys and IVs derived from them,
// and the records sent under them, as the RFC prints them.
const (
	// {server} derive secret "tls13 s ap traffic": expanded (32 octets).
	rfcServerSecret = "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43"
	// {client} derive secret "tls13 c ap traffic": expanded (32 octets).
	rfcClientSecret = "9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5"
	// {server} derive write traffic keys for application data.
	rfcServerKey = "9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56"
	rfcServerIV  = "cf 78 2b 88 dd 83 54 9a ad f1 e9 84"
	// {client} derive write traffic keys for application data.
	rfcClientKey = "17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51"
	rfcClientIV  = "5b 78 92 3d ee 08 57 90 33 e5 23 d9"

	// {server} construct a NewSessionTicket handshake message (205 octets).
	rfcTicket = `04 00 00 c9 00 00 00 1e fa d6 aa c5 02 00 00 00 b2 2c 03 5d 82 93 59 ee
		5f f7 af 4e c9 00 00 00 00 26 2a 64 94 dc 48 6d 2c 8a 34 cb 33 fa 90 bf 1b 00 70 ad
		3c 49 88 83 c9 36 7c 09 a2 be 78 5a bc 55 cd 22 60 97 a3 a9 82 11 72 83 f8 2a 03 a1
		43 ef d3 ff 5d d3 6d 64 e8 61 be 7f d6 1d 28 27 db 27 9c ce 14 50 77 d4 54 a3 66 4d
		4e 6d a4 d2 9e e0 37 25 a6 a4 da fc d0 fc 67 d2 ae a7 05 29 51 3e 3d a2 67 7f a5 90
		6c 5b 3f 7d 8f 92 f2 28 bd a4 0d da 72 14 70 f9 fb f2 97 b5 ae a6 17 64 6f ac 5c 03
		27 2e 97 07 27 c6 21 a7 91 41 ef 5f 7d e6 50 5e 5b fb c3 88 e9 33 43 69 40 93 93 4a
		e4 d3 57 00 08 00 2a 00 04 00 00 04 00`
	// {server} send handshake record: complete record (227 octets), the
	// ticket: the server's record 0 under its application secret.
	rfcTicketRecord = `17 03 03 00 de 3a 6b 8f 90 41 4a 97 d6 95 9c 34 87 68 0d e5 13 4a 2b 24
		0e 6c ff ac 11 6e 95 d4 1d 6a f8 f6 b5 80 dc f3 d1 1d 63 c7 58 db 28 9a
		01 59 40 25 2f 55 71 3e 06 1d c1 3e 07 88 91 a3 8e fb cf 57 53 ad 8e f1
		70 ad 3c 73 53 d1 6d 9d a7 73 b9 ca 7f 2b 9f a1 b6 c0 d4 a3 d0 3f 75 e0
		9c 30 ba 1e 62 97 2a c4 6f 75 f7 b9 81 be 63 43 9b 29 99 ce 13 06 46 15
		13 98 91 d5 e4 c5 b4 06 f1 6e 3f c1 81 a7 7c a4 75 84 00 25 db 2f 0a 77
		f8 1b 5a b0 5b 94 c0 13 46 75 5f 69 23 2c 86 51 9d 86 cb ee ac 87 aa c3
		47 d1 43 f9 60 5d 64 f6 50 db 4d 02 3e 70 e9 52 ca 49 fe 51 37 12 1c 74
		bc 26 97 68 7e 24 87 46 d6 df 35 30 05 f3 bc e1 86 96 12 9c 81 53 55 6b
		3b 6c 67 79 b3 7b f1 59 85 68 4f`
	// {client} send application_data record: complete record (72 octets),
	// the client's record 0; payload 00 01 02 ... 31.
	rfcClientAppRecord = `17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea
		42 f9 14 aa 66 bc ab 3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b
		62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4`
	// {server} send application_data record: complete record (72 octets),
	// the server's record 1 (after the ticket); the same payload.
	rfcServerAppRecord = `17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc
		32 25 d0 5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8
		fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d`
	// {client} send alert record (close_notify): the client's record 1.
	rfcClientAlertRecord = "17 03 03 00 13 c9 87 27 60 65 56 66 b7 4d 7f f1 15 3e fd 6d b6 d0 b0 e3"
	// {server} send alert record (close_notify): the server's record 2.
	rfcServerAlertRecord = "17 03 03 00 13 b5 8f d6 71 66 eb f5 99 d2 47 20 cf be 7e fa 7a 88 64 a9"
)

// unhex decodes the RFC's spaced, wrapped hex.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rfcPayload is the application data both sides send in RFC 8448 §3.
func rfcPayload() []byte {
	p := make([]byte, 50)
	for i := range p {
		p[i] = byte(i)
	}
	return p
}

// The traffic keys and IVs derived from RFC 8448's application secrets
// are the RFC's (§7.1's HKDF-Expand-Label, §7.3's "key" and "iv").
func TestRFC8448Keys(t *testing.T) {
	for _, tc := range []struct{ name, secret, key, iv string }{
		{"server", rfcServerSecret, rfcServerKey, rfcServerIV},
		{"client", rfcClientSecret, rfcClientKey, rfcClientIV},
	} {
		secret := unhex(t, tc.secret)
		key, err := expandLabel(suiteAES128.hash, secret, "key", suiteAES128.keyLen)
		if err != nil || !bytes.Equal(key, unhex(t, tc.key)) {
			t.Errorf("%s key %x (%v), want %s", tc.name, key, err, tc.key)
		}
		var d dir
		if err := d.init(suiteAES128, secret); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(d.iv[:], unhex(t, tc.iv)) {
			t.Errorf("%s iv %x, want %s", tc.name, d.iv, tc.iv)
		}
	}
}

// dir opens RFC 8448's records at their sequence numbers (the ticket
// at the server's 0, its data at 1, its close_notify at 2; the client's
// data at 0, close_notify at 1) and seals the same content into the
// RFC's bytes exactly.
func TestRFC8448Records(t *testing.T) {
	type rec struct {
		typ     byte
		content []byte
		wire    string
	}
	for _, side := range []struct {
		name, secret string
		recs         []rec
	}{
		{"server", rfcServerSecret, []rec{
			{typeHandshake, unhex(t, rfcTicket), rfcTicketRecord},
			{typeAppData, rfcPayload(), rfcServerAppRecord},
			{typeAlert, []byte{1, 0}, rfcServerAlertRecord},
		}},
		{"client", rfcClientSecret, []rec{
			{typeAppData, rfcPayload(), rfcClientAppRecord},
			{typeAlert, []byte{1, 0}, rfcClientAlertRecord},
		}},
	} {
		var in, out dir
		if err := in.init(suiteAES128, unhex(t, side.secret)); err != nil {
			t.Fatal(err)
		}
		out = in
		for i, r := range side.recs {
			wire := unhex(t, r.wire)
			typ, content, err := in.open(bytes.Clone(wire))
			if err != nil || typ != r.typ || !bytes.Equal(content, r.content) {
				t.Errorf("%s record %d: opened type %d, %d bytes, %v; want type %d, the RFC's %d bytes",
					side.name, i, typ, len(content), err, r.typ, len(r.content))
			}
			sealed, err := out.seal(nil, r.typ, r.content)
			if err != nil || !bytes.Equal(sealed, wire) {
				t.Errorf("%s record %d: sealed %x (%v), want the RFC's %x", side.name, i, sealed, err, wire)
			}
		}
	}
}

// A Conn with RFC 8448's secrets reads the client's records (the data,
// then EOF at its close_notify) and writes the server's: its data as
// record 1 (after the ticket crypto/tls would have sent), then its
// close_notify as record 2, byte for byte the RFC's.
func TestRFC8448Conn(t *testing.T) {
	raw := &memConn{r: append(unhex(t, rfcClientAppRecord), unhex(t, rfcClientAlertRecord)...)}
	c := &Conn{raw: raw}
	if err := c.in.init(suiteAES128, unhex(t, rfcClientSecret)); err != nil {
		t.Fatal(err)
	}
	if err := c.out.init(suiteAES128, unhex(t, rfcServerSecret)); err != nil {
		t.Fatal(err)
	}
	c.out.seq = 1 // the ticket was record 0
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, rfcPayload()) {
		t.Fatalf("read %x, %v; want the RFC's payload and EOF", got, err)
	}
	if _, err := c.Write(rfcPayload()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	want := append(unhex(t, rfcServerAppRecord), unhex(t, rfcServerAlertRecord)...)
	if !bytes.Equal(raw.w.Bytes(), want) {
		t.Fatalf("wrote %x, want the RFC's records %x", raw.w.Bytes(), want)
	}
}
