package relay

import "sync"

// byteQueue holds a relayed stream's received bytes until the
// application reads them, in fixed chunks from a shared pool: a bulk
// transfer reuses the same few chunks (no buffer grown by append and
// copied at each doubling, none compacted), and a drained queue holds no
// memory.
type byteQueue struct {
	chunks []*[]byte // each of cap queueChunk; the last may be partly filled
	head   int       // read offset in chunks[0]
	n      int       // bytes held
}

// queueChunk is the size of a byteQueue's chunks: a TLS record's
// plaintext and more, so one delivery usually touches one or two.
const queueChunk = 32 << 10

var queueChunks = sync.Pool{New: func() any { b := make([]byte, 0, queueChunk); return &b }}

// Len returns the bytes held.
func (q *byteQueue) Len() int { return q.n }

// write appends a copy of p.
func (q *byteQueue) write(p []byte) {
	q.n += len(p)
	for len(p) > 0 {
		var tail *[]byte
		if k := len(q.chunks); k > 0 && len(*q.chunks[k-1]) < queueChunk {
			tail = q.chunks[k-1]
		} else {
			tail = queueChunks.Get().(*[]byte)
			*tail = (*tail)[:0]
			q.chunks = append(q.chunks, tail)
		}
		m := min(len(p), queueChunk-len(*tail))
		*tail = append(*tail, p[:m]...)
		p = p[m:]
	}
}

// read moves up to len(b) bytes into b; drained chunks go back to the
// pool.
func (q *byteQueue) read(b []byte) int {
	var done int
	for done < len(b) && len(q.chunks) > 0 {
		c := q.chunks[0]
		m := copy(b[done:], (*c)[q.head:])
		done += m
		q.head += m
		if q.head < len(*c) {
			break // b is full
		}
		// Drained (the last chunk too, though it is not full: a writer
		// takes a fresh one).
		q.chunks[0] = nil
		q.chunks = q.chunks[1:]
		q.head = 0
		queueChunks.Put(c)
	}
	q.n -= done
	if len(q.chunks) == 0 {
		q.chunks = q.chunks[:0:0] // the slice's array goes too
	}
	return done
}

// reset drops what is held.
func (q *byteQueue) reset() {
	for _, c := range q.chunks {
		queueChunks.Put(c)
	}
	*q = byteQueue{}
}
