package shortcode

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// mailbox starts a server and a registered client, and returns the
// client's mailbox.
func mailbox(t *testing.T, rs *rendezvous.RunningServer) *rendezvous.Mailbox {
	t.Helper()
	uc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: uc}
	key, _ := identity.GenerateKey()
	c, err := rendezvous.NewClient(rendezvous.ClientConfig{Key: key, Servers: []rendezvous.ServerAddr{rs.ServerAddr()}, Transport: tr,
		Logger: slog.New(slog.NewTextHandler(tlog{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); tr.Close(); uc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c.Mailbox()
}

func server(t *testing.T) *rendezvous.RunningServer {
	t.Helper()
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{}, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestWords: 2048 distinct words of one shape; codes survive String and
// Parse, forgiving case and separators; malformed ones are ErrBadCode.
func TestWords(t *testing.T) {
	l, _ := words()
	seen := map[string]bool{}
	for i, w := range l {
		if len(w) != 4 || seen[w] {
			t.Fatalf("word %d %q: not four letters, or a duplicate", i, w)
		}
		seen[w] = true
		if j, ok := WordIndex(w); !ok || int(j) != i {
			t.Fatalf("WordIndex(%q) = %d, %v", w, j, ok)
		}
	}
	if len(l) != 1<<WordBits {
		t.Fatalf("%d words, want %d", len(l), 1<<WordBits)
	}
	for range 100 {
		w, _ := randomWords()
		c := Code{Slot: 7, Words: w}
		for _, s := range []string{c.String(), strings.ToUpper(c.String()), " " + strings.ReplaceAll(c.String(), "-", " ") + "\n"} {
			if got, err := Parse(s); err != nil || got != c {
				t.Fatalf("Parse(%q) = %v, %v; want %v", s, got, err, c)
			}
		}
		if !LooksLikeCode(c.String()) {
			t.Fatalf("%q does not look like a code", c)
		}
	}
	for _, s := range []string{"", "7", "7-kato-bira", "7-kato-bira-zemo-kato", "0-kato-bira-zemo", "x-kato-bira-zemo", "7-kato-bira-zemu", "7-kat-bira-zemo"} {
		if _, err := Parse(s); !errors.Is(err, ErrBadCode) {
			t.Errorf("Parse(%q): %v; want ErrBadCode", s, err)
		}
	}
	if LooksLikeCode("reachsend_abc") {
		t.Error("a ticket looks like a code")
	}
}

// TestPublishClaim: the payload comes back intact for the right code,
// once; wrong words are ErrCodeWrong and a second claim ErrCodeUsed.
func TestPublishClaim(t *testing.T) {
	rs := server(t)
	sender, receiver := mailbox(t, rs), mailbox(t, rs)
	payload := make([]byte, 200)
	rand.Read(payload)
	start := time.Now()
	code, r, err := Publish(ctx(t), sender, payload, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("code %s (slot %d, TTL %v) published in %v", code, r.Slot, r.TTL, time.Since(start))
	if r.TTL != DefaultTTL || !strings.HasPrefix(code.String(), "1-") {
		t.Errorf("receipt %+v, code %s", r, code)
	}
	wrong := code
	wrong.Words[2] ^= 1
	if _, err := Claim(ctx(t), receiver, wrong); !errors.Is(err, rendezvous.ErrCodeWrong) {
		t.Errorf("wrong words: %v; want ErrCodeWrong", err)
	}
	start = time.Now()
	got, err := Claim(ctx(t), receiver, code)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("claim: %d bytes, %v", len(got), err)
	}
	t.Logf("claimed in %v", time.Since(start))
	if _, err := Claim(ctx(t), receiver, code); !errors.Is(err, rendezvous.ErrCodeUsed) {
		t.Errorf("second claim: %v; want ErrCodeUsed", err)
	}
}

// TestForged: a blob that the code's key does not open (what a lying
// server would hand out, with a proof it learnt) is ErrForged.
func TestForged(t *testing.T) {
	rs := server(t)
	sender, receiver := mailbox(t, rs), mailbox(t, rs)
	var code Code
	_, err := sender.Put(ctx(t), 0, func(server rendezvous.ServerAddr, slot uint32) ([]byte, []byte, error) {
		w, _ := randomWords()
		code = Code{Slot: slot, Words: w}
		proof, _, _, err := code.keys(server)
		blob := make([]byte, 100)
		rand.Read(blob)
		return proof, blob, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Claim(ctx(t), receiver, code); !errors.Is(err, ErrForged) {
		t.Errorf("claim of a forged blob: %v; want ErrForged", err)
	}
}
