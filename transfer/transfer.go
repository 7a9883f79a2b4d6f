// Package transfer sends files and folders between two reach peers, with
// verification, resume and progress.
//
// The sending side prepares an Offer (Prepare walks the paths and hashes
// every file with BLAKE3), adds it to a Sender, and gives the receiver a
// Ticket: one copy-pasteable string with the sender's peer ID, its
// rendezvous servers and the transfer's ID. The receiving side calls
// Receive with the ticket:
//
//	// sender
//	offer, err := transfer.Prepare(ctx, []string{"photos/"}, transfer.PrepareConfig{})
//	s := transfer.NewSender(transfer.SenderConfig{})
//	s.Add(offer)
//	fmt.Println(offer.Ticket(node.ID(), node.Server()))
//	go s.Serve(ctx, node)
//
//	// receiver
//	tk, err := transfer.ParseTicket(str)
//	res, err := transfer.Receive(ctx, node, tk, transfer.ReceiveConfig{Dir: "in"})
//
// What happens, in order (the wire format is in docs/transfer.md):
//
//   - The receiver opens a control stream and names the transfer. The
//     sender answers with the manifest: every entry's relative path, type,
//     size, mode, modification time and BLAKE3-256 hash.
//   - The receiver checks the manifest before any data flows: unsafe paths
//     (ErrUnsafePath, control characters in names included), special files
//     (ErrSpecialFile), sizes that are negative or overflow (ErrBadManifest),
//     the size cap (ErrTooLarge), files that exist already (ErrExists,
//     unless Force), directories that existed before (ErrExistingDir,
//     unless Force), and its own Confirm hook. For each file it looks on disk for a finished
//     copy (same size and hash: skipped) or a partial one from an earlier
//     attempt (its length and the hash of its content are sent, so the
//     sender resumes after it if its own file starts the same way).
//   - The sender streams the requested files on a few data streams, back to
//     back with no round trip per file. The receiver writes each file to a
//     temporary name next to its final one, checks the hash, and renames it
//     into place (ErrHashMismatch otherwise).
//
// Every write goes through an os.Root of the target directory, so nothing
// is written outside it even through symlinks already there.
package transfer

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"time"

	"lukechampine.com/blake3"
)

// Named errors. Test with errors.Is; the error structs below unwrap to them.
var (
	// ErrUnsafePath: a manifest path is absolute, climbs out with "..", is
	// not clean, or a symlink points outside the target directory; or a
	// write would leave the target directory (*UnsafePathError).
	ErrUnsafePath = errors.New("transfer: unsafe path")
	// ErrSpecialFile: a manifest entry is a device, FIFO, socket or other
	// non-regular file.
	ErrSpecialFile = errors.New("transfer: special file refused")
	// ErrTooLarge: the transfer is larger than ReceiveConfig.MaxSize.
	ErrTooLarge = errors.New("transfer: transfer exceeds the size limit")
	// ErrExists: a file to be received exists already with other content
	// and ReceiveConfig.Force is not set (*ExistsError).
	ErrExists = errors.New("transfer: file exists")
	// ErrHashMismatch: a received file does not have the manifest's hash;
	// it was not moved into place.
	ErrHashMismatch = errors.New("transfer: hash mismatch")
	// ErrUnknownTransfer: the sender does not offer the ticket's transfer
	// (finished, removed, or a different sender run).
	ErrUnknownTransfer = errors.New("transfer: the sender does not offer this transfer")
	// ErrRefused: the other side ended the transfer with an error; the
	// *RemoteError says why.
	ErrRefused = errors.New("transfer: refused by the peer")
	// ErrProtocol: the peer broke the transfer protocol.
	ErrProtocol = errors.New("transfer: protocol error")
	// ErrBadManifest: the manifest is malformed (duplicate paths, missing
	// parent directories, too many entries, bad hashes).
	ErrBadManifest = errors.New("transfer: bad manifest")
	// ErrExistingDir: the manifest names a directory that existed in the
	// target before the transfer and holds something the transfer does
	// not (or is empty), and ReceiveConfig.Force is not set: the transfer
	// would write into a directory it does not own ($HOME/.ssh).
	ErrExistingDir = errors.New("transfer: directory exists")
	// ErrFrameTooLarge: a control message is longer than its cap
	// (MaxControlFrame, or MaxManifestFrame for the manifest and the
	// request). It comes wrapped with ErrProtocol.
	ErrFrameTooLarge = errors.New("transfer: control message too large")
	// ErrDuplicatePath: two paths given to Prepare have the same name.
	ErrDuplicatePath = errors.New("transfer: two paths have the same name")
	// ErrChanged: a file changed on the sender's disk after Prepare hashed
	// it.
	ErrChanged = errors.New("transfer: file changed since it was offered")
)

// UnsafePathError says which path was refused and why.
type UnsafePathError struct {
	Path   string
	Reason string
}

func (e *UnsafePathError) Error() string {
	return fmt.Sprintf("transfer: unsafe path %q: %s", e.Path, e.Reason)
}

// Unwrap returns ErrUnsafePath.
func (e *UnsafePathError) Unwrap() error { return ErrUnsafePath }

// ExistsError lists the files that would be overwritten.
type ExistsError struct {
	Paths []string
}

func (e *ExistsError) Error() string {
	s := fmt.Sprintf("transfer: %d file(s) exist with other content (use Force to overwrite): %q", len(e.Paths), e.Paths[0])
	if len(e.Paths) > 1 {
		s += ", ..."
	}
	return s
}

// Unwrap returns ErrExists.
func (e *ExistsError) Unwrap() error { return ErrExists }

// RemoteError is an error the peer reported. It unwraps to ErrRefused and
// to the named error its code stands for, if any.
type RemoteError struct {
	Code   string // a code of docs/transfer.md, e.g. "too_large"
	Reason string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("transfer: peer: %s: %s", e.Code, e.Reason)
}

// Unwrap returns ErrRefused and the named error of the code.
func (e *RemoteError) Unwrap() []error {
	out := []error{ErrRefused}
	if err, ok := codeErrors[e.Code]; ok {
		out = append(out, err)
	}
	return out
}

// Error codes on the wire and the named errors they stand for.
var codeErrors = map[string]error{
	"unknown_transfer": ErrUnknownTransfer,
	"unsafe_path":      ErrUnsafePath,
	"special_file":     ErrSpecialFile,
	"too_large":        ErrTooLarge,
	"exists":           ErrExists,
	"existing_dir":     ErrExistingDir,
	"hash_mismatch":    ErrHashMismatch,
	"protocol":         ErrProtocol,
	"bad_manifest":     ErrBadManifest,
	"changed":          ErrChanged,
	"disk_full":        ErrDiskFull,
	"quota":            ErrQuota,
	"permission":       ErrPermission,
}

// errCode is the wire code of err ("error" if it has none).
func errCode(err error) string {
	for code, named := range codeErrors {
		if errors.Is(err, named) {
			return code
		}
	}
	return "error"
}

// ID names one offer; it is in the ticket and acts as its secret: whoever
// knows it may fetch the files.
type ID [16]byte

// NewID returns a random ID.
func NewID() ID {
	var id ID
	rand.Read(id[:])
	return id
}

// String returns the ID in hex.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Hash is a BLAKE3-256 digest.
type Hash [32]byte

// String returns the hash in hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// MarshalText encodes the hash in hex.
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText decodes a hex hash.
func (h *Hash) UnmarshalText(b []byte) error {
	if len(b) != 2*len(h) {
		return fmt.Errorf("%w: hash of %d hex digits", ErrBadManifest, len(b))
	}
	_, err := hex.Decode(h[:], b)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	return nil
}

// newHasher returns a BLAKE3-256 hasher.
func newHasher() *blake3.Hasher { return blake3.New(32, nil) }

func sumOf(h *blake3.Hasher) Hash {
	var out Hash
	h.Sum(out[:0])
	return out
}

// Entry types.
const (
	TypeFile    = "file"
	TypeDir     = "dir"
	TypeSymlink = "symlink"
)

// Entry is one item of a manifest.
type Entry struct {
	// Path is relative to the target directory, with "/" separators, clean
	// (no "." or ".." elements, no leading or trailing "/").
	Path string `json:"path"`
	// Type is TypeFile, TypeDir or TypeSymlink.
	Type string `json:"type"`
	// Size is a file's length in bytes (zero for others).
	Size int64 `json:"size,omitempty"`
	// Mode holds the permission bits (0o777); others are dropped.
	Mode fs.FileMode `json:"mode"`
	// ModTime is the modification time on the sender (files only).
	ModTime time.Time `json:"mtime,omitzero"`
	// Hash is a file's BLAKE3-256 digest.
	Hash Hash `json:"hash,omitzero"`
	// Target is a symlink's target: relative, and inside the transfer.
	Target string `json:"target,omitempty"`
}

// Manifest is the list of entries of a transfer, parents before children.
type Manifest struct {
	Entries []Entry `json:"entries"`
}

// Size returns the total of the files' sizes. It saturates at
// math.MaxInt64 rather than wrap around, and counts only files with a size
// of zero or more, so that an unchecked manifest cannot make it look small
// (the receiver refuses such manifests with ErrBadManifest anyway).
func (m *Manifest) Size() int64 {
	var n int64
	for _, e := range m.Entries {
		if e.Type != TypeFile || e.Size <= 0 {
			continue
		}
		if e.Size > math.MaxInt64-n {
			return math.MaxInt64
		}
		n += e.Size
	}
	return n
}

// Files returns the number of regular files.
func (m *Manifest) Files() int {
	n := 0
	for _, e := range m.Entries {
		if e.Type == TypeFile {
			n++
		}
	}
	return n
}
