package relay

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzRecordOpen seals data (a frame stream) as records, flips one bit
// of them if flip is within them, and reads them as the server does
// (frameReader.nextRecord, a rekey every 3 records). Properties: what
// comes out is a prefix of data's frames (readFrame's reading of it),
// all of them if nothing was flipped; a flipped record ends the reading
// with ErrRecord or, its length grown past the input, EOF; no frame of
// it or after it comes out.
func FuzzRecordOpen(f *testing.F) {
	for _, fr := range fuzzFrames() {
		f.Add(fr, uint32(1<<31))
		f.Add(fr, uint32(20))
	}
	all := bytes.Join(fuzzFrames(), nil)
	f.Add(bytes.Repeat(all, 60), uint32(1<<31))
	f.Add(bytes.Repeat(all, 60), uint32(8*maxRecord+100))
	f.Add([]byte{framePacket, 0xff, 0xff}, uint32(3))
	setRekey(f, 3)
	f.Fuzz(func(t *testing.T, data []byte, flip uint32) {
		// The reference: data's frames.
		type frame struct {
			typ  byte
			body string
		}
		var want []frame
		var wantErr error
		for r := bytes.NewReader(data); ; {
			typ, body, _, err := readFrame(r, nil)
			if err != nil {
				wantErr = err
				break
			}
			want = append(want, frame{typ, string(body)})
		}
		seal, open := recordPair(t, 9)
		sealed, err := seal.seal(nil, data)
		if err != nil {
			t.Fatal(err)
		}
		flipped := int(flip) < 8*len(sealed)
		if flipped {
			sealed[flip/8] ^= 1 << (flip % 8)
		}
		var fr frameReader
		var got []frame
		r := bytes.NewReader(sealed)
		for {
			var typ byte
			var body []byte
			typ, body, err = fr.nextRecord(r, open)
			if err != nil {
				break
			}
			if len(got) >= len(want) || (want[len(got)] != frame{typ, string(body)}) {
				t.Fatalf("frame %d (0x%02x, %d bytes) is not data's", len(got), typ, len(body))
			}
			got = append(got, frame{typ, string(body)})
		}
		switch {
		case flipped:
			if !errors.Is(err, ErrRecord) && err != io.EOF && !(errors.Is(err, ErrProtocol) && errors.Is(wantErr, ErrProtocol)) {
				t.Fatalf("a flipped bit: %v, want ErrRecord or EOF", err)
			}
		case errors.Is(wantErr, ErrProtocol):
			if len(got) != len(want) || err == nil || err.Error() != wantErr.Error() {
				t.Fatalf("%d of %d frames, then %v; want %v", len(got), len(want), err, wantErr)
			}
		default:
			if len(got) != len(want) || err != io.EOF {
				t.Fatalf("%d of %d frames, then %v; want all, then EOF", len(got), len(want), err)
			}
		}
	})
}
