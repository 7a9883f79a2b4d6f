package transfer

// The receiver's file system failing (disk full, quota, permissions):
// named errors on this side, a wire code for the control stream, and a
// QUIC application error code on the data stream the failure stops, so
// that the sender's failed write already says why.

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"

	"github.com/reachp2p/reach/stream"
)

// Named errors of the receiver's file system. Test with errors.Is: a
// *FileError on the receiver, a *RemoteError on the sender.
var (
	// ErrDiskFull: no space left on the receiver's disk (ENOSPC).
	ErrDiskFull = errors.New("transfer: no space left on the receiver's disk")
	// ErrQuota: the receiver's disk quota is exhausted (EDQUOT), or the
	// file exceeds its size limit (EFBIG).
	ErrQuota = errors.New("transfer: the receiver's disk quota is exceeded")
	// ErrPermission: the receiver may not write there: permission denied
	// (EACCES, EPERM) or a read-only file system (EROFS).
	ErrPermission = errors.New("transfer: the receiver may not write there")
)

// Stream error codes with which the receiver stops a data stream when its
// file system fails (stream.CodeApplication and up).
const (
	codeDiskFull   = stream.CodeApplication + 1
	codeQuota      = stream.CodeApplication + 2
	codePermission = stream.CodeApplication + 3
)

// fsKinds ties each named error to its wire code and stream code.
var fsKinds = []struct {
	named error
	wire  string
	code  stream.ErrorCode
}{
	{ErrDiskFull, "disk_full", codeDiskFull},
	{ErrQuota, "quota", codeQuota},
	{ErrPermission, "permission", codePermission},
}

// FileError is a failure of the receiver's file system. It unwraps to the
// named error of its kind and to the system's error.
type FileError struct {
	Kind error  // ErrDiskFull, ErrQuota or ErrPermission
	Path string // the manifest path being written
	// Partial is the temporary file that keeps what arrived ("" if none):
	// receiving the same ticket again resumes from it.
	Partial string
	Err     error
}

func (e *FileError) Error() string {
	s := fmt.Sprintf("%v: %s: %v", e.Kind, e.Path, e.Err)
	if e.Partial != "" {
		s += fmt.Sprintf(" (what arrived is kept in %s; receive again to resume)", e.Partial)
	}
	return s
}

func (e *FileError) Unwrap() []error { return []error{e.Kind, e.Err} }

// fsErr classifies err from writing p (partial: its temporary file, if
// what was written stays there); other errors pass unchanged.
func fsErr(p, partial string, err error) error {
	var kind error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ENOSPC):
		kind = ErrDiskFull
	case errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		kind = ErrQuota
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		kind = ErrPermission
	default:
		return err
	}
	if fe, ok := errors.AsType[*FileError](err); ok {
		return fe
	}
	return &FileError{Kind: kind, Path: p, Partial: partial, Err: err}
}

// streamCode is the code with which a data stream stops for err, or
// CodeNone.
func streamCode(err error) stream.ErrorCode {
	for _, k := range fsKinds {
		if errors.Is(err, k.named) {
			return k.code
		}
	}
	return stream.CodeNone
}

// fromStreamCode turns the receiver stopping a data stream with one of
// the codes above into a *RemoteError naming the failure; other errors
// pass unchanged.
func fromStreamCode(err error) error {
	pe, ok := errors.AsType[*stream.PeerError](err)
	if !ok {
		return err
	}
	for _, k := range fsKinds {
		if pe.Code == k.code {
			return &RemoteError{Code: k.wire, Reason: strings.TrimPrefix(k.named.Error(), "transfer: ")}
		}
	}
	return err
}
