package main

// A listen or dial whose stdout fails (a full disk, a quota, a closed
// pipe) tells its peer why, and the peer says so, instead of both
// reporting an aborted session.

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/reachp2p/reach/stream"
)

// codeOutputFailed: the side that closes the session with it could not
// write what it received to its output; the session's reason is the
// system's error ("no space left on device").
const codeOutputFailed = codeForwardConnect + 4

// outputError is what a peer's codeOutputFailed says.
type outputError struct{ reason string }

func (e *outputError) Error() string {
	return "the peer could not write what it received to its output: " + e.reason
}

// outputFailed closes sess with codeOutputFailed and the reason of err
// (stdout's write error), and returns the error this side reports.
func outputFailed(sess *stream.Session, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err // "no space left on device", not "write /dev/stdout: ..."
	}
	sess.CloseWithError(uint64(codeOutputFailed), err.Error())
	return fmt.Errorf("writing stdout: %w", err)
}
