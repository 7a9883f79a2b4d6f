package rendezvous

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
)

// Fuzz targets for everything the rendezvous package parses from the
// network or from users: frames, frame bodies, connect strings and
// supernode tokens (docs/security.md, "Fuzzing").

// fuzzID is a fixed, valid peer ID for seeds (no randomness in fuzz
// targets: a finding must replay).
func fuzzID(b byte) identity.PeerID {
	k, err := identity.KeyFromSeed(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		panic(err)
	}
	return k.ID()
}

// fuzzBodies are valid bodies of every frame type, made by the package's
// own types.
func fuzzBodies() map[msgType]any {
	a, b := fuzzID(1), fuzzID(2)
	info := PeerInfo{
		Peer:       a,
		Candidates: []Candidate{{Addr: netip.MustParseAddrPort("192.0.2.1:4900"), Kind: Host}, {Addr: netip.MustParseAddrPort("[2001:db8::1]:4900"), Kind: Supernode, Peer: b, Token: "1:x"}},
		PunchKey:   bytes.Repeat([]byte{7}, 32),
		Attempt:    42,
	}
	return map[msgType]any{
		typeRegister:    registerBody{Agent: "reach/test"},
		typeRegistered:  registeredBody{Peer: a, Observed: netip.MustParseAddrPort("198.51.100.7:1234"), KeepaliveMS: 15000, MaxFrame: 65535},
		typeConnect:     connectBody{ID: 1, Target: b, Offer: info},
		typeIntro:       introBody{ID: 2, Offer: info},
		typeAnswer:      answerBody{ID: 2, Answer: info},
		typeReject:      rejectBody{ID: 3, Reason: "no"},
		typeResult:      resultBody{ID: 1, Answer: &info, Error: codeTimeout, Reason: "r"},
		typePing:        pingBody{Seq: 9},
		typePong:        pingBody{Seq: 9},
		typeError:       errorBody{Code: codeBusy, Reason: "busy"},
		typeVolunteer:   volunteerBody{MaxSessions: 4, Allow: []identity.PeerID{a, b}},
		typeVolunteered: volunteeredBody{Admitted: true, Observed: netip.MustParseAddrPort("203.0.113.9:4900"), Secret: []byte("secret")},
		typeFlight:      flightBody{Req: 4, Intro: 5, Packet: []byte{0xc0, 0, 0, 0, 1}},
		typeCode:        codeBody{ID: 6, Op: "put", Slot: 7, Proof: bytes.Repeat([]byte{1}, 32), Blob: []byte("sealed"), TTLMS: 600000},
		typeCodeResult:  codeResultBody{ID: 6, Slot: 7, Error: codeCodeWrong, AttemptsLeft: 2},
	}
}

// newBody returns a pointer to a zero body of the type frame t carries.
func newBody(t msgType) any {
	switch t {
	case typeRegister:
		return new(registerBody)
	case typeRegistered:
		return new(registeredBody)
	case typeConnect:
		return new(connectBody)
	case typeIntro:
		return new(introBody)
	case typeAnswer:
		return new(answerBody)
	case typeReject:
		return new(rejectBody)
	case typeResult:
		return new(resultBody)
	case typePing, typePong:
		return new(pingBody)
	case typeError:
		return new(errorBody)
	case typeVolunteer:
		return new(volunteerBody)
	case typeVolunteered:
		return new(volunteeredBody)
	case typeFlight:
		return new(flightBody)
	case typeCode:
		return new(codeBody)
	case typeCodeResult:
		return new(codeResultBody)
	}
	return nil
}

func knownType(t msgType) bool {
	return t >= typeRegister && t <= typeError || knownExtension(t)
}

// FuzzFrameReader feeds a byte stream to the frame reader. Properties:
// only known types come out, no body is longer than the limit, the bodies
// together are no longer than the input (no allocation the input did not
// pay for), the stream ends with an I/O error or a *ProtocolError with a
// reader code, and re-encoding the frames read gives frames that read back
// the same.
func FuzzFrameReader(f *testing.F) {
	var all []byte
	for t, body := range fuzzBodies() {
		b, err := appendFrame(nil, t, body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint16(0))
		all = append(all, b...)
	}
	f.Add(all, uint16(0))
	f.Add(all, uint16(100))
	f.Add([]byte{1, 0x90, 0, 3, 'a', 'b', 'c', 1, 8, 0, 0}, uint16(0)) // unknown extension skipped
	f.Add([]byte{2, 1, 0, 0}, uint16(0))                               // bad version
	f.Add([]byte{1, 0x20, 0, 0}, uint16(0))                            // unknown type
	f.Add([]byte{1, 1, 0xff, 0xff, '{'}, uint16(10))                   // too large
	f.Add([]byte{1, 1, 0, 9, '{'}, uint16(0))                          // cut short
	f.Fuzz(func(t *testing.T, in []byte, max uint16) {
		fr := newFrameReader(bytes.NewReader(in), int(max))
		limit := int(max)
		if limit == 0 {
			limit = maxFrameBody
		}
		var out []byte
		var types []msgType
		var bodies [][]byte
		total := 0
		for {
			typ, body, err := fr.next()
			if err != nil {
				var pe *ProtocolError
				switch {
				case err == io.EOF, err == io.ErrUnexpectedEOF:
				case errors.As(err, &pe):
					if pe.Code != codeBadVersion && pe.Code != codeFrameTooLarge && pe.Code != codeUnknownType {
						t.Fatalf("protocol error with code %q", pe.Code)
					}
				default:
					t.Fatalf("unexpected error %T %v", err, err)
				}
				break
			}
			if !knownType(typ) {
				t.Fatalf("frame of unknown type %v returned", typ)
			}
			if len(body) > limit {
				t.Fatalf("body of %d bytes, limit %d", len(body), limit)
			}
			total += len(body) + headerLen
			if total > len(in) {
				t.Fatalf("%d bytes of frames from %d bytes of input", total, len(in))
			}
			types = append(types, typ)
			bodies = append(bodies, bytes.Clone(body))
			out = append(out, frameVersion, byte(typ), byte(len(body)>>8), byte(len(body)))
			out = append(out, body...)
		}
		fr = newFrameReader(bytes.NewReader(out), int(max))
		for i := range types {
			typ, body, err := fr.next()
			if err != nil || typ != types[i] || !bytes.Equal(body, bodies[i]) {
				t.Fatalf("frame %d re-encoded reads back as %v %q %v, want %v %q", i, typ, body, err, types[i], bodies[i])
			}
		}
		if _, _, err := fr.next(); err != io.EOF {
			t.Fatalf("re-encoded stream does not end: %v", err)
		}
	})
}

// FuzzDecodeBody decodes a frame body as the body of its type.
// Properties: an error is a *ProtocolError with code bad_body; a body that
// decodes re-encodes (appendFrame) to one that decodes to the same value.
func FuzzDecodeBody(f *testing.F) {
	for t, body := range fuzzBodies() {
		b, err := json.Marshal(body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(byte(t), b)
	}
	f.Add(byte(typeConnect), []byte(`{"id":1,"target":"x","offer":{}}`))
	f.Add(byte(typeRegistered), []byte(`{"observed":"1.2.3.4:99999"}`))
	f.Add(byte(typeIntro), []byte(`{"offer":{"candidates":[{"addr":"[::1%eth0]:1","kind":"host"}],"punch_key":"!!"}}`))
	f.Add(byte(typeVolunteer), []byte(`{"allow":[null,"",1]}`))
	f.Add(byte(typePing), []byte(`{"seq":-1}`))
	f.Add(byte(typeResult), []byte(`[]`))
	f.Fuzz(func(t *testing.T, typ byte, in []byte) {
		mt := msgType(typ)
		v := newBody(mt)
		if v == nil {
			return
		}
		if err := decodeBody(mt, in, v); err != nil {
			var pe *ProtocolError
			if !errors.As(err, &pe) || pe.Code != codeBadBody {
				t.Fatalf("error %v, want a bad_body *ProtocolError", err)
			}
			return
		}
		frame, err := appendFrame(nil, mt, v)
		if err != nil {
			// A body can grow when re-encoded (escapes); only the size
			// limit may refuse it.
			var pe *ProtocolError
			if errors.As(err, &pe) && pe.Code == codeFrameTooLarge {
				return
			}
			t.Fatalf("decoded body does not re-encode: %v", err)
		}
		_, body, err := newFrameReader(bytes.NewReader(frame), 0).next()
		if err != nil {
			t.Fatalf("re-encoded frame does not read: %v", err)
		}
		v2 := newBody(mt)
		if err := decodeBody(mt, body, v2); err != nil {
			t.Fatalf("re-encoded body %q does not decode: %v", body, err)
		}
		j1, _ := json.Marshal(v)
		j2, _ := json.Marshal(v2)
		if !bytes.Equal(j1, j2) {
			t.Fatalf("body changes on a round trip:\n%s\n%s", j1, j2)
		}
	})
}

// FuzzParseServerAddr parses connect strings. Properties: errors wrap
// ErrBadServerAddr; a parsed address prints as a connect string that
// parses to the same address and prints the same (one canonical form).
func FuzzParseServerAddr(f *testing.F) {
	ids := fuzzID(1).String()
	for _, s := range []string{
		"reach://" + ids + "@192.0.2.1:4950",
		"reach://" + ids + "@[2001:db8::1]:4950?tcp=443",
		"reach://" + ids + "@rdv.example.com:443?tcp=8443&future=1",
		" reach://" + strings.ToUpper(ids) + "@h:1/ ",
		"reach://" + ids + "@[fe80::1%25eth0]:1",
		"reach://" + ids + ":pw@h:1",
		"reach://" + ids + "@h:0",
		"reach://" + ids + "@h:1?tcp=1&tcp=2",
		"reach://x@h:1",
		"http://h:1",
		"reach:opaque",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sa, err := ParseServerAddr(s)
		if err != nil {
			if !errors.Is(err, ErrBadServerAddr) {
				t.Fatalf("error %v does not wrap ErrBadServerAddr", err)
			}
			return
		}
		if sa.Port == 0 || sa.Host == "" || sa.ID.IsZero() || sa.TCPPort == sa.Port {
			t.Fatalf("%q parsed to a non-canonical %+v", s, sa)
		}
		str := sa.String()
		sa2, err := ParseServerAddr(str)
		if err != nil {
			t.Fatalf("%q parsed to %+v, whose String %q does not parse: %v", s, sa, str, err)
		}
		if sa2 != sa || sa2.String() != str {
			t.Fatalf("%q: %+v prints as %q, which parses to %+v", s, sa, str, sa2)
		}
	})
}

// FuzzCheckSupernodeToken checks arbitrary tokens. Properties: the result
// is nil or one of the two named errors; an accepted token is refused for
// another peer and under another secret, and is expired exactly from its
// expiry on; a token made by NewSupernodeToken is accepted before its
// expiry.
func FuzzCheckSupernodeToken(f *testing.F) {
	secret := []byte("volunteer secret")
	now := time.Unix(1_800_000_000, 0)
	f.Add(secret, NewSupernodeToken(secret, fuzzID(1), now.Add(time.Hour)), now.Unix())
	f.Add(secret, NewSupernodeToken(secret, fuzzID(1), now.Add(-time.Hour)), now.Unix())
	f.Add([]byte{}, NewSupernodeToken(nil, fuzzID(1), now), now.Unix())
	f.Add(secret, "", int64(0))
	f.Add(secret, "0:", int64(0))
	f.Add(secret, "-5:abc", int64(-10))
	f.Add(secret, "99999999999999999999:abc", int64(0))
	f.Fuzz(func(t *testing.T, secret []byte, token string, unix int64) {
		peer, other := fuzzID(1), fuzzID(2)
		at := time.Unix(unix, 0)
		err := CheckSupernodeToken(secret, peer, token, at)
		switch {
		case err == nil:
			if CheckSupernodeToken(secret, other, token, at) != ErrBadSupernodeToken {
				t.Fatalf("token %q accepted for another peer", token)
			}
			if CheckSupernodeToken(otherSecret(secret), peer, token, at) != ErrBadSupernodeToken {
				t.Fatalf("token %q accepted under another secret", token)
			}
		case err == ErrSupernodeTokenExpired, err == ErrBadSupernodeToken:
		default:
			t.Fatalf("error %v is not a named one", err)
		}
		if unix > 0 && unix < 1<<40 {
			tok := NewSupernodeToken(secret, peer, at)
			if err := CheckSupernodeToken(secret, peer, tok, at.Add(-time.Second)); err != nil {
				t.Fatalf("fresh token %q refused: %v", tok, err)
			}
			if err := CheckSupernodeToken(secret, peer, tok, at); err != ErrSupernodeTokenExpired {
				t.Fatalf("token %q at its expiry: %v", tok, err)
			}
		}
	})
}

// otherSecret returns a different HMAC key: not secret with a zero byte
// appended, which HMAC treats as the same key (keys are zero-padded).
func otherSecret(secret []byte) []byte {
	if len(secret) == 0 {
		return []byte{1}
	}
	o := bytes.Clone(secret)
	o[len(o)-1] ^= 0xff
	return o
}
