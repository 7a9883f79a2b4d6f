//go:build linux

package main

import (
	"context"
	"strings"
	"testing"
)

// TestLabMatrixFlags: bad flags are refused before any lab is built (the
// matrix itself runs in lab/matrix's TestLabMatrixShort).
func TestLabMatrixFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--pairs", "medium"}, "neither short nor full"},
		{[]string{"--pairs", "open:bogus"}, `unknown kind "bogus"`},
		{[]string{"extra"}, "takes no arguments"},
		{[]string{"--runs", "x"}, "invalid value"},
		{[]string{"--variants", "main,far"}, `unknown variant "far"`},
		{[]string{"--variants", ""}, `unknown variant ""`},
	} {
		err := labMatrix(context.Background(), tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("lab matrix %q: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}
