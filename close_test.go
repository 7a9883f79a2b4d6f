package reach_test

// Closing through the API: the obvious code (write, close the stream,
// close the node) delivers everything, on direct and relayed paths, and
// Abort says so to the peer.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// closeServer starts a rendezvous server with a relay on loopback until
// the test ends.
func closeServer(t *testing.T) string {
	t.Helper()
	rl := relay.NewServer(relay.ServerConfig{Logger: natlab.TestLogger(t).With("part", "relay")})
	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
		Logger:    natlab.TestLogger(t).With("server", "srv"),
		Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl},
	}, rbLoopback)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	return rs.ConnectString()
}

// closeNode starts a node on loopback; the test closes it itself, and
// aborts it at the end if it did not.
func closeNode(t *testing.T, name, server string, strategies ...string) *reach.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := reach.New(ctx, reach.Config{Servers: []string{server}, ListenAddr: rbLoopback,
		Strategies: strategies, Logger: natlab.TestLogger(t).With("n", name)})
	if err != nil {
		t.Fatalf("node %s: %v", name, err)
	}
	t.Cleanup(func() { n.Abort() })
	return n
}

// TestCloseDeliversEverything: conn.Write, conn.Close, node.Close, and
// the process could exit: the listener, a slow reader, still gets every
// byte (same SHA-256), directly and through the relay.
func TestCloseDeliversEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 16 MiB twice")
	}
	server := closeServer(t)
	for _, strategy := range []string{reach.StrategyDirect, reach.StrategyRelay} {
		t.Run(strategy, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			lis := closeNode(t, "lis", server)
			dia := closeNode(t, "dial", server, strategy)
			data := make([]byte, 16<<20)
			rand.Read(data)
			sent := make(chan error, 1)
			go func() {
				conn, err := dia.Dial(ctx, lis.ID())
				if err != nil {
					sent <- err
					return
				}
				if s := conn.Session().Strategy(); s != strategy {
					t.Errorf("strategy %q, want %q", s, strategy)
				}
				if _, err := conn.Write(data); err != nil {
					sent <- err
					return
				}
				conn.Close()
				sent <- dia.Close()
			}()
			conn, err := lis.Accept(ctx)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond) // a slow reader
			h := sha256.New()
			n, err := io.Copy(h, conn)
			if err != nil {
				t.Fatalf("listener read %d bytes, then: %v", n, err)
			}
			if n != int64(len(data)) || [32]byte(h.Sum(nil)) != sha256.Sum256(data) {
				t.Fatalf("listener read %d bytes whose SHA-256 differs from the %d sent", n, len(data))
			}
			conn.Close()
			if err := <-sent; err != nil {
				t.Fatalf("dialler: %v", err)
			}
		})
	}
}

// TestNodeAbort: a node aborted while its peer reads makes the peer's Read
// fail with ErrPeerAborted instead of an ordinary EOF.
func TestNodeAbort(t *testing.T) {
	server := closeServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lis := closeNode(t, "lis", server)
	dia := closeNode(t, "dial", server, reach.StrategyDirect)
	conn, err := dia.Dial(ctx, lis.ID())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	acc, err := lis.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(acc, buf); err != nil {
		t.Fatal(err)
	}
	dia.Abort()
	_, err = acc.Read(buf)
	if !errors.Is(err, reach.ErrPeerAborted) {
		t.Fatalf("read after the peer's Abort: %v, want ErrPeerAborted", err)
	}
	t.Log(err)
}
