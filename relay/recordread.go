package relay

import (
	"io"
)

// nextRecord is next for a link under ALPNRecord: rd carries records,
// which d opens in place in the buffer. The buffer holds the frames
// opened so far, (*bp)[r:w], then a gap (the tags of the records opened),
// then the bytes read and not yet opened, (*bp)[c:e]. A record is opened
// only when no whole frame is buffered: the partial frame before it
// moves up to meet its plaintext.
func (f *frameReader) nextRecord(rd io.Reader, d *recordDir) (typ byte, body []byte, err error) {
	f.takeBuffer()
	for {
		b := *f.bp
		if f.w-f.r >= frameHeader {
			var n int
			if typ, n, err = frameHead(b[f.r:f.w]); err != nil {
				return 0, nil, err
			}
			if end := f.r + frameHeader + n; end <= f.w {
				body = b[f.r+frameHeader : end]
				f.r = end
				if f.r == f.w && f.c == f.e {
					f.r, f.w, f.c, f.e = 0, 0, 0, 0
				}
				return typ, body, nil
			}
		}
		// No whole frame: open the next record if it is here.
		rneed := recordHeader
		if f.e-f.c >= recordHeader {
			n, err := recordLen(b[f.c:])
			if err != nil {
				return 0, nil, err
			}
			rneed = n
			if f.e-f.c >= n {
				plain, err := d.open(b[f.c : f.c+n])
				if err != nil {
					return 0, nil, err
				}
				at := f.c + recordHeader
				part := f.w - f.r
				copy(b[at-part:at], b[f.r:f.w])
				f.r, f.w = at-part, at+len(plain)
				f.c += n
				if f.c == f.e {
					f.c, f.e = f.w, f.w
				}
				continue
			}
		}
		// Read more: room for the partial frame and the whole record.
		if part := f.w - f.r; part+rneed > len(b) {
			// Only an own buffer is smaller than both.
			nb := make([]byte, tlsReadSize)
			pw := copy(nb, b[f.r:f.w])
			f.r, f.w, f.c, f.e = 0, pw, pw, pw+copy(nb[pw:], b[f.c:f.e])
			f.bp = &nb
			b = nb
		} else if len(b)-f.e < rneed-(f.e-f.c) || len(b)-f.e < len(b)/4 {
			pw := copy(b, b[f.r:f.w])
			f.r, f.w, f.c, f.e = 0, pw, pw, pw+copy(b[pw:], b[f.c:f.e])
		}
		n, err := rd.Read(b[f.e:])
		f.e += n
		if err != nil && n == 0 {
			return 0, nil, err
		}
	}
}
