package transfer

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/stream"
)

// DefaultMaxStreams is how many data streams a sender serves per receiver
// when SenderConfig.MaxStreams is zero.
const DefaultMaxStreams = 16

// helloTimeout bounds the wait for a new stream's first message.
const helloTimeout = 10 * time.Second

// dataWait bounds how long a data stream waits for its transfer's request.
const dataWait = 30 * time.Second

// ioBuffer is the size of file reads and of the buffered writer on a data
// stream: small files are packed into one write, large ones go out in
// pieces of this size.
const ioBuffer = 256 << 10

// SenderConfig tunes a Sender. The zero value is ready to use.
type SenderConfig struct {
	// MaxStreams caps the data streams one receiver may use. Zero:
	// DefaultMaxStreams.
	MaxStreams int
	// Progress, if set, gets a snapshot of each receiver's transfer every
	// ProgressInterval (zero: DefaultProgressInterval). Calls for one
	// receiver do not overlap; calls for different receivers may.
	Progress         func(Progress)
	ProgressInterval time.Duration
	// Done, if set, is called when a receiver's transfer ends, with its
	// result: Err is nil when the receiver reported every file verified
	// and in place.
	Done func(SendResult)
	// Logger receives debug logs. Nil: discard.
	Logger *slog.Logger
}

// SendResult is how one receiver's transfer went.
type SendResult struct {
	Peer     identity.PeerID
	Offer    ID
	Files    int   // files sent (whole or the rest of them)
	Bytes    int64 // file content bytes written to data streams
	Resumed  int64 // bytes the receiver had already
	Elapsed  time.Duration
	Err      error
	Complete bool // the receiver reported success
}

// SenderStats are a sender's totals since it was made.
type SenderStats struct {
	// Transfers started (manifest sent) and completed (receiver done).
	Started, Completed int64
	// DataBytes counts file content written to data streams; WireBytes all
	// bytes written to data streams, record headers included. Both count a
	// write when the stream accepts it, so data the receiver never read
	// (a receiver that dies) is counted too.
	DataBytes, WireBytes int64
}

// Sender serves offers to receivers. Its methods are safe for concurrent
// use.
type Sender struct {
	cfg SenderConfig
	log *slog.Logger

	mu     sync.Mutex
	offers map[ID]*Offer
	jobs   map[string]*job // by token

	started, completed atomic.Int64
	dataBytes, wire    atomic.Int64
}

// NewSender returns a sender with no offers.
func NewSender(cfg SenderConfig) *Sender {
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sender{cfg: cfg, log: log, offers: map[ID]*Offer{}, jobs: map[string]*job{}}
}

// Add offers o to receivers that know its ID.
func (s *Sender) Add(o *Offer) {
	s.mu.Lock()
	s.offers[o.ID] = o
	s.mu.Unlock()
}

// Remove withdraws the offer with ID id; transfers under way continue.
func (s *Sender) Remove(id ID) {
	s.mu.Lock()
	delete(s.offers, id)
	s.mu.Unlock()
}

// Stats returns the sender's totals.
func (s *Sender) Stats() SenderStats {
	return SenderStats{Started: s.started.Load(), Completed: s.completed.Load(), DataBytes: s.dataBytes.Load(), WireBytes: s.wire.Load()}
}

// StreamAcceptor is where Serve takes streams from: a *reach.Node.
type StreamAcceptor interface {
	Accept(ctx context.Context) (*stream.Stream, error)
}

// Serve takes every incoming stream from n and serves it, until ctx ends
// or n fails; it returns after the streams it took are done. An app that
// also accepts streams of its own calls ServeStream on the transfer's
// streams instead.
func (s *Sender) Serve(ctx context.Context, n StreamAcceptor) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := n.Accept(ctx)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeStream(ctx, st); err != nil {
				s.log.Debug("transfer: stream ended", "peer", st.Session().RemotePeer().Short(), "err", err)
			}
		}()
	}
}

// ServeStream serves one stream a receiver opened (a control stream or a
// data stream) until it is done or ctx ends, and closes it.
func (s *Sender) ServeStream(ctx context.Context, st *stream.Stream) error {
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	st.SetReadDeadline(time.Now().Add(helloTimeout))
	m, err := readCtrl(st, MaxControlFrame)
	if err != nil {
		return err
	}
	st.SetReadDeadline(time.Time{})
	switch m.T {
	case msgHello:
		return s.serveControl(ctx, st, m)
	case msgData:
		return s.serveData(st, m)
	}
	err = fmt.Errorf("%w: first message %q", ErrProtocol, m.T)
	writeCtrl(st, errorMsg(err))
	return err
}

// job is one receiver's transfer of one offer.
type job struct {
	s       *Sender
	offer   *Offer
	sess    *stream.Session
	ctrl    *stream.Stream
	ctrlMu  sync.Mutex // serialises writes on ctrl
	ctx     context.Context
	cancel  context.CancelCauseFunc
	ready   chan struct{} // closed when wants is set
	wants   []fileWant
	next    atomic.Int64 // index into wants of the next file to send
	meter   *meter
	sent    atomic.Int64 // file bytes
	files   atomic.Int64
	resumed int64
	failed  atomic.Bool // an error message went out
}

func (s *Sender) serveControl(ctx context.Context, st *stream.Stream, hello *ctrl) error {
	peer := st.Session().RemotePeer()
	fail := func(err error) error {
		writeCtrl(st, errorMsg(err))
		return err
	}
	if hello.V != protocolVersion {
		return fail(fmt.Errorf("%w: protocol version %d, this sender speaks %d", ErrProtocol, hello.V, protocolVersion))
	}
	var id ID
	if b, err := hex.DecodeString(hello.Transfer); err != nil || len(b) != len(id) {
		return fail(fmt.Errorf("%w: bad transfer ID", ErrProtocol))
	} else {
		copy(id[:], b)
	}
	s.mu.Lock()
	o := s.offers[id]
	s.mu.Unlock()
	if o == nil {
		return fail(ErrUnknownTransfer)
	}
	var tok [16]byte
	rand.Read(tok[:])
	j := &job{s: s, offer: o, sess: st.Session(), ctrl: st, ready: make(chan struct{})}
	j.ctx, j.cancel = context.WithCancelCause(ctx)
	defer j.cancel(context.Canceled)
	token := hex.EncodeToString(tok[:])
	s.mu.Lock()
	s.jobs[token] = j
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.jobs, token)
		s.mu.Unlock()
	}()
	s.started.Add(1)
	start := time.Now()
	res := SendResult{Peer: peer, Offer: id}
	defer func() {
		res.Files, res.Bytes, res.Resumed, res.Elapsed = int(j.files.Load()), j.sent.Load(), j.resumed, time.Since(start)
		if s.cfg.Done != nil {
			s.cfg.Done(res)
		}
	}()
	if err := j.writeCtrl(&ctrl{T: msgManifest, Token: token, Manifest: &o.Manifest}); err != nil {
		res.Err = err
		return err
	}
	req, err := expect(st, msgRequest)
	if err != nil {
		res.Err = err
		return err
	}
	if err := j.setWants(req); err != nil {
		res.Err = fail(err)
		return res.Err
	}
	close(j.ready)
	stopReport := j.meter.report(s.cfg.Progress, s.cfg.ProgressInterval)
	s.log.Debug("transfer: sending", "peer", peer.Short(), "files", len(j.wants), "streams", req.Streams)

	// The receiver's next message ends the transfer: done, or an error.
	// A failure on a data stream cancels the job, which closes st.
	context.AfterFunc(j.ctx, func() { st.SetReadDeadline(aLongTimeAgo) })
	_, err = expect(st, msgDone)
	if err != nil {
		if cause := context.Cause(j.ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause // a data stream failed and told the receiver
		}
		stopReport(false)
		res.Err = err
		return err
	}
	stopReport(true)
	res.Complete = true
	s.completed.Add(1)
	st.CloseWrite() // the receiver waits for this EOF
	// Read the receiver's EOF, so that closing st does not reset it.
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, st)
	return nil
}

var aLongTimeAgo = time.Unix(1, 0)

func (j *job) writeCtrl(m *ctrl) error {
	j.ctrlMu.Lock()
	defer j.ctrlMu.Unlock()
	return writeCtrl(j.ctrl, m)
}

// setWants checks the receiver's request and prepares the queue.
func (j *job) setWants(req *ctrl) error {
	entries := j.offer.Manifest.Entries
	seen := make(map[int]bool, len(req.Files))
	var want int64
	for _, w := range req.Files {
		if w.Index < 0 || w.Index >= len(entries) || entries[w.Index].Type != TypeFile || seen[w.Index] {
			return fmt.Errorf("%w: request for entry %d", ErrProtocol, w.Index)
		}
		if w.Offset < 0 || w.Offset > entries[w.Index].Size || (w.Offset > 0) != (w.Prefix != nil) {
			return fmt.Errorf("%w: request for entry %d at offset %d", ErrProtocol, w.Index, w.Offset)
		}
		seen[w.Index] = true
		want += entries[w.Index].Size - w.Offset
	}
	if len(req.Files) > 0 && (req.Streams < 1 || req.Streams > j.s.cfg.MaxStreams) {
		return fmt.Errorf("%w: %d data streams (this sender allows 1-%d)", ErrProtocol, req.Streams, j.s.cfg.MaxStreams)
	}
	j.wants = req.Files
	total := j.offer.Manifest.Size()
	j.resumed = total - want
	j.meter = newMeter(j.sess.RemotePeer().String(), j.offer.Manifest.Files(), total, j.resumed, j.offer.Manifest.Files()-len(req.Files))
	return nil
}

// serveData sends files on a data stream until none are left.
func (s *Sender) serveData(st *stream.Stream, m *ctrl) error {
	s.mu.Lock()
	j := s.jobs[m.Token]
	s.mu.Unlock()
	if j == nil || j.sess != st.Session() {
		err := fmt.Errorf("%w: data stream for an unknown transfer", ErrProtocol)
		writeCtrl(st, errorMsg(err))
		return err
	}
	t := time.NewTimer(dataWait)
	defer t.Stop()
	select {
	case <-j.ready:
	case <-j.ctx.Done():
		return context.Cause(j.ctx)
	case <-t.C:
		return fmt.Errorf("%w: no request for the data stream", ErrProtocol)
	}
	stop := context.AfterFunc(j.ctx, func() { st.Close() })
	defer stop()
	err := j.send(st)
	if err != nil {
		// The receiver's disk failing stops the stream with a code that
		// says so; the receiver knows already.
		err = fromStreamCode(err)
		_, theirs := errors.AsType[*RemoteError](err)
		// Tell the receiver why before the data streams go.
		if !theirs && j.ctx.Err() == nil && j.failed.CompareAndSwap(false, true) {
			j.writeCtrl(errorMsg(err))
		}
		j.cancel(err)
	}
	return err
}

// countWriter counts what the stream accepted.
type countWriter struct {
	w io.Writer
	n *atomic.Int64
	s *atomic.Int64
}

func (c countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	c.s.Add(int64(n))
	return n, err
}

// send writes the next wanted files as records on st, then the end record.
func (j *job) send(st *stream.Stream) error {
	var wireBytes atomic.Int64
	bw := bufio.NewWriterSize(countWriter{st, &wireBytes, &j.s.wire}, ioBuffer)
	for {
		i := int(j.next.Add(1) - 1)
		if i >= len(j.wants) {
			break
		}
		if err := j.sendFile(bw, j.wants[i]); err != nil {
			return err
		}
	}
	if err := bw.WriteByte(recEnd); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return st.CloseWrite()
}

// sendFile writes one file record: from the wanted offset if the
// receiver's prefix matches this side's, else from zero.
func (j *job) sendFile(bw *bufio.Writer, w fileWant) error {
	e := &j.offer.Manifest.Entries[w.Index]
	src := j.offer.sources[w.Index]
	off := w.Offset
	if off > 0 {
		h, n, err := hashFile(src, off)
		if err != nil || n != off || h != *w.Prefix {
			j.s.log.Debug("transfer: prefix differs; sending the whole file", "path", e.Path, "offset", off)
			j.meter.unresume(off)
			off = 0
		}
	}
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrChanged, e.Path, err)
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	length := e.Size - off
	var hdr [32]byte
	if _, err := bw.Write(appendFileHeader(hdr[:0], w.Index, off, length)); err != nil {
		return err
	}
	af := j.meter.begin(e.Path, e.Size, off)
	finished := false
	defer func() { j.meter.end(af, finished) }()
	r := io.LimitReader(f, length)
	var n int64
	for n < length {
		if bw.Available() == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
		buf := bw.AvailableBuffer()[:min(int64(bw.Available()), length-n)]
		k, err := io.ReadFull(r, buf)
		if k > 0 {
			bw.Write(buf[:k])
			n += int64(k)
			j.sent.Add(int64(k))
			j.s.dataBytes.Add(int64(k))
			j.meter.add(af, k)
		}
		if err != nil {
			return fmt.Errorf("%w: %s is shorter than offered (%d of %d bytes)", ErrChanged, e.Path, off+n, e.Size)
		}
	}
	j.files.Add(1)
	finished = true
	return nil
}
