package rendezvous

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/reachp2p/reach/identity"
)

// Scheme is the URL scheme of connect strings.
const Scheme = "reach"

// ServerAddr names a rendezvous server and pins its key. Its text form is
// the connect string
//
//	reach://<server-peer-id>@<host>:<port>[?tcp=<port>]
//
// where host is an IPv4 address, an IPv6 address in brackets, or a DNS
// name; port is the UDP port (QUIC and STUN); and tcp, if present, is the
// TCP port of the TLS fallback (default: the same number as port).
type ServerAddr struct {
	// ID is the server's key. The client refuses a server that proves
	// another key (identity.ErrWrongPeer).
	ID identity.PeerID
	// Host is an IP literal (no brackets, no zone) or a DNS name.
	Host string
	// Port is the UDP port.
	Port uint16
	// TCPPort is the TCP port; zero means the same as Port.
	TCPPort uint16
}

// ParseServerAddr parses a connect string. Unknown query parameters are
// ignored (newer servers may advertise transports this client does not
// know); anything else malformed returns an error wrapping
// ErrBadServerAddr (or identity.ErrBadPeerID for a bad ID).
func ParseServerAddr(s string) (ServerAddr, error) {
	var sa ServerAddr
	bad := func(format string, args ...any) (ServerAddr, error) {
		return ServerAddr{}, fmt.Errorf("%w %q: %s", ErrBadServerAddr, s, fmt.Sprintf(format, args...))
	}
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return bad("%v", err)
	}
	if u.Scheme != Scheme {
		return bad("scheme must be %s://", Scheme)
	}
	if u.Opaque != "" || u.User == nil || u.Host == "" {
		return bad("want %s://<server-id>@<host>:<port>", Scheme)
	}
	if _, hasPass := u.User.Password(); hasPass {
		return bad("unexpected ':' in server ID")
	}
	if u.Path != "" && u.Path != "/" || u.Fragment != "" {
		return bad("unexpected path or fragment")
	}
	id, err := identity.ParsePeerID(u.User.Username())
	if err != nil {
		return ServerAddr{}, fmt.Errorf("%w %q: %w", ErrBadServerAddr, s, err)
	}
	sa.ID = id
	host, portStr, err := net.SplitHostPort(u.Host)
	if err != nil {
		return bad("host must be <host>:<port> with IPv6 in brackets")
	}
	if host == "" {
		return bad("empty host")
	}
	if strings.Contains(host, ":") {
		ip, err := netip.ParseAddr(host)
		if err != nil || ip.Zone() != "" {
			return bad("bad IPv6 address %q", host)
		}
		if !strings.HasPrefix(u.Host, "[") {
			return bad("IPv6 address must be in brackets")
		}
	}
	sa.Host = host
	if sa.Port, err = parsePort(portStr); err != nil {
		return bad("port: %v", err)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("query: %v", err)
	}
	if v, ok := q["tcp"]; ok {
		if len(v) != 1 {
			return bad("tcp given %d times", len(v))
		}
		if sa.TCPPort, err = parsePort(v[0]); err != nil {
			return bad("tcp port: %v", err)
		}
		if sa.TCPPort == sa.Port {
			sa.TCPPort = 0 // one canonical form
		}
	}
	return sa, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("%q is not in 1-65535", s)
	}
	return uint16(p), nil
}

// String returns the connect string. The tcp parameter appears only when
// it differs from Port.
func (sa ServerAddr) String() string {
	s := Scheme + "://" + sa.ID.String() + "@" + net.JoinHostPort(sa.Host, strconv.Itoa(int(sa.Port)))
	if sa.TCPPort != 0 && sa.TCPPort != sa.Port {
		s += "?tcp=" + strconv.Itoa(int(sa.TCPPort))
	}
	return s
}

// IsZero reports whether sa is the zero value.
func (sa ServerAddr) IsZero() bool { return sa == ServerAddr{} }

// UDPHostPort returns "host:port" for the UDP side.
func (sa ServerAddr) UDPHostPort() string {
	return net.JoinHostPort(sa.Host, strconv.Itoa(int(sa.Port)))
}

// TCPHostPort returns "host:port" for the TCP side.
func (sa ServerAddr) TCPHostPort() string {
	p := sa.TCPPort
	if p == 0 {
		p = sa.Port
	}
	return net.JoinHostPort(sa.Host, strconv.Itoa(int(p)))
}

// MarshalText implements encoding.TextMarshaler.
func (sa ServerAddr) MarshalText() ([]byte, error) { return []byte(sa.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (sa *ServerAddr) UnmarshalText(b []byte) error {
	p, err := ParseServerAddr(string(b))
	if err != nil {
		return err
	}
	*sa = p
	return nil
}
