package holepunch

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

// FuzzPacket parses arbitrary datagrams as punch packets
// (docs/security.md, "Fuzzing"). With resign set, the datagram's MAC is
// first recomputed under key, so the fuzzer gets past the MAC to the
// fields. Properties: errors are the named ones; peekAttempt agrees with
// unmarshal; a packet that unmarshals re-marshals to the same bytes under
// the same key, and fails the MAC under any other key.
func FuzzPacket(f *testing.F) {
	key := bytes.Repeat([]byte{0x5a}, 32)
	for _, p := range []packet{
		{typ: typePing, role: RoleDialer, attempt: 1, txid: 2},
		{typ: typePong, role: RoleListener, attempt: 1 << 60, txid: 3, observed: netip.MustParseAddrPort("192.0.2.1:4900")},
		{typ: typePong, role: RoleDialer, attempt: 7, txid: 4, observed: netip.MustParseAddrPort("[2001:db8::1]:65535")},
		{typ: typePong, role: 9, attempt: 7, txid: 4, observed: netip.MustParseAddrPort("[::]:1")},
	} {
		f.Add(p.marshal(key), key, false)
	}
	bad := (&packet{typ: typePing, role: RoleDialer}).marshal(key)
	bad[2] = 7 // unknown type, MAC fixed by resign
	f.Add(bad, key, true)
	f.Add([]byte{Magic, Version}, key, false)
	f.Add(make([]byte, PacketLen), []byte{}, true)
	f.Add(append((&packet{typ: typePing}).marshal(key), 0), key, false)
	f.Fuzz(func(t *testing.T, b, key []byte, resign bool) {
		if resign && len(b) == PacketLen {
			copy(b[38:], mac(key, b[:38]))
		}
		attempt, perr := peekAttempt(b)
		if perr != nil && perr != ErrShortPacket && perr != ErrBadVersion {
			t.Fatalf("peekAttempt: unnamed error %v", perr)
		}
		p, err := unmarshal(b, key)
		if err != nil {
			if !errors.Is(err, ErrShortPacket) && !errors.Is(err, ErrBadVersion) && !errors.Is(err, ErrBadMAC) && !errors.Is(err, ErrBadType) {
				t.Fatalf("unmarshal: unnamed error %v", err)
			}
			return
		}
		if perr != nil || attempt != p.attempt {
			t.Fatalf("peekAttempt = %d, %v; unmarshal's attempt %d", attempt, perr, p.attempt)
		}
		if out := p.marshal(key); !bytes.Equal(out, b) {
			t.Fatalf("%+v re-marshals as\n%x, read from\n%x", p, out, b)
		}
		other := append(bytes.Clone(key), 1)
		if _, err := unmarshal(b, other); err != ErrBadMAC {
			t.Fatalf("packet verifies under another key: %v", err)
		}
	})
}
