package main

import (
	"strings"
	"testing"

	"github.com/reachp2p/reach/transfer"
)

// TestRecvParseSize: sizes beyond int64 are refused instead of turning
// into a negative limit (no limit at all).
func TestRecvParseSize(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "1000": 1000, "1MiB": 1 << 20, "1MB": 1e6, "2G": 2 << 30, "8388607TiB": 8388607 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"9999999999TB", "99999999999999999999", "8388608TiB", "-1", "x", "1XB"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("%q: got %d, want an error", in, got)
		}
	}
}

// TestRecvDir: without --out, recv writes into the current directory only
// when the user confirms on a terminal; otherwise into a folder named
// after the transfer, the same for the same ticket.
func TestRecvDir(t *testing.T) {
	id := transfer.NewID()
	if d := recvDir("inbox", false, id); d != "inbox" {
		t.Errorf("--out: %q", d)
	}
	if d := recvDir("inbox", true, id); d != "inbox" {
		t.Errorf("--out on a terminal: %q", d)
	}
	if d := recvDir("", true, id); d != "." {
		t.Errorf("terminal: %q", d)
	}
	d := recvDir("", false, id)
	if d == "." || !strings.HasPrefix(d, "reach-") || d != recvDir("", false, id) || d == recvDir("", false, transfer.NewID()) {
		t.Errorf("not a terminal: %q", d)
	}
}

// TestRecvDescribe: the summary shown before the question names the
// top-level entries (at most maxListed), the count and the size.
func TestRecvDescribe(t *testing.T) {
	m := &transfer.Manifest{Entries: []transfer.Entry{
		{Path: ".ssh", Type: transfer.TypeDir}, {Path: ".ssh/authorized_keys", Type: transfer.TypeFile, Size: 100},
		{Path: "notes.txt", Type: transfer.TypeFile, Size: 2 << 20},
	}}
	for i := range 12 {
		m.Entries = append(m.Entries, transfer.Entry{Path: "f" + string(rune('a'+i)), Type: transfer.TypeFile})
	}
	s := describeIncoming(transfer.Incoming{Manifest: m, Files: m.Files(), Size: m.Size()}, "reach-x")
	t.Log("\n" + s)
	for _, want := range []string{"14 files", "2.0 MiB", "into reach-x", "  .ssh/\n", "  notes.txt\n", "and 4 more"} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %q", want)
		}
	}
	if strings.Contains(s, "authorized_keys") {
		t.Error("listed a nested entry")
	}
}
