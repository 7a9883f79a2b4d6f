// Command sendfile is a small program built on the reach SDK's transfer
// package: one side offers files and prints a ticket, the other fetches
// them with it, across NATs.
//
//	REACH_SERVER=reach://ID@host:4950 go run ./examples/sendfile send photos/ notes.txt
//	go run ./examples/sendfile recv reachsend_... ./inbox
//
// The receiver needs no server setting: the ticket names the sender's.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/transfer"
)

func main() {
	log.SetFlags(0)
	if len(os.Args) < 3 || os.Args[1] != "send" && os.Args[1] != "recv" {
		log.Fatal("usage: sendfile send PATH... | sendfile recv TICKET [DIR]")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var err error
	if os.Args[1] == "send" {
		err = send(ctx, os.Args[2:])
	} else {
		dir := "."
		if len(os.Args) > 3 {
			dir = os.Args[3]
		}
		err = recv(ctx, os.Args[2], dir)
	}
	if err != nil {
		log.Fatal(err)
	}
}

func send(ctx context.Context, paths []string) error {
	// Hash everything once; receivers get the manifest from this.
	offer, err := transfer.Prepare(ctx, paths, transfer.PrepareConfig{})
	if err != nil {
		return err
	}
	node, err := reach.New(ctx, reach.Config{Servers: []string{os.Getenv("REACH_SERVER")}})
	if err != nil {
		return err
	}
	defer node.Close()
	ticket, err := offer.Ticket(node.ID(), node.Server())
	if err != nil {
		return err
	}
	fmt.Printf("%d files, %d bytes. Receive with:\n  sendfile recv %s\n", offer.Manifest.Files(), offer.Manifest.Size(), ticket)

	done := make(chan struct{})
	sender := transfer.NewSender(transfer.SenderConfig{
		Done: func(r transfer.SendResult) {
			if r.Complete {
				fmt.Printf("%s has everything (%d bytes sent)\n", r.Peer.Short(), r.Bytes)
				close(done)
			}
		},
	})
	sender.Add(offer)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go sender.Serve(ctx, node)
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func recv(ctx context.Context, ticketText, dir string) error {
	ticket, err := transfer.ParseTicket(ticketText)
	if err != nil {
		return err
	}
	node, err := reach.New(ctx, reach.Config{Servers: ticket.ConnectStrings()})
	if err != nil {
		return err
	}
	defer node.Close()
	res, err := transfer.Receive(ctx, node, ticket, transfer.ReceiveConfig{
		Dir:     dir,
		MaxSize: 10 << 30, // refuse more than 10 GiB
		Confirm: func(in transfer.Incoming) error {
			fmt.Printf("receiving %d files, %d bytes\n", in.Files, in.Size)
			return nil
		},
		Progress: func(p transfer.Progress) {
			fmt.Printf("\r%d/%d bytes, %.1f MB/s, eta %v   ", p.BytesDone, p.Bytes, p.Rate/1e6, p.ETA)
		},
	})
	if err != nil {
		return err
	}
	fmt.Printf("\nreceived %d files (%d bytes), every one verified\n", res.Files, res.Bytes)
	return nil
}
