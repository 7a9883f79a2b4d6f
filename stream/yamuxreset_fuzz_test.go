package stream

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
)

// FuzzFrameReader: whatever bytes a peer's TLS stream carries, the
// reader under yamux passes them through unchanged (in reads that never
// cross a frame's end), keeps at most maxResetCodes codes, and never
// panics. The first byte of the input sets the read size.
func FuzzFrameReader(f *testing.F) {
	rst := resetHeader(7, uint64(CodeRefused))
	data := make([]byte, yamuxHeaderLen, yamuxHeaderLen+5)
	data[1] = yamuxTypeData
	binary.BigEndian.PutUint32(data[4:8], 3)
	binary.BigEndian.PutUint32(data[8:12], 5)
	data = append(data, "hello"...)
	f.Add(append([]byte{5}, append(rst[:], data...)...))
	f.Add(append([]byte{200}, data...))
	f.Add([]byte{1, 0, 1, 0, 8, 0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		size := int(in[0])%64 + 1
		in = in[1:]
		fr := &frameReader{}
		src := bytes.NewReader(in)
		var out []byte
		buf := make([]byte, size)
		for {
			n, err := fr.read(src, buf)
			out = append(out, buf[:n]...)
			if err == io.EOF || n == 0 && err != nil {
				break
			}
			if n == 0 && src.Len() == 0 {
				break
			}
		}
		if !bytes.Equal(out, in) {
			t.Fatalf("passed %d bytes, want the %d given, unchanged", len(out), len(in))
		}
		if n := fr.recorded(); n > maxResetCodes {
			t.Fatalf("%d codes kept, more than %d", n, maxResetCodes)
		}
		for id := range uint32(8) {
			fr.code(id)
		}
	})
}
