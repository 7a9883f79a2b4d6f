package mdns

import (
	"net/netip"
	"strings"
	"testing"
)

// FuzzMessage: any datagram from the link, as a question to the
// responder or an answer to a query, is parsed without a panic, and an
// answer never yields more than MaxAddrs addresses or one without a port.
func FuzzMessage(f *testing.F) {
	var id [32]byte
	copy(id[:], "fuzz-peer-id-fuzz-peer-id-fuzz-p")
	r := &Responder{peer: id, port: 4900, addrs: func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("10.0.0.1")} }}
	ans, _ := r.answer(7)
	q, _ := query(Name(id))
	f.Add(ans)
	f.Add(q)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		questionFor(b, strings.ToLower(Name(id)))
		got := parseAnswer(b, Name(id), hostName(id))
		if len(got) > MaxAddrs {
			t.Fatalf("%d addresses", len(got))
		}
		for _, a := range got {
			if a.Port() == 0 || !a.Addr().IsValid() {
				t.Fatalf("bad address %v", a)
			}
		}
	})
}
