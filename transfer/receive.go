package transfer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"lukechampine.com/blake3"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/stream"
)

// DefaultStreams is how many data streams a receiver opens when
// ReceiveConfig.Streams is zero. A file always travels on one stream;
// several streams let small files overlap their disk work (see
// docs/transfer.md for the measurements).
const DefaultStreams = 4

// ReceiveConfig tunes Receive. The zero value receives into the current
// directory, refuses to overwrite, and has no size limit.
type ReceiveConfig struct {
	// Dir is the target directory, created if missing. Empty: ".".
	Dir string
	// Force overwrites files (and replaces symlinks) that exist with other
	// content, and lets the transfer write into directories that existed
	// before it. Zero: such files fail the transfer with an *ExistsError,
	// such directories with ErrExistingDir, before any data flows (a
	// directory that holds only this transfer's own files, as an earlier
	// attempt leaves it, is not in the way). Directories are never
	// replaced, and one that existed before keeps its mode even with
	// Force.
	Force bool
	// MaxSize caps the total size of the files. Zero or negative: no
	// limit. The total is summed without overflow (a manifest whose sizes
	// overflow int64 is ErrBadManifest).
	MaxSize int64
	// MaxEntries caps the manifest's entries. Zero: DefaultMaxEntries.
	MaxEntries int
	// Streams is how many data streams to open. Zero: DefaultStreams.
	Streams int
	// Confirm, if set, sees what is offered before any data flows; an
	// error refuses the transfer (Receive returns it).
	Confirm func(Incoming) error
	// Progress, if set, gets a snapshot every ProgressInterval (zero:
	// DefaultProgressInterval) and a last one with Done set.
	Progress         func(Progress)
	ProgressInterval time.Duration
	// FileDone, if set, is called for each file moved into place (from
	// the data streams' goroutines, possibly at the same time).
	FileDone func(Entry)
	// Sync flushes each file to stable storage before it is renamed into
	// place. Zero: no fsync (the data is verified, but a power loss right
	// after the transfer may lose it).
	Sync bool
	// Logger receives debug logs. Nil: discard.
	Logger *slog.Logger
}

// Incoming is what a receiver is offered, as Confirm sees it.
type Incoming struct {
	Peer     identity.PeerID
	Manifest *Manifest
	// Files and Size are the manifest's files and their total size.
	Files int
	Size  int64
	// OnDisk is how much is on disk already (finished files and verified
	// partial ones), Complete how many files are finished.
	OnDisk   int64
	Complete int
	// Overwrite lists the files that exist with other content; only with
	// Force, else the transfer has already failed.
	Overwrite []string
}

// ReceiveResult is how a receive went.
type ReceiveResult struct {
	Manifest *Manifest
	// Files counts the files written by this call, Bytes the file content
	// that came over the network, Resumed what was on disk already
	// (finished files and the verified prefixes of partial ones).
	Files   int
	Bytes   int64
	Resumed int64
	// Complete counts the files that were finished on disk already.
	Complete int
	Elapsed  time.Duration
}

// SessionDialer opens sessions to peers: a *reach.Node.
type SessionDialer interface {
	DialSession(ctx context.Context, peer identity.PeerID) (*stream.Session, error)
}

// Receive connects to the ticket's sender with d and receives the offer
// into cfg.Dir. ctx bounds the whole transfer; the session stays open for
// the caller (a *reach.Node closes it with the node).
func Receive(ctx context.Context, d SessionDialer, tk Ticket, cfg ReceiveConfig) (*ReceiveResult, error) {
	sess, err := d.DialSession(ctx, tk.Peer)
	if err != nil {
		return nil, err
	}
	return ReceiveSession(ctx, sess, tk.ID, cfg)
}

// ReceiveSession receives the offer id from the peer of sess into
// cfg.Dir. ctx bounds the whole transfer.
func ReceiveSession(ctx context.Context, sess *stream.Session, id ID, cfg ReceiveConfig) (*ReceiveResult, error) {
	if cfg.Dir == "" {
		cfg.Dir = "."
	}
	if cfg.Streams <= 0 {
		cfg.Streams = DefaultStreams
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fsErr(cfg.Dir, "", err)
	}
	root, err := os.OpenRoot(cfg.Dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	r := &receiver{cfg: cfg, root: root, sess: sess}
	defer r.closeDirs()
	res, err := r.run(ctx, id)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("transfer: %w (%v)", ctx.Err(), err)
	}
	return res, err
}

// receiver is one ReceiveSession call.
type receiver struct {
	cfg  ReceiveConfig
	root *os.Root
	sess *stream.Session
	m    *Manifest

	plans   map[int]*filePlan // wanted files by entry index
	existed map[string]bool   // directories that were there before: never chmod'ed
	names   map[string]bool   // manifest paths and their temporary names (see owned)
	meter   *meter
	got     atomic.Int64 // files written
	bytes   atomic.Int64 // content bytes received
	resumed atomic.Int64

	dirsMu sync.Mutex
	dirs   map[string]*os.Root // see at
}

// filePlan is what the receiver asks for one file.
type filePlan struct {
	want   fileWant
	prefix *blake3.Hasher // the hash state after the partial file's content
	taken  atomic.Bool    // its record arrived
}

func (r *receiver) run(ctx context.Context, id ID) (*ReceiveResult, error) {
	start := time.Now()
	cs, err := r.sess.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	defer cs.Close()
	stop := context.AfterFunc(ctx, func() { cs.Close() })
	defer stop()
	if err := writeCtrl(cs, &ctrl{T: msgHello, V: protocolVersion, Transfer: id.String()}); err != nil {
		return nil, err
	}
	mm, err := expect(cs, msgManifest)
	if err != nil {
		return nil, err
	}
	if mm.Manifest == nil {
		return nil, fmt.Errorf("%w: no manifest", ErrProtocol)
	}
	r.m = mm.Manifest
	refuse := func(err error) (*ReceiveResult, error) {
		writeCtrl(cs, errorMsg(err))
		return nil, err
	}
	if err := checkManifest(r.m, r.cfg.MaxEntries); err != nil {
		return refuse(err)
	}
	size := r.m.Size()
	if r.cfg.MaxSize > 0 && size > r.cfg.MaxSize {
		return refuse(fmt.Errorf("%w: %d bytes offered, the limit is %d", ErrTooLarge, size, r.cfg.MaxSize))
	}
	in, err := r.plan()
	if err != nil {
		return refuse(err)
	}
	in.Peer = r.sess.RemotePeer()
	if r.cfg.Confirm != nil {
		if err := r.cfg.Confirm(in); err != nil {
			return refuse(err)
		}
	}
	if err := r.makeDirs(); err != nil {
		return refuse(err)
	}
	req := &ctrl{T: msgRequest, Streams: min(r.cfg.Streams, len(r.plans))}
	for i := range r.m.Entries {
		if p := r.plans[i]; p != nil {
			req.Files = append(req.Files, p.want)
		}
	}
	if err := writeCtrl(cs, req); err != nil {
		return nil, err
	}
	r.meter = newMeter(in.Peer.String(), in.Files, in.Size, in.OnDisk, in.Complete)
	stopReport := r.meter.report(r.cfg.Progress, r.cfg.ProgressInterval)

	// A remote error on the control stream ends everything.
	g, gctx := errgroup.WithContext(ctx)
	remote := make(chan error, 1)
	go func() {
		m, err := readCtrl(cs, MaxControlFrame)
		if err == nil {
			err = fmt.Errorf("%w: unexpected %q", ErrProtocol, m.T)
		}
		remote <- err
	}()
	for range req.Streams {
		g.Go(func() error { return r.dataStream(gctx, mm.Token, remote) })
	}
	err = g.Wait()
	if err == nil {
		err = r.finish()
	}
	if err != nil {
		stopReport(false)
		// A stream failure may be the sender giving up: its reason, which
		// comes right after, beats ours.
		if errCode(err) == "error" { // not our own named error
			t := time.NewTimer(time.Second)
			defer t.Stop()
			select {
			case rerr := <-remote:
				if _, ok := errors.AsType[*RemoteError](rerr); ok {
					return nil, rerr
				}
			case <-t.C:
			case <-ctx.Done():
			}
		}
		writeCtrl(cs, errorMsg(err))
		return nil, err
	}
	stopReport(true)
	if err := writeCtrl(cs, &ctrl{T: msgDone}); err != nil {
		return nil, err
	}
	// Wait (briefly) for the sender's EOF: it has seen "done".
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-remote:
	case <-t.C:
	}
	return &ReceiveResult{
		Manifest: r.m, Files: int(r.got.Load()), Bytes: r.bytes.Load(), Resumed: r.resumed.Load(),
		Complete: in.Complete, Elapsed: time.Since(start),
	}, nil
}

// rootErr turns os.Root's refusal to leave the root into ErrUnsafePath.
func rootErr(p string, err error) error {
	if err != nil && strings.Contains(err.Error(), "escapes from parent") {
		return &UnsafePathError{Path: p, Reason: "leads outside the target directory through a symlink on disk"}
	}
	return err
}

func native(p string) string { return filepath.FromSlash(p) }

// plan looks at the disk for every entry: finished files are skipped,
// partial ones resumed, existing different ones are conflicts.
func (r *receiver) plan() (Incoming, error) {
	in := Incoming{Manifest: r.m, Files: r.m.Files(), Size: r.m.Size()}
	r.plans = map[int]*filePlan{}
	r.existed = map[string]bool{}
	var foreign []string          // existing directories the transfer does not own
	replaced := map[string]bool{} // directories that replace something else
	for i, e := range r.m.Entries {
		var st fs.FileInfo
		var err error
		if replaced[path.Dir(e.Path)] {
			// Its parent will be a new directory: nothing is there. (And
			// the thing there now may be a symlink leading out.)
			err = fs.ErrNotExist
		} else if e.Type == TypeFile {
			var dr *os.Root
			var base string
			if dr, base, err = r.at(e.Path); err == nil {
				st, err = dr.Lstat(base)
			}
		} else {
			st, err = r.root.Lstat(native(e.Path))
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return in, rootErr(e.Path, err)
		}
		exists := err == nil
		switch e.Type {
		case TypeDir:
			if replaced[path.Dir(e.Path)] || exists && !st.IsDir() {
				replaced[e.Path] = true
			}
			if exists && !st.IsDir() {
				in.Overwrite = append(in.Overwrite, e.Path)
			}
			if exists && st.IsDir() && !replaced[path.Dir(e.Path)] {
				r.existed[e.Path] = true
				if why := r.owned(e.Path); why != "" {
					foreign = append(foreign, e.Path+" ("+why+")")
				}
			}
		case TypeSymlink:
			if exists {
				if t, err := r.root.Readlink(native(e.Path)); err == nil && filepath.ToSlash(t) == e.Target {
					continue
				}
				in.Overwrite = append(in.Overwrite, e.Path)
			}
		case TypeFile:
			if exists && st.Mode().IsRegular() && st.Size() == e.Size {
				h, _, err := r.hashOpen(e.Path, e.Size)
				if err == nil && sumOf(h) == e.Hash {
					in.Complete++
					in.OnDisk += e.Size
					continue
				}
			}
			if exists {
				in.Overwrite = append(in.Overwrite, e.Path)
			}
			p := &filePlan{want: fileWant{Index: i}}
			if off, h := r.partial(e); off > 0 {
				sum := sumOf(h)
				p.want.Offset, p.want.Prefix, p.prefix = off, &sum, h
				in.OnDisk += off
			}
			r.plans[i] = p
		}
	}
	if len(foreign) > 0 && !r.cfg.Force {
		more := ""
		if len(foreign) > 1 {
			more = fmt.Sprintf(" and %d more", len(foreign)-1)
		}
		return in, fmt.Errorf("%w: %s%s; the transfer would write into a directory it did not create (use Force to allow it)",
			ErrExistingDir, foreign[0], more)
	}
	if len(in.Overwrite) > 0 && !r.cfg.Force {
		return in, &ExistsError{Paths: in.Overwrite}
	}
	for _, p := range in.Overwrite {
		if st, err := r.root.Lstat(native(p)); err == nil && st.IsDir() {
			return in, &ExistsError{Paths: []string{p + " (a directory; not replaced even with Force)"}}
		}
	}
	r.resumed.Store(in.OnDisk)
	return in, nil
}

// owned says why the existing directory dir is not the transfer's own, or
// "" if it is: it must hold nothing but what the manifest puts there (its
// entries and their temporary files), as an earlier attempt of the same
// transfer leaves it. An empty directory is not owned: $HOME/bin or an
// empty $HOME/.ssh is exactly where a hostile sender would plant a file.
func (r *receiver) owned(dir string) string {
	if r.names == nil {
		r.names = make(map[string]bool, len(r.m.Entries))
		for _, e := range r.m.Entries {
			r.names[e.Path] = true
			if e.Type == TypeFile {
				r.names[partName(e.Path)] = true
			}
		}
	}
	f, err := r.root.Open(native(dir))
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return err.Error()
	}
	if len(names) == 0 {
		return "existed before, empty"
	}
	for _, n := range names {
		if !r.names[dir+"/"+n] {
			return fmt.Sprintf("existed before, holds %q", n)
		}
	}
	return ""
}

// partial checks for the temporary file of an earlier attempt: a regular
// file no longer than e is resumed after its content (hashed here).
// Anything else at that name is removed.
func (r *receiver) partial(e Entry) (int64, *blake3.Hasher) {
	dr, part, err := r.at(partName(e.Path))
	if err != nil {
		return 0, nil
	}
	st, err := dr.Lstat(part)
	if err != nil {
		return 0, nil
	}
	if !st.Mode().IsRegular() || st.Size() > e.Size {
		dr.Remove(part)
		return 0, nil
	}
	if st.Size() == 0 {
		return 0, nil
	}
	h, n, err := r.hashOpen(partName(e.Path), st.Size())
	if err != nil || n != st.Size() {
		return 0, nil
	}
	return n, h
}

// at returns the os.Root of p's directory (opened once, then cached) and
// p's last element, so that file operations resolve one name: os.Root
// walks every element of a path with system calls of its own.
func (r *receiver) at(p string) (*os.Root, string, error) {
	dir, base := path.Split(p)
	if dir == "" {
		return r.root, base, nil
	}
	dir = dir[:len(dir)-1]
	r.dirsMu.Lock()
	defer r.dirsMu.Unlock()
	if d := r.dirs[dir]; d != nil {
		return d, base, nil
	}
	d, err := r.root.OpenRoot(native(dir))
	if err != nil {
		return nil, "", rootErr(p, err)
	}
	if r.dirs == nil {
		r.dirs = map[string]*os.Root{}
	}
	r.dirs[dir] = d
	return d, base, nil
}

// closeDirs closes the cached directory roots.
func (r *receiver) closeDirs() {
	r.dirsMu.Lock()
	defer r.dirsMu.Unlock()
	for _, d := range r.dirs {
		d.Close()
	}
	r.dirs = nil
}

// hashOpen hashes the first n bytes of the file at p.
func (r *receiver) hashOpen(p string, n int64) (*blake3.Hasher, int64, error) {
	dr, base, err := r.at(p)
	if err != nil {
		return nil, 0, err
	}
	f, err := dr.Open(base)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	h := newHasher()
	k, err := io.CopyBuffer(h, io.LimitReader(f, n), make([]byte, ioBuffer))
	return h, k, err
}

// makeDirs creates the directories (owner-writable until finish sets the
// modes) and replaces non-directories in their way (Force only: plan
// refused otherwise).
func (r *receiver) makeDirs() error {
	for _, e := range r.m.Entries {
		if e.Type != TypeDir {
			continue
		}
		p := native(e.Path)
		if st, err := r.root.Lstat(p); err == nil && !st.IsDir() {
			if err := r.root.Remove(p); err != nil {
				return err
			}
		}
		if err := r.root.Mkdir(p, 0o700|e.Mode); err != nil && !errors.Is(err, fs.ErrExist) {
			return fsErr(e.Path, "", rootErr(e.Path, err))
		}
	}
	return nil
}

// dataStream opens one data stream and writes the files that come on it.
func (r *receiver) dataStream(ctx context.Context, token string, remote <-chan error) error {
	st, err := r.sess.OpenStream(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	if err := writeCtrl(st, &ctrl{T: msgData, Token: token}); err != nil {
		return err
	}
	br := bufio.NewReaderSize(st, ioBuffer)
	buf := make([]byte, ioBuffer)
	for {
		h, ok, err := readRecord(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("transfer: data stream ended early: %w", io.ErrUnexpectedEOF)
			}
			return err
		}
		if !ok {
			return nil
		}
		if err := r.file(h, br, buf); err != nil {
			if code := streamCode(err); code != stream.CodeNone {
				st.CloseWithError(code) // the sender's write says why at once
			}
			return err
		}
	}
}

// file receives one file record into the file's temporary name, checks
// its hash and renames it into place.
func (r *receiver) file(h fileHeader, br *bufio.Reader, buf []byte) error {
	p := r.plans[h.index]
	if p == nil || !p.taken.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: unrequested file record %d", ErrProtocol, h.index)
	}
	e := r.m.Entries[h.index]
	if (h.offset != 0 && h.offset != p.want.Offset) || h.length != e.Size-h.offset {
		return fmt.Errorf("%w: record for %q at %d+%d, size %d", ErrProtocol, e.Path, h.offset, h.length, e.Size)
	}
	dr, part, err := r.at(partName(e.Path))
	if err != nil {
		return err
	}
	final := path.Base(e.Path)
	hasher := p.prefix
	flags := os.O_WRONLY | os.O_CREATE
	if h.offset == 0 {
		hasher = newHasher()
		flags |= os.O_TRUNC
		if p.want.Offset > 0 {
			r.meter.unresume(p.want.Offset) // the sender's prefix differed
			r.resumed.Add(-p.want.Offset)
		}
	}
	partial := path.Join(path.Dir(e.Path), part)
	f, err := dr.OpenFile(part, flags, 0o600)
	if err != nil {
		return fsErr(e.Path, "", rootErr(e.Path, err))
	}
	defer f.Close()
	if h.offset > 0 {
		if err := f.Truncate(h.offset); err != nil {
			return fsErr(e.Path, partial, err)
		}
		if _, err := f.Seek(h.offset, io.SeekStart); err != nil {
			return err
		}
	}
	af := r.meter.begin(e.Path, e.Size, h.offset)
	finished := false
	defer func() { r.meter.end(af, finished) }()
	for left := h.length; left > 0; {
		n, err := br.Read(buf[:min(int64(len(buf)), left)])
		if n > 0 {
			if _, werr := f.Write(buf[:n]); werr != nil {
				return fsErr(e.Path, partial, werr)
			}
			hasher.Write(buf[:n])
			left -= int64(n)
			r.bytes.Add(int64(n))
			r.meter.add(af, n)
		}
		if err != nil && left > 0 {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: %q cut short", ErrProtocol, e.Path)
			}
			return err
		}
	}
	if got := sumOf(hasher); got != e.Hash {
		f.Close()
		dr.Remove(part)
		return fmt.Errorf("%w: %q: got %s, the manifest says %s", ErrHashMismatch, e.Path, got, e.Hash)
	}
	if r.cfg.Sync {
		if err := f.Sync(); err != nil {
			return fsErr(e.Path, partial, err)
		}
	}
	if err := f.Chmod(e.Mode); err != nil {
		return fsErr(e.Path, partial, err)
	}
	if err := f.Close(); err != nil {
		return fsErr(e.Path, partial, err)
	}
	if !e.ModTime.IsZero() {
		dr.Chtimes(part, time.Time{}, e.ModTime)
	}
	if err := dr.Rename(part, final); err != nil {
		return fsErr(e.Path, partial, rootErr(e.Path, err))
	}
	r.got.Add(1)
	finished = true
	if r.cfg.FileDone != nil {
		r.cfg.FileDone(e)
	}
	return nil
}

// finish checks that every wanted file came, creates the symlinks and
// sets the modes of the directories this transfer created (deepest first;
// a directory that was there before keeps its mode).
func (r *receiver) finish() error {
	for i, p := range r.plans {
		if !p.taken.Load() {
			return fmt.Errorf("%w: the sender did not send %q", ErrProtocol, r.m.Entries[i].Path)
		}
	}
	for _, e := range r.m.Entries {
		if e.Type != TypeSymlink {
			continue
		}
		p := native(e.Path)
		if t, err := r.root.Readlink(p); err == nil && filepath.ToSlash(t) == e.Target {
			continue
		}
		if _, err := r.root.Lstat(p); err == nil {
			if err := r.root.Remove(p); err != nil { // Force: plan refused otherwise
				return err
			}
		}
		if err := r.root.Symlink(native(e.Target), p); err != nil {
			return rootErr(e.Path, err)
		}
	}
	for i := len(r.m.Entries) - 1; i >= 0; i-- {
		if e := r.m.Entries[i]; e.Type == TypeDir && !r.existed[e.Path] {
			if err := r.root.Chmod(native(e.Path), e.Mode); err != nil {
				return rootErr(e.Path, err)
			}
		}
	}
	return nil
}
