package transfer

import (
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"lukechampine.com/blake3"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// TicketPrefix starts every ticket. The underscore keeps the whole ticket
// one "word" for double-click selection in terminals.
const TicketPrefix = "reachsend_"

// ticketVersion is the version byte of the binary ticket.
const ticketVersion = 1

// maxTicketServers is the most servers a ticket carries.
const maxTicketServers = 8

var ticketEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Named ticket errors.
var (
	// ErrBadTicket: a string is not a well-formed ticket (prefix,
	// encoding, checksum, or content).
	ErrBadTicket = errors.New("transfer: malformed ticket")
	// ErrTicketVersion: the ticket comes from a newer reach; upgrade.
	ErrTicketVersion = errors.New("transfer: ticket from a newer version of reach")
)

// Ticket is what a receiver needs to fetch an offer: the sender's peer ID,
// the rendezvous servers it is registered with, and the offer's ID. Its
// text form (String, ParseTicket) is one copy-pasteable word: TicketPrefix
// and the lowercase base32 of
//
//	version (1 byte, 1) | sender peer ID (32) | transfer ID (16) |
//	server count (1) | per server: server peer ID (32), host length
//	(uvarint), host, UDP port (2), TCP port (2, 0: same) |
//	checksum: the first 4 bytes of BLAKE3-256 of all that precedes
//
// The ticket is a bearer secret: whoever has it can fetch the files while
// the sender offers them.
type Ticket struct {
	Peer    identity.PeerID
	ID      ID
	Servers []rendezvous.ServerAddr
}

// NewTicket makes a ticket from the sender's peer ID, the offer's ID and
// connect strings ("reach://..."), as returned by Node.Server.
func NewTicket(peer identity.PeerID, id ID, servers ...string) (Ticket, error) {
	tk := Ticket{Peer: peer, ID: id}
	for _, s := range servers {
		if s == "" {
			continue
		}
		sa, err := rendezvous.ParseServerAddr(s)
		if err != nil {
			return Ticket{}, err
		}
		tk.Servers = append(tk.Servers, sa)
	}
	if len(tk.Servers) > maxTicketServers {
		tk.Servers = tk.Servers[:maxTicketServers]
	}
	return tk, nil
}

// ConnectStrings returns the servers as connect strings, for
// reach.Config.Servers.
func (t Ticket) ConnectStrings() []string {
	out := make([]string, len(t.Servers))
	for i, sa := range t.Servers {
		out[i] = sa.String()
	}
	return out
}

// String returns the ticket's text form.
func (t Ticket) String() string {
	b := []byte{ticketVersion}
	b = append(b, t.Peer[:]...)
	b = append(b, t.ID[:]...)
	servers := t.Servers
	if len(servers) > maxTicketServers {
		servers = servers[:maxTicketServers]
	}
	b = append(b, byte(len(servers)))
	for _, sa := range servers {
		b = append(b, sa.ID[:]...)
		b = binary.AppendUvarint(b, uint64(len(sa.Host)))
		b = append(b, sa.Host...)
		b = binary.BigEndian.AppendUint16(b, sa.Port)
		tcp := sa.TCPPort
		if tcp == sa.Port {
			tcp = 0
		}
		b = binary.BigEndian.AppendUint16(b, tcp)
	}
	sum := blake3.Sum256(b)
	b = append(b, sum[:4]...)
	return TicketPrefix + ticketEncoding.EncodeToString(b)
}

// MarshalText implements encoding.TextMarshaler.
func (t Ticket) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *Ticket) UnmarshalText(b []byte) error {
	tk, err := ParseTicket(string(b))
	if err != nil {
		return err
	}
	*t = tk
	return nil
}

// ParseTicket parses a ticket's text form. Surrounding space is ignored
// and upper case accepted. Errors wrap ErrBadTicket or ErrTicketVersion.
func ParseTicket(s string) (Ticket, error) {
	bad := func(format string, args ...any) (Ticket, error) {
		return Ticket{}, fmt.Errorf("%w: %s", ErrBadTicket, fmt.Sprintf(format, args...))
	}
	s = strings.ToLower(strings.TrimSpace(s))
	if !strings.HasPrefix(s, TicketPrefix) {
		return bad("does not start with %q", TicketPrefix)
	}
	b, err := ticketEncoding.DecodeString(s[len(TicketPrefix):])
	if err != nil {
		return bad("not base32 (cut short or mistyped?)")
	}
	if len(b) < 1+32+16+1+4 {
		return bad("too short (cut short?)")
	}
	body, sum := b[:len(b)-4], b[len(b)-4:]
	if want := blake3.Sum256(body); string(want[:4]) != string(sum) {
		if body[0] > ticketVersion {
			return Ticket{}, fmt.Errorf("%w (version %d)", ErrTicketVersion, body[0])
		}
		return bad("checksum mismatch (cut short or mistyped?)")
	}
	if body[0] != ticketVersion {
		return Ticket{}, fmt.Errorf("%w (version %d)", ErrTicketVersion, body[0])
	}
	var t Ticket
	p := body[1:]
	copy(t.Peer[:], p)
	copy(t.ID[:], p[32:])
	n := int(p[48])
	p = p[49:]
	if n > maxTicketServers {
		return bad("%d servers", n)
	}
	for range n {
		if len(p) < 33 {
			return bad("server list cut short")
		}
		var sa rendezvous.ServerAddr
		copy(sa.ID[:], p)
		hl, k := binary.Uvarint(p[32:])
		if k <= 0 || hl == 0 || hl > 253 || uint64(len(p)-32-k) < hl+4 {
			return bad("bad server host")
		}
		p = p[32+k:]
		sa.Host = string(p[:hl])
		sa.Port = binary.BigEndian.Uint16(p[hl:])
		sa.TCPPort = binary.BigEndian.Uint16(p[hl+2:])
		p = p[hl+4:]
		// Round-trip through the connect string parser: it checks the host
		// and the ports.
		parsed, err := rendezvous.ParseServerAddr(sa.String())
		if err != nil {
			return bad("server: %v", err)
		}
		t.Servers = append(t.Servers, parsed)
	}
	if len(p) != 0 {
		return bad("%d bytes of trailing data", len(p))
	}
	return t, nil
}
