package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/rendezvous"
)

// runDemo starts an embedded rendezvous server and two peers in one
// process, connects them through the ladder over a real QUIC session, moves
// data one way and back, and prints the winning strategy and throughput.
const demoHelp = `usage: reach demo [--mb N]

Starts an embedded rendezvous server and two peers in one process (on
loopback; no setup, no root), connects them through the ladder over a real
QUIC session, sends --mb MiB one way and the SHA-256 back, and prints the
winning strategy and the throughput on stdout.
`

func runDemo(args []string) error {
	fs := newFlagSet("demo", demoHelp)
	size := fs.Int("mb", 256, "MiB to send")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("demo", "demo takes no arguments, got %q", fs.Arg(0))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := rendezvous.StartServer(ctx, rendezvous.ServerConfig{}, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Printf("server   %s\n", srv.ConnectString())
	cfg := reach.Config{Servers: []string{srv.ConnectString()}, ListenAddr: netip.MustParseAddrPort("127.0.0.1:0")}
	a, err := reach.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := reach.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Printf("peer A   %s\npeer B   %s\n", a.ID(), b.ID())

	// B: read everything, answer with its SHA-256.
	got := make(chan error, 1)
	go func() {
		c, err := b.Accept(ctx)
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			got <- err
			return
		}
		_, err = c.Write(h.Sum(nil))
		got <- err
	}()

	start := time.Now()
	sess, err := a.DialSession(ctx, b.ID())
	if err != nil {
		return err
	}
	c, err := sess.OpenStream(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Printf("connected: strategy %s, path %s, in %v (RTT %v)\n", sess.Strategy(), pathText(sess), time.Since(start).Round(time.Millisecond), sess.RTT())

	data := make([]byte, 1<<20)
	rand.Read(data)
	h := sha256.New()
	t0 := time.Now()
	for i := 0; i < *size; i++ {
		if _, err := c.Write(data); err != nil {
			return err
		}
		h.Write(data)
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	sum := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, sum); err != nil {
		return fmt.Errorf("reading the receiver's checksum: %w", err)
	}
	el := time.Since(t0)
	if err := <-got; err != nil {
		return err
	}
	if !bytes.Equal(sum, h.Sum(nil)) {
		return errors.New("checksum mismatch: data corrupted")
	}
	mbit := float64(*size) * 8 * (1 << 20) / el.Seconds() / 1e6
	fmt.Printf("sent %d MiB in %v: %.0f Mbit/s, SHA-256 verified by the receiver\n", *size, el.Round(time.Millisecond), mbit)
	return nil
}
