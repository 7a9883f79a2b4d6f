package transfer

import (
	"errors"
	"strings"
	"testing"

	"lukechampine.com/blake3"

	"github.com/reachp2p/reach/identity"
)

func TestTicketRoundTrip(t *testing.T) {
	k, _ := identity.GenerateKey()
	sk, _ := identity.GenerateKey()
	servers := []string{
		"reach://" + sk.ID().String() + "@203.0.113.7:4950",
		"reach://" + sk.ID().String() + "@[2001:db8::1]:443?tcp=8443",
		"reach://" + sk.ID().String() + "@rdv.example.org:4950",
	}
	tk, err := NewTicket(k.ID(), NewID(), servers...)
	if err != nil {
		t.Fatal(err)
	}
	s := tk.String()
	t.Logf("ticket (%d chars): %s", len(s), s)
	if !strings.HasPrefix(s, TicketPrefix) || strings.ContainsAny(s, " \n/+=-") {
		t.Errorf("not one word: %q", s)
	}
	for _, in := range []string{s, "  " + strings.ToUpper(s) + "\n"} {
		got, err := ParseTicket(in)
		if err != nil {
			t.Fatal(err)
		}
		if got.Peer != tk.Peer || got.ID != tk.ID || strings.Join(got.ConnectStrings(), " ") != strings.Join(servers, " ") {
			t.Errorf("round trip: %+v, want %+v", got, tk)
		}
	}
}

func TestParseTicketErrors(t *testing.T) {
	k, _ := identity.GenerateKey()
	tk, _ := NewTicket(k.ID(), NewID(), "reach://"+k.ID().String()+"@192.0.2.1:4950")
	s := tk.String()
	flip := []byte(s)
	i := len(TicketPrefix) + 10
	flip[i] = map[bool]byte{true: 'b', false: 'a'}[flip[i] == 'a']
	newer := []byte{ticketVersion + 1}
	newer = append(newer, make([]byte, 60)...)
	cases := []struct {
		name, in string
		want     error
	}{
		{"empty", "", ErrBadTicket},
		{"prefix", "reachx_" + s[len(TicketPrefix):], ErrBadTicket},
		{"peer id", k.ID().String(), ErrBadTicket},
		{"cut", s[:len(s)-5], ErrBadTicket},
		{"typo", string(flip), ErrBadTicket},
		{"not base32", s + "!", ErrBadTicket},
		{"newer", TicketPrefix + ticketEncoding.EncodeToString(withSum(newer)), ErrTicketVersion},
	}
	for _, c := range cases {
		if _, err := ParseTicket(c.in); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		} else {
			t.Logf("%s: %v", c.name, err)
		}
	}
}

func withSum(b []byte) []byte {
	s := blake3.Sum256(b)
	return append(b, s[:4]...)
}

func TestCheckPath(t *testing.T) {
	ok := []string{"a", "a/b", "日本語/ファイル", "a b/c.d", ".hidden", "..x", "x.."}
	bad := []string{"", ".", "..", "../a", "a/..", "a/../b", "/a", "a//b", "a/", "./a", `a\b`, "C:x", "a\x00b", "\xff"}
	for _, p := range ok {
		if err := checkPath(p); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
	for _, p := range bad {
		if err := checkPath(p); !errors.Is(err, ErrUnsafePath) {
			t.Errorf("%q: got %v, want ErrUnsafePath", p, err)
		}
	}
	targets := map[string]bool{"x": true, "../x": true, "a/../x": false, "../../x": false, "/x": false, "": false, "b/c": true}
	for target, want := range targets {
		if err := checkTarget("d/link", target); (err == nil) != want {
			t.Errorf("d/link -> %q: %v", target, err)
		}
	}
}
