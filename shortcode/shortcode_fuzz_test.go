package shortcode

import (
	"errors"
	"testing"
)

// FuzzParse: any string either parses into a code whose text form parses
// back to it, or fails with ErrBadCode.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"7-kato-bira-zemo", "1 KATO BIRA ZEMO", "0-a-b-c", "99999999999-kato-bira-zemo", "7--kato"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrBadCode) {
				t.Fatalf("Parse(%q): %v, not ErrBadCode", s, err)
			}
			return
		}
		if back, err := Parse(c.String()); err != nil || back != c {
			t.Fatalf("Parse(%q) = %v; its text %q parses to %v, %v", s, c, c.String(), back, err)
		}
	})
}
