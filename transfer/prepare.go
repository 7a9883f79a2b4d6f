package transfer

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"unicode/utf8"

	"golang.org/x/sync/errgroup"

	"github.com/reachp2p/reach/identity"
)

// PrepareConfig tunes Prepare. The zero value is ready to use.
type PrepareConfig struct {
	// Workers is how many files are hashed at once. Zero: GOMAXPROCS, at
	// most 4.
	Workers int
	// Logger receives a warning per skipped entry. Nil: discard.
	Logger *slog.Logger
}

// Skipped is an entry Prepare left out, and why.
type Skipped struct {
	Path   string // as found on the sender's disk
	Reason string
}

// Offer is a set of files ready to be served: the manifest, with every
// file hashed, and where each entry is on the sender's disk.
type Offer struct {
	// ID names the offer in tickets.
	ID ID
	// Manifest is what receivers get.
	Manifest Manifest
	// Skipped lists what was left out: special files (devices, FIFOs,
	// sockets), symlinks that point outside the offer, names that are not
	// UTF-8.
	Skipped []Skipped

	sources []string // per entry: the path on disk (files only)
}

// Ticket returns the ticket of the offer served by the node with peer ID
// peer, registered with the given servers (connect strings).
func (o *Offer) Ticket(peer identity.PeerID, servers ...string) (Ticket, error) {
	return NewTicket(peer, o.ID, servers...)
}

// Prepare builds an offer from files and directories. Each path becomes
// an entry named by its last element ("a/b/photos" is "photos"), a
// directory with everything below it. Symlinks below a directory are sent
// as symlinks if they point inside the offer, and skipped otherwise; a
// symlink named directly is followed. ctx bounds the hashing.
func Prepare(ctx context.Context, paths []string, cfg PrepareConfig) (*Offer, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := &Offer{ID: NewID()}
	tops := map[string]string{}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		name := filepath.Base(abs)
		if name == string(filepath.Separator) || name == "." {
			return nil, fmt.Errorf("transfer: cannot send %q: name it by its directory", p)
		}
		if prev, dup := tops[name]; dup {
			return nil, fmt.Errorf("%w: %q and %q are both %q", ErrDuplicatePath, prev, p, name)
		}
		tops[name] = p
		if err := o.add(abs, name, log); err != nil {
			return nil, err
		}
	}
	if err := o.hash(ctx, cfg.Workers); err != nil {
		return nil, err
	}
	return o, nil
}

// add appends the entries of the file or tree at abs, named name.
func (o *Offer) add(abs, name string, log *slog.Logger) error {
	st, err := os.Stat(abs) // a symlink named directly is followed
	if err != nil {
		return err
	}
	skip := func(p, reason string) {
		log.Warn("transfer: skipping", "path", p, "reason", reason)
		o.Skipped = append(o.Skipped, Skipped{Path: p, Reason: reason})
	}
	if !utf8.ValidString(name) {
		skip(abs, "name is not UTF-8")
		return nil
	}
	if err := checkPath(name); err != nil {
		skip(abs, err.Error())
		return nil
	}
	if !st.IsDir() {
		if !st.Mode().IsRegular() {
			skip(abs, "not a regular file: "+st.Mode().Type().String())
			return nil
		}
		o.addFile(abs, name, st)
		return nil
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil { // WalkDir does not follow a symlinked root
		return err
	}
	return filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(abs, p)
		if err != nil {
			return err
		}
		mpath := filepath.ToSlash(filepath.Join(name, rel))
		if !utf8.ValidString(mpath) {
			skip(p, "name is not UTF-8")
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if err := checkPath(mpath); err != nil {
			skip(p, err.Error())
			if d.IsDir() && p != abs {
				return filepath.SkipDir // its children would have no parent
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch t := info.Mode().Type(); {
		case t == fs.ModeDir:
			o.Manifest.Entries = append(o.Manifest.Entries, Entry{Path: mpath, Type: TypeDir, Mode: info.Mode().Perm()})
			o.sources = append(o.sources, "")
		case t == 0:
			o.addFile(p, mpath, info)
		case t == fs.ModeSymlink:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			target = filepath.ToSlash(target)
			if err := checkTarget(mpath, target); err != nil {
				skip(p, "symlink to "+target+" leads outside what is sent")
				return nil
			}
			o.Manifest.Entries = append(o.Manifest.Entries, Entry{Path: mpath, Type: TypeSymlink, Mode: 0o777, Target: target})
			o.sources = append(o.sources, "")
		default:
			skip(p, "not a regular file: "+t.String())
		}
		return nil
	})
}

func (o *Offer) addFile(p, mpath string, info fs.FileInfo) {
	o.Manifest.Entries = append(o.Manifest.Entries, Entry{
		Path: mpath, Type: TypeFile, Size: info.Size(), Mode: info.Mode().Perm(), ModTime: info.ModTime(),
	})
	o.sources = append(o.sources, p)
}

// hash fills in the files' hashes (and their sizes, as read).
func (o *Offer) hash(ctx context.Context, workers int) error {
	if workers <= 0 {
		workers = min(runtime.GOMAXPROCS(0), 4)
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for i := range o.Manifest.Entries {
		e := &o.Manifest.Entries[i]
		if e.Type != TypeFile {
			continue
		}
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			h, n, err := hashFile(o.sources[i], -1)
			if err != nil {
				return err
			}
			e.Hash, e.Size = h, n
			return nil
		})
	}
	return g.Wait()
}

// hashFile hashes the first limit bytes of the file at p (all of it if
// limit < 0) and returns the hash and the bytes read.
func hashFile(p string, limit int64) (Hash, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return Hash{}, 0, err
	}
	defer f.Close()
	h := newHasher()
	var r io.Reader = f
	if limit >= 0 {
		r = io.LimitReader(f, limit)
	}
	n, err := io.CopyBuffer(h, r, make([]byte, 256<<10))
	if err != nil {
		return Hash{}, n, err
	}
	return sumOf(h), n, nil
}
