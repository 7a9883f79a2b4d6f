package transfer

import (
	"fmt"
	"math"
	"path"
	"strings"
	"unicode/utf8"
)

// DefaultMaxEntries is the most manifest entries a receiver accepts when
// ReceiveConfig.MaxEntries is zero.
const DefaultMaxEntries = 1 << 20

// partSuffix marks the temporary name a file is written to until its hash
// is checked: "dir/.name.reachpart" for "dir/name".
const partSuffix = ".reachpart"

// partName is the temporary name of the file at p.
func partName(p string) string {
	dir, base := path.Split(p)
	return dir + "." + base + partSuffix
}

// checkPath refuses a manifest path that is not a clean, relative,
// slash-separated path inside the target directory.
func checkPath(p string) error {
	bad := func(reason string) error { return &UnsafePathError{Path: p, Reason: reason} }
	switch {
	case p == "" || p == ".":
		return bad("empty")
	case !utf8.ValidString(p):
		return bad("not UTF-8")
	case strings.ContainsAny(p, "\x00\\"):
		return bad("contains NUL or a backslash")
	case hasControl(p):
		return bad("contains a control character or a bidirectional override")
	case strings.HasPrefix(p, "/"):
		return bad("absolute")
	case len(p) >= 2 && p[1] == ':':
		return bad("drive letter")
	case len(p) > 4096:
		return bad("longer than 4096 bytes")
	}
	for _, el := range strings.Split(p, "/") {
		switch el {
		case "..":
			return bad(`climbs out with ".."`)
		case ".", "":
			return bad("not clean")
		}
		if len(el) > 255 {
			return bad("a name longer than 255 bytes")
		}
	}
	if path.Clean(p) != p {
		return bad("not clean")
	}
	return nil
}

// hasControl reports whether s holds a character that a terminal or a
// file manager would interpret rather than show: the C0 controls (below
// 0x20, escape sequences among them), DEL, the C1 controls (U+0080 to
// U+009F, which some terminals take as escape sequences too), and the
// Unicode marks that reorder text ("evil\u202Etxt.exe" shows as
// "evilexe.txt").
func hasControl(s string) bool {
	for _, r := range s {
		switch {
		case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
			return true
		case r == 0x061c, r == 0x200e, r == 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
			return true
		}
	}
	return false
}

// checkTarget refuses a symlink at p whose target is absolute or resolves
// outside the transfer's top level (lexically; the receiver also writes
// through an os.Root, which refuses any escape at the system call).
func checkTarget(p, target string) error {
	bad := func(reason string) error {
		return &UnsafePathError{Path: p, Reason: fmt.Sprintf("symlink to %q %s", target, reason)}
	}
	switch {
	case target == "":
		return bad("is empty")
	case strings.HasPrefix(target, "/") || strings.ContainsAny(target, "\x00\\") || len(target) >= 2 && target[1] == ':':
		return bad("is absolute")
	case !utf8.ValidString(target) || hasControl(target):
		return &UnsafePathError{Path: p, Reason: "symlink target is not UTF-8 or holds a control character"}
	}
	// ".." only at the start: after a symlink element, ".." would climb
	// from wherever that link leads, not where a lexical check thinks.
	climbing := true
	for _, el := range strings.Split(target, "/") {
		if el == ".." && !climbing {
			return bad(`has ".." after a name`)
		}
		climbing = climbing && el == ".."
	}
	resolved := path.Join(path.Dir(p), target)
	if resolved == ".." || strings.HasPrefix(resolved, "../") {
		return bad("points outside the target directory")
	}
	return nil
}

// checkManifest checks every entry of m: paths, types, modes, that
// parents come first as directories, and that no path appears twice.
func checkManifest(m *Manifest, maxEntries int) error {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	if len(m.Entries) > maxEntries {
		return fmt.Errorf("%w: %d entries, the limit is %d", ErrBadManifest, len(m.Entries), maxEntries)
	}
	seen := make(map[string]string, len(m.Entries)) // path -> type
	var total int64
	for i := range m.Entries {
		e := &m.Entries[i]
		if err := checkPath(e.Path); err != nil {
			return err
		}
		if strings.HasSuffix(e.Path, partSuffix) {
			return &UnsafePathError{Path: e.Path, Reason: "ends in " + partSuffix + ", the receiver's temporary suffix"}
		}
		switch e.Type {
		case TypeFile:
			if e.Size < 0 {
				return fmt.Errorf("%w: %q has size %d", ErrBadManifest, e.Path, e.Size)
			}
			// The total must not wrap around: a sum that overflows int64
			// could come out below any MaxSize.
			if e.Size > math.MaxInt64-total {
				return fmt.Errorf("%w: the total size overflows at %q", ErrBadManifest, e.Path)
			}
			total += e.Size
		case TypeDir:
			if e.Size != 0 {
				return fmt.Errorf("%w: directory %q has a size", ErrBadManifest, e.Path)
			}
		case TypeSymlink:
			if e.Size != 0 {
				return fmt.Errorf("%w: symlink %q has a size", ErrBadManifest, e.Path)
			}
			if err := checkTarget(e.Path, e.Target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: %q is of type %q", ErrSpecialFile, e.Path, e.Type)
		}
		if e.Mode&^0o777 != 0 {
			return fmt.Errorf("%w: %q has mode %v (only permission bits may be sent)", ErrSpecialFile, e.Path, e.Mode)
		}
		if _, dup := seen[e.Path]; dup {
			return fmt.Errorf("%w: %q appears twice", ErrBadManifest, e.Path)
		}
		if dir := path.Dir(e.Path); dir != "." {
			// Parents must be directories listed earlier: a file or a
			// symlink cannot be a parent.
			if t, ok := seen[dir]; !ok || t != TypeDir {
				return fmt.Errorf("%w: %q comes before its directory %q", ErrBadManifest, e.Path, dir)
			}
		}
		seen[e.Path] = e.Type
	}
	return nil
}
