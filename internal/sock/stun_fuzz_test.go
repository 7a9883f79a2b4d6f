package sock

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
)

// Fuzz targets for what the socket parses from any sender: STUN binding
// responses and the non-QUIC packet demultiplexer (docs/security.md,
// "Fuzzing").

func stunSeeds(f *testing.F) [][]byte {
	var out [][]byte
	tid := stun.NewTransactionIDSetter([stun.TransactionIDSize]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	for _, setters := range [][]stun.Setter{
		{tid, stun.BindingSuccess, &stun.XORMappedAddress{IP: netip.MustParseAddr("192.0.2.1").AsSlice(), Port: 4900}, stun.Fingerprint},
		{tid, stun.BindingSuccess, &stun.XORMappedAddress{IP: netip.MustParseAddr("2001:db8::1").AsSlice(), Port: 65535}},
		{tid, stun.BindingSuccess, &stun.MappedAddress{IP: netip.MustParseAddr("198.51.100.2").AsSlice(), Port: 1}},
		{tid, stun.BindingSuccess, &stun.MappedAddress{IP: netip.MustParseAddr("::ffff:198.51.100.2").AsSlice(), Port: 2}},
		{tid, stun.NewType(stun.MethodBinding, stun.ClassErrorResponse), stun.CodeUnauthorized},
		{tid, stun.NewType(stun.MethodBinding, stun.ClassErrorResponse)},
		{tid, stun.BindingSuccess},
		{tid, stun.BindingRequest, stun.Fingerprint},
	} {
		m, err := stun.Build(setters...)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, m.Raw)
	}
	return out
}

// FuzzParseBindingResponse parses arbitrary datagrams as STUN binding
// responses. Properties: errors wrap ErrSTUNResponse; an address returned
// is valid, has a port, and is never IPv4-mapped.
func FuzzParseBindingResponse(f *testing.F) {
	for _, s := range stunSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte{0x01, 0x01, 0, 4, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0x20, 0, 0})
	f.Add([]byte{0x01, 0x01, 0, 8, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0x20, 0, 4, 0, 3, 0, 0})
	f.Add([]byte{0x01, 0x01, 0xff, 0xfc, 0x21, 0x12, 0xa4, 0x42})
	server := netip.MustParseAddrPort("192.0.2.100:3478")
	f.Fuzz(func(t *testing.T, raw []byte) {
		in := bytes.Clone(raw)
		addr, err := parseBindingResponse(raw, server)
		if !bytes.Equal(in, raw) {
			t.Fatal("parseBindingResponse changed its input")
		}
		if err != nil {
			if !errors.Is(err, ErrSTUNResponse) {
				t.Fatalf("error %v does not wrap ErrSTUNResponse", err)
			}
			return
		}
		if !addr.IsValid() || addr.Port() == 0 || addr.Addr().Is4In6() || addr.Addr().Zone() != "" {
			t.Fatalf("returned address %v", addr)
		}
	})
}

// FuzzDispatch hands arbitrary non-empty datagrams (the read loop drops
// empty ones) to the demultiplexer of a socket with a handler on every
// first byte and, if pending, a STUN call waiting for the transaction ID
// at bytes 8..19. Properties: each datagram goes to exactly one place: the
// waiting STUN call (only a STUN success or error response with its
// transaction ID, as a copy), the handler of its first byte (the datagram
// itself), or nowhere (first byte above MaxNonQUICFirstByte).
func FuzzDispatch(f *testing.F) {
	for _, s := range stunSeeds(f) {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Add([]byte{0x3a, 1, 2}, false)
	f.Add([]byte{0x40}, false)
	f.Add([]byte{0xff, 0, 0, 0}, true)
	f.Add([]byte{0x01, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, true)
	from := netip.MustParseAddrPort("192.0.2.7:9")
	f.Fuzz(func(t *testing.T, pkt []byte, pending bool) {
		if len(pkt) == 0 {
			return
		}
		s := &Socket{stun: make(map[[12]byte]chan []byte)}
		var got []byte
		calls := 0
		for i := range s.handlers {
			s.handlers[i] = func(p []byte, a netip.AddrPort) {
				calls++
				if byte(i) != p[0] || a != from || &p[0] != &pkt[0] {
					t.Fatalf("handler 0x%02x got %x from %v", i, p, a)
				}
			}
		}
		ch := make(chan []byte, 1)
		var id [12]byte
		if pending && len(pkt) >= 20 {
			copy(id[:], pkt[8:20])
			s.stun[id] = ch
		}
		want := bytes.Clone(pkt)
		s.dispatch(pkt, from)
		select {
		case got = <-ch:
		default:
		}
		isResponse := stun.IsMessage(want) && want[0]&0x01 != 0
		switch {
		case got != nil:
			if calls != 0 || !pending || want[0] > 0x01 || !isResponse || !bytes.Equal(got, want) {
				t.Fatalf("STUN call got %x (handlers called %d times)", got, calls)
			}
			pkt[0] ^= 0xff
			if got[0] == pkt[0] {
				t.Fatal("STUN call got the read buffer, not a copy")
			}
		case want[0] > MaxNonQUICFirstByte:
			if calls != 0 {
				t.Fatalf("handler called for first byte 0x%02x", want[0])
			}
		default:
			if calls != 1 {
				t.Fatalf("handler called %d times", calls)
			}
			if pending && len(want) >= 20 && want[0] <= 0x01 && isResponse {
				t.Fatalf("STUN response %x for a waiting call went to a handler", want)
			}
		}
	})
}
