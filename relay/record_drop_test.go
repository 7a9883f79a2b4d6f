package relay

import (
	"bytes"
	"crypto/rand"
	mrand "math/rand/v2"
	"testing"
)

// TestRecordDropRebuild (issue 14): a direction whose AEAD is dropped at
// any record, at a rekey boundary too, seals exactly the bytes it would
// have sealed keeping it (same key, same counters: no counter skipped
// or sealed twice), and an opener that drops its own opens them all.
func TestRecordDropRebuild(t *testing.T) {
	setRekey(t, 5)
	rnd := mrand.New(mrand.NewPCG(7, 8))
	keep, _ := recordPair(t, 11)
	drop, open := recordPair(t, 11)
	var want, got []byte
	var plains [][]byte
	for i := range 60 {
		plain := make([]byte, rnd.IntN(3*maxRecordPlain))
		rand.Read(plain)
		plains = append(plains, plain)
		var err error
		if want, err = keep.seal(want, plain); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 || drop.seq%5 == 0 {
			seq, secret := drop.seq, drop.secret
			drop.drop()
			if drop.aead != nil || drop.seq != seq || drop.secret != secret {
				t.Fatal("drop kept the AEAD or moved the counter or secret")
			}
		}
		if got, err = drop.seal(got, plain); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the records sealed across drops differ from those sealed keeping the AEAD")
	}
	if keep.secret == bytes32(11) || drop.secret != keep.secret {
		t.Fatalf("no common rekey after %d records", keep.seq)
	}
	// Open them record by record, dropping the opener's AEAD now and then.
	var opened []byte
	for wire := got; len(wire) > 0; {
		n, err := recordLen(wire)
		if err != nil {
			t.Fatal(err)
		}
		if rnd.IntN(3) == 0 {
			open.drop()
		}
		p, err := open.open(wire[:n])
		if err != nil {
			t.Fatalf("record %d: %v", open.seq-1, err)
		}
		opened = append(opened, p...)
		wire = wire[n:]
	}
	if !bytes.Equal(opened, bytes.Join(plains, nil)) || open.seq != keep.seq {
		t.Fatalf("opened %d bytes in %d records; sealed %d in %d", len(opened), open.seq, len(bytes.Join(plains, nil)), keep.seq)
	}
}

func bytes32(b byte) (s [32]byte) {
	for i := range s {
		s[i] = b
	}
	return s
}

// BenchmarkRecordRebuild: what a parked link's wake-up costs in records:
// a direction rebuilds its AEAD from the secret and seals one small
// record (beside sealing it with the AEAD kept).
func BenchmarkRecordRebuild(b *testing.B) {
	plain := make([]byte, 100)
	for _, rebuild := range []bool{false, true} {
		name := "kept"
		if rebuild {
			name = "rebuilt"
		}
		b.Run(name, func(b *testing.B) {
			d, _ := recordPair(b, 12)
			buf := make([]byte, 0, 256)
			b.ReportAllocs()
			for b.Loop() {
				if rebuild {
					d.drop()
				}
				if _, err := d.seal(buf[:0], plain); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
