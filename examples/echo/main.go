// Command echo is the smallest program built on the reach SDK: one side
// serves, sending every stream's bytes back; the other dials it by peer ID,
// across NATs, sends a message and prints what comes back.
//
//	REACH_SERVER=reach://ID@host:4950 go run ./examples/echo serve
//	REACH_SERVER=reach://ID@host:4950 go run ./examples/echo PEER hello there
//
// The server prints its peer ID ("echo server <peer-id>") and serves until
// Ctrl-C; the client prints "echo: hello there" (the strategy that carried
// it on stderr) and exits. Each run has a fresh key, so a new peer ID: a
// real program keeps its key (identity.LoadOrCreateKey, Config.Key).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/reachp2p/reach"
)

func main() {
	log.SetFlags(0)
	if len(os.Args) < 2 {
		log.Fatal("usage: echo serve | echo PEER MESSAGE...")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	servers := []string{os.Getenv("REACH_SERVER")}
	var err error
	if os.Args[1] == "serve" {
		err = serve(ctx, servers)
	} else {
		err = dial(ctx, servers, os.Args[1], strings.Join(os.Args[2:], " "))
	}
	if err != nil {
		log.Fatal(err)
	}
}

// serve echoes every stream back until ctx ends.
func serve(ctx context.Context, servers []string) error {
	node, err := reach.New(ctx, reach.Config{Servers: servers})
	if err != nil {
		return err
	}
	defer node.Close()
	fmt.Printf("echo server %s\n", node.ID())
	for {
		conn, err := node.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // Ctrl-C
			}
			return err
		}
		go func() {
			defer conn.Close()
			// Copy until the client's CloseWrite (io.EOF), then close:
			// the client reads everything and then EOF.
			n, err := io.Copy(conn, conn)
			if err != nil {
				log.Printf("%s: after %d bytes: %v", conn.RemoteAddr(), n, err)
				return
			}
			log.Printf("%s: echoed %d bytes", conn.RemoteAddr(), n)
		}()
	}
}

// dial sends msg to peer and prints the echo.
func dial(ctx context.Context, servers []string, peerText, msg string) error {
	peer, err := reach.ParsePeerID(peerText)
	if err != nil {
		return err
	}
	node, err := reach.New(ctx, reach.Config{Servers: servers})
	if err != nil {
		return err
	}
	// Node.Close waits (10 s at most) until the peer has read what was
	// written: write, close, exit loses nothing.
	defer node.Close()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := node.Dial(dctx, peer)
	if err != nil {
		return err
	}
	defer conn.Close()
	log.Printf("connected via %s", conn.Session().Strategy())
	if _, err := io.WriteString(conn, msg); err != nil {
		return err
	}
	// Half-close, as with TCP: the server sees EOF and can still answer.
	if err := conn.CloseWrite(); err != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	echo, err := io.ReadAll(conn)
	if err != nil {
		return err
	}
	if string(echo) != msg {
		return errors.New("the echo differs from the message")
	}
	fmt.Printf("echo: %s\n", echo)
	return nil
}
