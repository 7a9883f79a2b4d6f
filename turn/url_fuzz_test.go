package turn

import (
	"net"
	"testing"
)

// FuzzParseTURNURL parses TURN server URLs (docs/security.md,
// "Fuzzing"). Properties: a parsed URL has a host and a transport of
// udp, tcp or tls (tls exactly for turns:), and its host:port splits back
// into that host.
func FuzzParseTURNURL(f *testing.F) {
	for _, s := range []string{
		"turn:turn.example.com", "turn:192.0.2.1:3478?transport=tcp", "turns:[2001:db8::1]:443?transport=tcp",
		"turns:h?transport=udp", "turn:[::1]", "turn::1", "turn:?transport=tcp", "turn:h?%zz", "stun:h", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := parseTURNURL(s)
		if err != nil {
			return
		}
		if u.host == "" || (u.transport == "tls") != (len(s) > 5 && s[:6] == "turns:") || u.transport != "udp" && u.transport != "tcp" && u.transport != "tls" {
			t.Fatalf("%q parsed to %+v", s, u)
		}
		if h, _, err := net.SplitHostPort(u.hostPort); err != nil || h != u.host {
			t.Fatalf("%q: host:port %q splits to %q, %v; host %q", s, u.hostPort, h, err, u.host)
		}
	})
}
