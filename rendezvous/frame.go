package rendezvous

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"

	"github.com/reachp2p/reach/identity"
)

// Wire format of the signalling stream (docs/protocol.md, "Rendezvous").
// Every frame is
//
//	version (1 byte) | type (1 byte) | body length (2 bytes, big endian) | body
//
// and the body is a JSON object (an empty body means {}).
const (
	frameVersion = 1
	headerLen    = 4
	maxFrameBody = 0xffff
)

type msgType byte

// Frame types. 0x01-0x7f must be understood (an unknown one is a protocol
// error); 0x80-0xff are extensions a receiver that does not know them skips.
const (
	typeRegister   msgType = 0x01 // client → server, first frame
	typeRegistered msgType = 0x02 // server → client
	typeConnect    msgType = 0x03 // dialler → server
	typeIntro      msgType = 0x04 // server → target
	typeAnswer     msgType = 0x05 // target → server
	typeReject     msgType = 0x06 // target → server
	typeResult     msgType = 0x07 // server → dialler
	typePing       msgType = 0x08 // either way
	typePong       msgType = 0x09 // either way
	typeError      msgType = 0x0a // either way, then close

	firstExtensionType msgType = 0x80
	// Extensions this version understands (older peers skip them).
	typeVolunteer   msgType = 0x80 // client → server: offer (or withdraw) a supernode
	typeVolunteered msgType = 0x81 // server → client: admitted or not, after the dial-back
	typeFlight      msgType = 0x82 // either way: a packet of an introduction's first flight
	typeCode        msgType = 0x83 // client → server: a short-code mailbox request (mailbox.go)
	typeCodeResult  msgType = 0x84 // server → client: its result
	typePark        msgType = 0x85 // client → server: park this idle registration (park.go)
	typeParked      msgType = 0x86 // server → client: parked (token, key) or refused
)

func (t msgType) String() string {
	names := [...]string{"", "REGISTER", "REGISTERED", "CONNECT", "INTRO", "ANSWER", "REJECT", "RESULT", "PING", "PONG", "ERROR"}
	if int(t) < len(names) && t != 0 {
		return names[t]
	}
	switch t {
	case typeVolunteer:
		return "VOLUNTEER"
	case typeVolunteered:
		return "VOLUNTEERED"
	case typeFlight:
		return "FLIGHT"
	case typeCode:
		return "CODE"
	case typeCodeResult:
		return "CODE_RESULT"
	case typePark:
		return "PARK"
	case typeParked:
		return "PARKED"
	}
	return fmt.Sprintf("type 0x%02x", byte(t))
}

// Error codes of ERROR frames (connection-fatal) and RESULT frames
// (per-introduction).
const (
	codeBadVersion    = "bad_version"
	codeFrameTooLarge = "frame_too_large"
	codeUnknownType   = "unknown_type"
	codeUnexpected    = "unexpected_type"
	codeBadBody       = "bad_body"
	codeReplaced      = "replaced"
	codeBusy          = "busy"
	codeShutdown      = "shutdown"
	codeSlow          = "slow_reader"

	codeUnknownPeer = "unknown_peer"
	codePeerOffline = "peer_offline"
	codeTimeout     = "timeout"
	codeRejected    = "rejected"
	codeBadRequest  = "bad_request"
	codeNotWoken    = "not_woken"
)

// Frame bodies.
type (
	registerBody struct {
		Agent string `json:"agent,omitempty"`
		// Resume is the token of the node's parked registration that
		// this one takes over (its frames are delivered here).
		Resume uint64 `json:"resume,omitempty"`
	}
	registeredBody struct {
		Peer        identity.PeerID `json:"peer"`
		Observed    netip.AddrPort  `json:"observed,omitzero"`
		KeepaliveMS int64           `json:"keepalive_ms,omitempty"`
		MaxFrame    int             `json:"max_frame,omitempty"`
		// Protocols are the other ALPN protocols the server serves on
		// its ports (ServerConfig.Protocols: the relay's, ...), sorted.
		Protocols []string `json:"protocols,omitempty"`
		// Codes says the server keeps a short-code mailbox (CODE frames).
		Codes bool `json:"codes,omitempty"`
		// Servers are connect strings of the other live servers of the
		// server's fleet (at most MaxFleetServers), for failover; Fleet
		// says the server is in a fleet, so Servers is its list even
		// when empty.
		Servers []string `json:"servers,omitempty"`
		Fleet   bool     `json:"fleet,omitempty"`
		// ParkAfterMS, when not zero, says the server parks idle
		// registrations (PARK) idle for this long (ParkConfig.After).
		ParkAfterMS int64 `json:"park_after_ms,omitempty"`
	}
	connectBody struct {
		ID     uint64          `json:"id"`
		Target identity.PeerID `json:"target"`
		Offer  PeerInfo        `json:"offer"`
	}
	introBody struct {
		ID    uint64   `json:"id"`
		Offer PeerInfo `json:"offer"`
	}
	answerBody struct {
		ID     uint64   `json:"id"`
		Answer PeerInfo `json:"answer"`
	}
	rejectBody struct {
		ID     uint64 `json:"id"`
		Reason string `json:"reason,omitempty"`
	}
	resultBody struct {
		ID     uint64    `json:"id"`
		Answer *PeerInfo `json:"answer,omitempty"`
		Error  string    `json:"error,omitempty"`
		Reason string    `json:"reason,omitempty"`
	}
	pingBody struct {
		Seq uint64 `json:"seq,omitempty"`
		// Servers, in a server's PONG, are the other live servers of its
		// fleet when they changed since it last told this client (as in
		// REGISTERED); Fleet marks a PONG that carries the list, so an
		// empty one is said too.
		Servers []string `json:"servers,omitempty"`
		Fleet   bool     `json:"fleet,omitempty"`
	}
	errorBody struct {
		Code   string `json:"code"`
		Reason string `json:"reason,omitempty"`
	}
)

// appendFrame appends one encoded frame to dst.
func appendFrame(dst []byte, t msgType, body any) ([]byte, error) {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return dst, err
		}
	}
	if len(b) > maxFrameBody {
		return dst, &ProtocolError{Code: codeFrameTooLarge, Reason: fmt.Sprintf("%s body is %d bytes, limit %d", t, len(b), maxFrameBody)}
	}
	dst = append(dst, frameVersion, byte(t), 0, 0)
	binary.BigEndian.PutUint16(dst[len(dst)-2:], uint16(len(b)))
	return append(dst, b...), nil
}

// frameReader reads frames, enforcing the version, a body size limit and
// the type rules, and skipping unknown extension frames. It reads r
// without a buffer of its own: a QUIC stream and a tls.Conn have theirs,
// and 4 KB more would be a third of an idle registration's heap. A read
// that fails (a deadline that passed) loses nothing: the next call goes
// on in the frame it stopped in, so that a TCP session's reader may wait
// with short deadlines and park (tcppark.go).
type frameReader struct {
	r    io.Reader
	max  int // largest body accepted
	hdr  [headerLen]byte
	hn   int     // header bytes read
	t    msgType // the current frame's type, once its header is read
	body []byte  // its body (nil: in a header), bn bytes of it read
	bn   int     //
	skip int64   // an unknown extension frame's bytes still to discard
}

func newFrameReader(r io.Reader, max int) *frameReader {
	if max <= 0 || max > maxFrameBody {
		max = maxFrameBody
	}
	return &frameReader{r: r, max: max}
}

// empty: no frame was read in part.
func (fr *frameReader) empty() bool { return fr.hn == 0 && fr.body == nil && fr.skip == 0 }

// fill reads into b[*n:] until it is full; io.EOF only if it read none
// of b, io.ErrUnexpectedEOF if it read some.
func (fr *frameReader) fill(b []byte, n *int) error {
	start := *n
	for *n < len(b) {
		m, err := fr.r.Read(b[*n:])
		*n += m
		if err != nil && *n < len(b) {
			if err == io.EOF && (*n > 0 || start > 0) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// next returns the next frame this version understands. Its body is
// valid until the next call. I/O errors are returned as they are;
// protocol violations as *ProtocolError.
func (fr *frameReader) next() (msgType, []byte, error) {
	for {
		if fr.skip > 0 {
			n, err := io.CopyN(io.Discard, fr.r, fr.skip)
			fr.skip -= n
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return 0, nil, err
			}
			continue
		}
		if fr.body == nil {
			if err := fr.fill(fr.hdr[:], &fr.hn); err != nil {
				return 0, nil, err
			}
			fr.hn = 0
			if fr.hdr[0] != frameVersion {
				return 0, nil, &ProtocolError{Code: codeBadVersion, Reason: fmt.Sprintf("frame version %d, this side speaks %d", fr.hdr[0], frameVersion)}
			}
			t := msgType(fr.hdr[1])
			n := int(binary.BigEndian.Uint16(fr.hdr[2:]))
			if n > fr.max {
				return 0, nil, &ProtocolError{Code: codeFrameTooLarge, Reason: fmt.Sprintf("%s body is %d bytes, limit %d", t, n, fr.max)}
			}
			if t >= firstExtensionType && !knownExtension(t) {
				fr.skip = int64(n)
				continue
			}
			if t == 0 || t > typeError && t < firstExtensionType {
				return 0, nil, &ProtocolError{Code: codeUnknownType, Reason: t.String()}
			}
			fr.t, fr.body, fr.bn = t, make([]byte, n), 0
		}
		if err := fr.fill(fr.body, &fr.bn); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // inside a frame
			}
			return 0, nil, err
		}
		body := fr.body
		fr.body = nil
		return fr.t, body, nil
	}
}

// knownExtension reports whether this version understands extension t.
func knownExtension(t msgType) bool {
	switch t {
	case typeVolunteer, typeVolunteered, typeFlight, typeCode, typeCodeResult, typePark, typeParked:
		return true
	}
	return false
}

// decodeBody parses a frame body into v. An empty body leaves v as it is.
func decodeBody(t msgType, b []byte, v any) error {
	if len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return &ProtocolError{Code: codeBadBody, Reason: fmt.Sprintf("%s: %v", t, err)}
	}
	return nil
}
