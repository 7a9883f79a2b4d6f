package transfer

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultProgressInterval is how often Progress callbacks run when the
// config's ProgressInterval is zero.
const DefaultProgressInterval = 200 * time.Millisecond

// Progress is a snapshot of a transfer, given to progress callbacks.
type Progress struct {
	// Peer is the other side's peer ID (string form).
	Peer string
	// Files and Bytes are what the transfer moves in all: every file of
	// the manifest, including what was on disk already.
	Files int
	Bytes int64
	// FilesDone and BytesDone count what is finished, including Resumed.
	FilesDone int
	BytesDone int64
	// Resumed is how much was already on the receiver's disk (finished
	// files and verified partial ones) and is not sent again.
	Resumed int64
	// Rate is the recent transfer rate in bytes per second (an average
	// over about two seconds), ETA the time left at that rate (zero when
	// unknown).
	Rate float64
	ETA  time.Duration
	// Elapsed is the time since data started to flow.
	Elapsed time.Duration
	// Active lists the files on the wire now, one per data stream at most.
	Active []FileProgress
	// Done is set in the last callback of a successful transfer.
	Done bool
}

// FileProgress is one file in flight.
type FileProgress struct {
	Path      string
	Size      int64
	BytesDone int64
	Rate      float64       // bytes per second, this file alone
	ETA       time.Duration // zero when unknown
}

// meter tracks a transfer for progress callbacks. Byte counts are atomics
// updated by the stream goroutines.
type meter struct {
	peer      string
	files     int
	bytes     int64
	resumed   int64
	start     time.Time
	done      atomic.Int64
	filesDone atomic.Int64

	mu     sync.Mutex
	active map[*activeFile]struct{}
	// rate: samples of (time, done) over the last two seconds
	samples []sample
}

type sample struct {
	t time.Time
	n int64
}

type activeFile struct {
	path  string
	size  int64
	start time.Time
	base  int64 // offset it started from
	done  atomic.Int64
}

func newMeter(peer string, files int, bytes, resumed int64, filesDone int) *meter {
	m := &meter{peer: peer, files: files, bytes: bytes, resumed: resumed, start: time.Now(), active: map[*activeFile]struct{}{}}
	m.done.Store(resumed)
	m.filesDone.Store(int64(filesDone))
	return m
}

// begin records a file that starts on the wire at offset base.
func (m *meter) begin(path string, size, base int64) *activeFile {
	f := &activeFile{path: path, size: size, start: time.Now(), base: base}
	f.done.Store(base)
	m.mu.Lock()
	m.active[f] = struct{}{}
	m.mu.Unlock()
	return f
}

// add counts n bytes of f.
func (m *meter) add(f *activeFile, n int) {
	f.done.Add(int64(n))
	m.done.Add(int64(n))
}

// unresume takes back n bytes counted as resumed: they are sent again.
func (m *meter) unresume(n int64) {
	m.mu.Lock()
	m.resumed -= n
	m.mu.Unlock()
	m.done.Add(-n)
}

// end removes f; finished counts it as a done file.
func (m *meter) end(f *activeFile, finished bool) {
	m.mu.Lock()
	delete(m.active, f)
	m.mu.Unlock()
	if finished {
		m.filesDone.Add(1)
	}
}

// snapshot returns the current progress.
func (m *meter) snapshot() Progress {
	now := time.Now()
	m.mu.Lock()
	p := Progress{
		Peer: m.peer, Files: m.files, Bytes: m.bytes, Resumed: m.resumed,
		FilesDone: int(m.filesDone.Load()), BytesDone: m.done.Load(), Elapsed: now.Sub(m.start),
	}
	m.samples = append(m.samples, sample{now, p.BytesDone})
	for len(m.samples) > 2 && now.Sub(m.samples[0].t) > 2*time.Second {
		m.samples = m.samples[1:]
	}
	first := m.samples[0]
	if now.Sub(first.t) < 500*time.Millisecond {
		first = sample{m.start, m.resumed} // too few samples yet: since the start
	}
	if dt := now.Sub(first.t).Seconds(); dt > 0 {
		p.Rate = float64(p.BytesDone-first.n) / dt
	}
	for f := range m.active {
		fp := FileProgress{Path: f.path, Size: f.size, BytesDone: f.done.Load()}
		if dt := now.Sub(f.start).Seconds(); dt > 0 {
			fp.Rate = float64(fp.BytesDone-f.base) / dt
		}
		fp.ETA = eta(fp.Size-fp.BytesDone, fp.Rate)
		p.Active = append(p.Active, fp)
	}
	m.mu.Unlock()
	slices.SortFunc(p.Active, func(a, b FileProgress) int {
		switch {
		case a.Path < b.Path:
			return -1
		case a.Path > b.Path:
			return 1
		}
		return 0
	})
	p.ETA = eta(p.Bytes-p.BytesDone, p.Rate)
	return p
}

func eta(left int64, rate float64) time.Duration {
	if rate <= 0 || left <= 0 {
		return 0
	}
	return time.Duration(float64(left) / rate * float64(time.Second)).Round(time.Second / 10)
}

// report calls fn with snapshots every interval until ctx ends. It returns
// a function that stops it and, if done, makes the final Done call.
func (m *meter) report(fn func(Progress), interval time.Duration) (stop func(done bool)) {
	if fn == nil {
		return func(bool) {}
	}
	if interval <= 0 {
		interval = DefaultProgressInterval
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				fn(m.snapshot())
			case <-ctx.Done():
				return
			}
		}
	}()
	return func(done bool) {
		cancel()
		wg.Wait()
		if done {
			p := m.snapshot()
			p.Done, p.Active, p.ETA = true, nil, 0
			fn(p)
		}
	}
}
