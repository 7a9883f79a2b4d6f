package relay_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
)

// BenchmarkRelayIdleMemory: the relay server's memory per idle connected
// peer, for each link transport. The peers run in a child process (this
// test binary, see TestMain), so the figure is the server's alone:
// heap and goroutine stacks in use after a GC, with the peers connected
// minus before, divided by their number. Tailscale's DERP needs about
// 15 KB per idle peer.
//
//	go test -run '^$' -bench BenchmarkRelayIdleMemory -benchtime 1x ./relay/
func BenchmarkRelayIdleMemory(b *testing.B) {
	const peers = 500
	for _, transport := range []string{"udp", "tls"} {
		b.Run(transport, func(b *testing.B) {
			for range b.N {
				rs, rl := startServer(b, relay.ServerConfig{ConnRate: -1, MaxLinksPerIP: -1, Logger: quiet()})
				before := inUse()
				child := exec.Command(os.Args[0], "-test.run=^$")
				child.Env = append(os.Environ(), "RELAY_IDLE_CS="+rs.ConnectString(),
					"RELAY_IDLE_N="+strconv.Itoa(peers), "RELAY_IDLE_TRANSPORT="+transport)
				stdin, _ := child.StdinPipe()
				out, _ := child.StdoutPipe()
				child.Stderr = os.Stderr
				if err := child.Start(); err != nil {
					b.Fatal(err)
				}
				ready := make(chan struct{})
				go func() {
					sc := bufio.NewScanner(out)
					for sc.Scan() {
						if sc.Text() == "idle clients ready" {
							close(ready)
						}
					}
				}()
				select {
				case <-ready:
				case <-time.After(2 * time.Minute):
					child.Process.Kill()
					b.Fatal("clients not connected within 2 min")
				}
				for deadline := time.Now().Add(10 * time.Second); rl.Stats().Clients < peers; {
					if time.Now().After(deadline) {
						b.Fatalf("%d of %d clients registered", rl.Stats().Clients, peers)
					}
					time.Sleep(50 * time.Millisecond)
				}
				time.Sleep(time.Second) // handshakes' garbage settles
				after := inUse()
				per := float64(after-before) / peers
				b.ReportMetric(per, "B/peer")
				b.Logf("%s: %d idle peers: %.1f KB each (heap+stacks %d -> %d)", transport, peers, per/1024, before, after)
				stdin.Close()
				child.Wait()
				rs.Close()
			}
		})
	}
}

// inUse is the heap and stack memory in use after a GC.
func inUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// idleClientsChild is BenchmarkRelayIdleMemory's child process: it
// links RELAY_IDLE_N peers to the relay, says so, and holds them until
// stdin closes.
func idleClientsChild(cs string) error {
	n, _ := strconv.Atoi(os.Getenv("RELAY_IDLE_N"))
	sa, err := rendezvous.ParseServerAddr(cs)
	if err != nil {
		return err
	}
	var dialer relay.LinkDialer = relay.TLSDialer{}
	var tr *quic.Transport
	if os.Getenv("RELAY_IDLE_TRANSPORT") == "udp" {
		uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		tr = &quic.Transport{Conn: uc}
		defer tr.Close()
		dialer = relay.UDPDialer{Socket: tr}
	}
	var clients []*relay.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := range n {
		k, _ := identity.GenerateKey()
		c, err := relay.NewClient(relay.ClientConfig{Key: k, Dialers: []relay.LinkDialer{dialer}})
		if err != nil {
			return err
		}
		clients = append(clients, c)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = c.Connect(ctx, sa)
		cancel()
		if err != nil {
			return fmt.Errorf("client %d: %v", i, err)
		}
	}
	fmt.Println("idle clients ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	return nil
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }
