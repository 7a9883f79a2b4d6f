// Command portforward makes a TCP service on one machine a local port on
// another, across NATs, like ssh -L (reach listen --forward and reach dial
// --local do the same, with more care): one stream per TCP connection, on
// one session, bytes copied both ways with TCP's half-close.
//
//	REACH_SERVER=reach://ID@host:4950 go run ./examples/portforward expose localhost:22
//	REACH_SERVER=reach://ID@host:4950 go run ./examples/portforward connect PEER 127.0.0.1:2222
//
// expose prints "exposing localhost:22 as <peer-id>" and connects every
// stream a peer opens to localhost:22; connect prints "listening on
// 127.0.0.1:2222" and carries each connection to it to PEER. Both run until
// Ctrl-C. Anyone who knows the peer ID may use the exposed port: a real
// program checks conn.RemoteAddr() (the peer ID) or sets Config.Accept.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"time"

	"github.com/reachp2p/reach"
)

func main() {
	log.SetFlags(0)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	servers := []string{os.Getenv("REACH_SERVER")}
	var err error
	switch {
	case len(os.Args) == 3 && os.Args[1] == "expose":
		err = expose(ctx, servers, os.Args[2])
	case len(os.Args) == 4 && os.Args[1] == "connect":
		err = connect(ctx, servers, os.Args[2], os.Args[3])
	default:
		log.Fatal("usage: portforward expose HOST:PORT | portforward connect PEER LOCAL-ADDR:PORT")
	}
	if err != nil {
		log.Fatal(err)
	}
}

// expose connects every incoming stream to target until ctx ends.
func expose(ctx context.Context, servers []string, target string) error {
	node, err := reach.New(ctx, reach.Config{Servers: servers})
	if err != nil {
		return err
	}
	defer node.Abort()
	fmt.Printf("exposing %s as %s\n", target, node.ID())
	for {
		conn, err := node.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			tc, err := net.DialTimeout("tcp", target, 10*time.Second)
			if err != nil {
				log.Printf("%s: %v", conn.RemoteAddr(), err)
				conn.Abort() // the peer sees an error, not an empty answer
				return
			}
			splice(tc.(*net.TCPConn), conn)
		}()
	}
}

// connect listens on local and carries each connection to peer.
func connect(ctx context.Context, servers []string, peerText, local string) error {
	peer, err := reach.ParsePeerID(peerText)
	if err != nil {
		return err
	}
	node, err := reach.New(ctx, reach.Config{Servers: servers})
	if err != nil {
		return err
	}
	defer node.Abort()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	sess, err := node.DialSession(dctx, peer) // fail now if the peer is not there
	cancel()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", local)
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	fmt.Printf("listening on %s\n", ln.Addr())
	for {
		tc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			// One stream per connection, on the one session.
			conn, err := sess.OpenStream(ctx)
			if err != nil {
				log.Printf("%s: %v", tc.RemoteAddr(), err)
				tc.Close()
				return
			}
			splice(tc.(*net.TCPConn), conn)
		}()
	}
}

// splice copies both ways, passing each end of input on as a half-close,
// and closes both once both directions are done. An error on either side
// aborts both (the stream with Abort, the TCP connection by closing it),
// so that it is never passed on as a clean end of data.
func splice(tc *net.TCPConn, s *reach.Stream) {
	fail := func() {
		s.Abort()
		tc.Close()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := io.Copy(s, tc); err != nil {
			fail()
			return
		}
		s.CloseWrite()
	}()
	if _, err := io.Copy(tc, s); err != nil {
		fail()
	} else {
		tc.CloseWrite()
	}
	<-done
	tc.Close()
	s.Close()
}
