//go:build !linux

package epollpark

import "syscall"

// Set is a set of parked connections; on this system it parks none.
type Set struct{}

// Park returns ErrUnsupported: the caller goes on reading itself.
func (s *Set) Park(rc syscall.RawConn, wake func()) (int32, error) { return 0, ErrUnsupported }

// Unpark returns false: nothing is ever parked.
func (s *Set) Unpark(key int32) bool { return false }

// Len returns 0.
func (s *Set) Len() int { return 0 }

// Close does nothing.
func (s *Set) Close() {}
