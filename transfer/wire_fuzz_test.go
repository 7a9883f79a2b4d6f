package transfer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
)

// Fuzz targets for what a transfer parses from the other side or from a
// user: tickets, control frames (with the manifest), manifests and data
// record headers (docs/security.md, "Fuzzing").

func fuzzPeer(b byte) identity.PeerID {
	k, err := identity.KeyFromSeed(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		panic(err)
	}
	return k.ID()
}

// FuzzParseTicket parses arbitrary strings as tickets; raw, if not empty,
// is made into a ticket with a valid checksum first, so the fuzzer gets
// past the checksum to the content. Properties: errors wrap ErrBadTicket
// or ErrTicketVersion; a parsed ticket has at most maxTicketServers
// servers, prints as a ticket that parses to the same ticket, and prints
// the same again.
func FuzzParseTicket(f *testing.F) {
	sid := fuzzPeer(2).String()
	tk, err := NewTicket(fuzzPeer(1), ID{1, 2, 3}, "reach://"+sid+"@203.0.113.7:4950", "reach://"+sid+"@[2001:db8::1]:443?tcp=8443", "reach://"+sid+"@rdv.example.org:4950")
	if err != nil {
		f.Fatal(err)
	}
	s := tk.String()
	f.Add(s, []byte{})
	f.Add(" "+strings.ToUpper(s)+"\n", []byte{})
	f.Add(s[:len(s)-3], []byte{})
	f.Add(TicketPrefix, []byte{})
	b, _ := ticketEncoding.DecodeString(s[len(TicketPrefix):])
	f.Add("", b[:len(b)-4])
	f.Add("", append([]byte{ticketVersion + 1}, make([]byte, 60)...))
	f.Add("", append([]byte{ticketVersion}, make([]byte, 49)...))
	empty, _ := NewTicket(fuzzPeer(1), ID{})
	eb, _ := ticketEncoding.DecodeString(empty.String()[len(TicketPrefix):])
	f.Add("", append(eb[:len(eb)-5], 1))
	f.Fuzz(func(t *testing.T, s string, raw []byte) {
		if len(raw) > 0 {
			sum := withSum(bytes.Clone(raw))
			s = TicketPrefix + ticketEncoding.EncodeToString(sum)
		}
		tk, err := ParseTicket(s)
		if err != nil {
			if !errors.Is(err, ErrBadTicket) && !errors.Is(err, ErrTicketVersion) {
				t.Fatalf("error %v is not a named one", err)
			}
			return
		}
		if len(tk.Servers) > maxTicketServers {
			t.Fatalf("%d servers", len(tk.Servers))
		}
		str := tk.String()
		tk2, err := ParseTicket(str)
		if err != nil {
			t.Fatalf("%q parsed to %+v, which prints as %q, which does not parse: %v", s, tk, str, err)
		}
		if !reflect.DeepEqual(tk, tk2) || tk2.String() != str {
			t.Fatalf("%q parsed to %+v, which prints as %q, which parses to %+v", s, tk, str, tk2)
		}
		var u Ticket
		if err := u.UnmarshalText([]byte(s)); err != nil || !reflect.DeepEqual(u, tk) {
			t.Fatalf("UnmarshalText: %+v, %v", u, err)
		}
	})
}

// fuzzManifest is a valid manifest of every entry type.
func fuzzManifest() *Manifest {
	return &Manifest{Entries: []Entry{
		{Path: "d", Type: TypeDir, Mode: 0o755},
		{Path: "d/a.txt", Type: TypeFile, Size: 5, Mode: 0o644, ModTime: time.Unix(1_700_000_000, 5), Hash: Hash{1, 2}},
		{Path: "d/e", Type: TypeDir, Mode: 0o700},
		{Path: "d/e/l", Type: TypeSymlink, Target: "../a.txt", Mode: 0o777},
		{Path: "top", Type: TypeFile, Size: 1 << 40, Mode: 0o600},
	}}
}

// checkAccepted asserts what checkManifest promises of a manifest it
// accepts, by other means than its own: paths are local (filepath.IsLocal)
// and unique, parents are directories listed earlier, symlinks resolve
// inside, only permission bits are set, and Size() is the sum of the
// files' sizes, without overflow (what MaxSize is checked against).
func checkAccepted(t *testing.T, m *Manifest) {
	types := map[string]string{}
	var total int64
	for _, e := range m.Entries {
		if !filepath.IsLocal(e.Path) || strings.Contains(e.Path, `\`) || path.Clean(e.Path) != e.Path {
			t.Fatalf("accepted path %q is not local and clean", e.Path)
		}
		if _, dup := types[e.Path]; dup {
			t.Fatalf("accepted path %q twice", e.Path)
		}
		if dir := path.Dir(e.Path); dir != "." && types[dir] != TypeDir {
			t.Fatalf("accepted %q before its directory", e.Path)
		}
		if e.Mode&^0o777 != 0 {
			t.Fatalf("accepted mode %v", e.Mode)
		}
		switch e.Type {
		case TypeSymlink:
			if to := path.Join(path.Dir(e.Path), e.Target); !filepath.IsLocal(to) && to != "." {
				t.Fatalf("accepted symlink %q -> %q, outside", e.Path, e.Target)
			}
		case TypeFile:
			if e.Size < 0 {
				t.Fatalf("accepted size %d", e.Size)
			}
		case TypeDir:
		default:
			t.Fatalf("accepted type %q", e.Type)
		}
		types[e.Path] = e.Type
		if e.Type == TypeFile {
			total += e.Size
			if total < e.Size {
				t.Fatalf("accepted a manifest whose size overflows (%d after %q of %d bytes)", total, e.Path, e.Size)
			}
		}
	}
	if m.Size() != total {
		t.Fatalf("Size() = %d, want the files' total %d", m.Size(), total)
	}
}

// FuzzManifest checks arbitrary JSON manifests as a receiver does.
// Properties: a manifest that does not decode or is refused gives a named
// error (ErrBadManifest, ErrUnsafePath, ErrSpecialFile); one that is
// accepted has the properties of checkAccepted.
func FuzzManifest(f *testing.F) {
	good, _ := json.Marshal(fuzzManifest())
	f.Add(good)
	for _, s := range []string{
		`{"entries":[]}`,
		`{"entries":[{"path":"../x","type":"file"}]}`,
		`{"entries":[{"path":"a","type":"file"},{"path":"a/b","type":"file"}]}`,
		`{"entries":[{"path":"a","type":"symlink","target":"/etc/passwd"}]}`,
		`{"entries":[{"path":"a","type":"symlink","target":"b/../../x"}]}`,
		`{"entries":[{"path":"C:x","type":"file"}]}`,
		`{"entries":[{"path":"a","type":"fifo"}]}`,
		`{"entries":[{"path":"a","type":"file","mode":2147484159}]}`,
		`{"entries":[{"path":"a","type":"file","hash":"zz"}]}`,
		`{"entries":[{"path":"a.reachpart","type":"file"}]}`,
		`{"entries":[{"path":"a","type":"file","size":9000000000000000000}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var m Manifest
		if err := json.Unmarshal(in, &m); err != nil {
			return
		}
		err := checkManifest(&m, 1000)
		if err != nil {
			if !errors.Is(err, ErrBadManifest) && !errors.Is(err, ErrUnsafePath) && !errors.Is(err, ErrSpecialFile) {
				t.Fatalf("error %v is not a named one", err)
			}
			return
		}
		checkAccepted(t, &m)
	})
}

// fuzzCtrlTypes are the message types a reader expects.
var fuzzCtrlTypes = []string{msgHello, msgManifest, msgRequest, msgData, msgDone}

// FuzzReadCtrl reads a byte stream as control frames, each expected (as
// expect does) to be of a type the fuzzer picks. Properties: errors are
// I/O errors, wrap ErrProtocol, or are a *RemoteError; a message read is
// of the type expected; re-encoded by writeCtrl it reads back the same.
func FuzzReadCtrl(f *testing.F) {
	var all bytes.Buffer
	for i, m := range []*ctrl{
		{T: msgHello, V: protocolVersion, Transfer: ID{1}.String()},
		{T: msgManifest, Token: "tok", Manifest: fuzzManifest()},
		{T: msgRequest, Files: []fileWant{{Index: 1, Offset: 3, Prefix: &Hash{9}}, {Index: 4}}, Streams: 2},
		{T: msgData, Token: "tok"},
		{T: msgDone},
		errorMsg(ErrBadManifest),
	} {
		var b bytes.Buffer
		if err := writeCtrl(&b, m); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes(), byte(i))
		all.Write(b.Bytes())
	}
	f.Add(all.Bytes(), byte(1))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, '{'}, byte(1))
	f.Add([]byte{0, 0, 0, 2, '{', '}'}, byte(0))
	f.Add([]byte{0, 0, 0, 4, 'n', 'u', 'l', 'l'}, byte(4))
	f.Fuzz(func(t *testing.T, in []byte, which byte) {
		want := fuzzCtrlTypes[int(which)%len(fuzzCtrlTypes)]
		r := bytes.NewReader(in)
		before := r.Len()
		m, err := expect(r, want)
		if err != nil {
			var re *RemoteError
			if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrProtocol) && !errors.As(err, &re) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if m.T != want {
			t.Fatalf("expected %q, got %q", want, m.T)
		}
		var b bytes.Buffer
		if err := writeCtrl(&b, m); err != nil {
			t.Fatalf("message read does not write: %v", err)
		}
		read := before - r.Len()
		m2, err := expect(&b, want)
		if err != nil {
			if b.Len() > read {
				return // grew on re-encoding (escapes) past a size cap
			}
			t.Fatalf("re-encoded message does not read: %v", err)
		}
		j1, _ := json.Marshal(m)
		j2, _ := json.Marshal(m2)
		if !bytes.Equal(j1, j2) {
			t.Fatalf("message changes on a round trip:\n%s\n%s", j1, j2)
		}
	})
}

// FuzzReadRecord reads a data stream's record headers. Properties:
// errors are I/O errors or wrap ErrProtocol; values are at most 2^62; a
// header re-encoded by appendFileHeader reads back the same.
func FuzzReadRecord(f *testing.F) {
	f.Add(appendFileHeader(nil, 0, 0, 5))
	f.Add(append(appendFileHeader(appendFileHeader(nil, 3, 1<<40, 1<<62), 1<<20, 7, 0), recEnd))
	f.Add([]byte{recFile, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{recFile, 0x80})
	f.Add([]byte{2})
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReader(bytes.NewReader(in))
		for {
			h, ok, err := readRecord(br)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if !ok {
				return
			}
			if h.index < 0 || h.offset < 0 || h.length < 0 || h.index > 1<<62 || h.offset > 1<<62 || h.length > 1<<62 {
				t.Fatalf("header %+v out of range", h)
			}
			h2, ok, err := readRecord(bufio.NewReader(bytes.NewReader(appendFileHeader(nil, h.index, h.offset, h.length))))
			if err != nil || !ok || h2 != h {
				t.Fatalf("%+v re-encodes to %+v, %v, %v", h, h2, ok, err)
			}
		}
	})
}
