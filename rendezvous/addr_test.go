package rendezvous

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/reachp2p/reach/identity"
)

func TestParseServerAddr(t *testing.T) {
	id := mustKey(t).ID()
	ids := id.String()
	for _, tc := range []struct {
		in   string
		want ServerAddr
		out  string // String(), if not in
	}{
		{in: "reach://" + ids + "@192.0.2.1:4950", want: ServerAddr{ID: id, Host: "192.0.2.1", Port: 4950}},
		{in: "reach://" + ids + "@[2001:db8::1]:4950", want: ServerAddr{ID: id, Host: "2001:db8::1", Port: 4950}},
		{in: "reach://" + ids + "@rdv.example.com:443?tcp=8443", want: ServerAddr{ID: id, Host: "rdv.example.com", Port: 443, TCPPort: 8443}},
		{in: "reach://" + ids + "@h:1?tcp=1", want: ServerAddr{ID: id, Host: "h", Port: 1}, out: "reach://" + ids + "@h:1"},
		{in: " reach://" + strings.ToUpper(ids) + "@h:1/?future=x ", want: ServerAddr{ID: id, Host: "h", Port: 1}, out: "reach://" + ids + "@h:1"},
	} {
		got, err := ParseServerAddr(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%q: got %+v, want %+v", tc.in, got, tc.want)
		}
		out := tc.out
		if out == "" {
			out = tc.in
		}
		if got.String() != out {
			t.Errorf("%q: String() = %q, want %q", tc.in, got.String(), out)
		}
		if back, err := ParseServerAddr(got.String()); err != nil || back != got {
			t.Errorf("%q: round trip %+v %v", tc.in, back, err)
		}
	}
	for _, bad := range []string{
		"",
		"reach://",
		"reach://@1.2.3.4:5",
		"http://" + ids + "@1.2.3.4:5",
		"reach://" + ids + "@1.2.3.4",
		"reach://" + ids + "@1.2.3.4:0",
		"reach://" + ids + "@1.2.3.4:70000",
		"reach://" + ids + "@1.2.3.4:-1",
		"reach://" + ids + "@2001:db8::1:5",
		"reach://" + ids + "@[fe80::1%eth0]:5",
		"reach://" + ids + "@:5",
		"reach://" + ids + ":pw@1.2.3.4:5",
		"reach://" + ids + "@1.2.3.4:5/path",
		"reach://" + ids + "@1.2.3.4:5?tcp=x",
		"reach://" + ids + "@1.2.3.4:5?tcp=1&tcp=2",
		"reach:" + ids + "@1.2.3.4:5",
		"reach://" + ids[:55] + "@1.2.3.4:5",
	} {
		if _, err := ParseServerAddr(bad); !errors.Is(err, ErrBadServerAddr) {
			t.Errorf("%q: err = %v, want ErrBadServerAddr", bad, err)
		}
	}
	// a one-character typo (always a different last character)
	typo := ids[:55] + "x"
	if ids[55] == 'x' {
		typo = ids[:55] + "y"
	}
	if _, err := ParseServerAddr("reach://" + typo + "@h:1"); !errors.Is(err, identity.ErrBadPeerID) {
		t.Errorf("bad ID: %v, want identity.ErrBadPeerID too", err)
	}
	var sa ServerAddr
	if err := json.Unmarshal([]byte(`"reach://`+ids+`@h:9"`), &sa); err != nil || sa.Port != 9 {
		t.Errorf("json: %+v %v", sa, err)
	}
}

func TestAdvertiseAddr(t *testing.T) {
	if got := AdvertiseAddr(netip.MustParseAddr("192.0.2.7")); got != netip.MustParseAddr("192.0.2.7") {
		t.Errorf("specific: %v", got)
	}
	for _, ip := range []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified(), {}} {
		got := AdvertiseAddr(ip)
		if !got.IsValid() || got.IsUnspecified() || got.IsLinkLocalUnicast() || (got.IsLoopback() && got != netip.MustParseAddr("127.0.0.1")) {
			t.Errorf("AdvertiseAddr(%v) = %v", ip, got)
		}
		if ip.Is4() && !got.Is4() {
			t.Errorf("AdvertiseAddr(0.0.0.0) = %v, want IPv4", got)
		}
	}
}
