package transfer

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// protocolVersion is the "v" of hello; a sender refuses other versions.
const protocolVersion = 1

// Caps on one control message. Every message is read within a cap that
// depends on what the reader expects next, checked against the length
// prefix before anything is read (and the buffer grows with what arrives,
// so a lying length costs no memory).
const (
	// MaxManifestFrame caps the two messages whose size grows with the
	// number of files: the manifest (about 200 bytes per entry, so
	// DefaultMaxEntries fit) and the receiver's request.
	MaxManifestFrame = 256 << 20
	// MaxControlFrame caps every other control message: hello, data,
	// done, error.
	MaxControlFrame = 64 << 10
	// maxReason caps the reason of an error message, so that it always
	// fits in MaxControlFrame.
	maxReason = 4 << 10
)

// Control message types ("t").
const (
	msgHello    = "hello"    // receiver -> sender, first on the control stream
	msgManifest = "manifest" // sender -> receiver
	msgRequest  = "request"  // receiver -> sender: what to send
	msgData     = "data"     // receiver -> sender, first on each data stream
	msgDone     = "done"     // receiver -> sender: all verified and in place
	msgError    = "error"    // either way; the sender of it gives up
)

// ctrl is every control message; the type says which fields matter.
type ctrl struct {
	T        string     `json:"t"`
	V        int        `json:"v,omitempty"`        // hello
	Transfer string     `json:"transfer,omitempty"` // hello: the ID in hex
	Token    string     `json:"token,omitempty"`    // manifest, data
	Manifest *Manifest  `json:"manifest,omitempty"` // manifest
	Files    []fileWant `json:"files,omitempty"`    // request
	Streams  int        `json:"streams,omitempty"`  // request: data streams that will open
	Code     string     `json:"code,omitempty"`     // error
	Reason   string     `json:"reason,omitempty"`   // error
}

// fileWant asks for one file: from Offset on, if the sender's first Offset
// bytes hash to Prefix; otherwise from zero.
type fileWant struct {
	Index  int   `json:"i"`
	Offset int64 `json:"off,omitempty"`
	Prefix *Hash `json:"prefix,omitempty"`
}

// writeCtrl writes one control frame: a 4-byte big-endian length and the
// JSON message.
func writeCtrl(w io.Writer, m *ctrl) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > MaxManifestFrame {
		return fmt.Errorf("%w: control message of %d bytes", ErrBadManifest, len(b))
	}
	frame := make([]byte, 4, 4+len(b))
	binary.BigEndian.PutUint32(frame, uint32(len(b)))
	_, err = w.Write(append(frame, b...))
	return err
}

// readCtrl reads one control frame of at most limit bytes
// (MaxControlFrame or MaxManifestFrame). A frame of type error is returned
// as a *RemoteError.
func readCtrl(r io.Reader, limit uint32) (*ctrl, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > limit {
		return nil, fmt.Errorf("%w: %w: %d bytes, the limit is %d", ErrProtocol, ErrFrameTooLarge, n, limit)
	}
	// Grow with what arrives rather than trust the length for memory.
	b, err := io.ReadAll(io.LimitReader(r, int64(n)))
	if err != nil || len(b) != int(n) {
		return nil, fmt.Errorf("%w: control frame cut short (%d of %d bytes): %v", ErrProtocol, len(b), n, err)
	}
	var m ctrl
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: bad control message: %v", ErrProtocol, err)
	}
	if m.T == msgError {
		// The peer's words end up on a terminal: no escape sequences.
		return nil, &RemoteError{Code: printable(m.Code), Reason: printable(m.Reason)}
	}
	return &m, nil
}

// expect reads a control message of type t, within the cap of t.
func expect(r io.Reader, t string) (*ctrl, error) {
	limit := uint32(MaxControlFrame)
	if t == msgManifest || t == msgRequest {
		limit = MaxManifestFrame
	}
	m, err := readCtrl(r, limit)
	if err != nil {
		return nil, err
	}
	if m.T != t {
		return nil, fmt.Errorf("%w: got %q, want %q", ErrProtocol, m.T, t)
	}
	return m, nil
}

// errorMsg is the error message that reports err to the peer.
func errorMsg(err error) *ctrl {
	reason := err.Error()
	if len(reason) > maxReason {
		reason = strings.ToValidUTF8(reason[:maxReason], "") + "..."
	}
	return &ctrl{T: msgError, Code: errCode(err), Reason: reason}
}

// Data stream records, sender -> receiver, after the receiver's data
// message:
//
//	0x01 | index (uvarint) | offset (uvarint) | length (uvarint) | length bytes
//	0x00: end of this stream's files
const (
	recEnd  = 0x00
	recFile = 0x01
)

// appendFileHeader appends the header of a file record.
func appendFileHeader(b []byte, index int, offset, length int64) []byte {
	b = append(b, recFile)
	b = binary.AppendUvarint(b, uint64(index))
	b = binary.AppendUvarint(b, uint64(offset))
	return binary.AppendUvarint(b, uint64(length))
}

// fileHeader is a parsed file record header.
type fileHeader struct {
	index          int
	offset, length int64
}

// readRecord reads a record header: ok false at the end record.
func readRecord(r *bufio.Reader) (h fileHeader, ok bool, err error) {
	kind, err := r.ReadByte()
	if err != nil {
		return h, false, err
	}
	switch kind {
	case recEnd:
		return h, false, nil
	case recFile:
	default:
		return h, false, fmt.Errorf("%w: record type %#x", ErrProtocol, kind)
	}
	var v [3]uint64
	for i := range v {
		if v[i], err = binary.ReadUvarint(r); err != nil {
			return h, false, fmt.Errorf("%w: record header: %v", ErrProtocol, err)
		}
		if v[i] > 1<<62 {
			return h, false, fmt.Errorf("%w: record header value %d", ErrProtocol, v[i])
		}
	}
	return fileHeader{int(v[0]), int64(v[1]), int64(v[2])}, true, nil
}

// printable replaces what hasControl refuses in a path (and invalid UTF-8)
// with U+FFFD.
func printable(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if !hasControl(s) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if hasControl(string(r)) {
			return '\uFFFD'
		}
		return r
	}, s)
}
