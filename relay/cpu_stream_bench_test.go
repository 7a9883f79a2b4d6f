package relay_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
)

// BenchmarkRelayCPUStream: the relay's CPU time per byte of a relayed
// stream (docs/protocol.md, "Relayed streams") between two TLS links, the
// way BenchmarkRelayCPU measures packets: the server in a child process
// pinned to one core, the two clients in this process, one stream written
// in 64 KiB writes for cpuFloodFor. µs/1200B is the relay's CPU per 1200
// stream bytes, to set beside BenchmarkRelayCPU's µs/pkt for 1200-byte
// packets.
//
//	go test -run '^$' -bench BenchmarkRelayCPUStream -benchtime 1x -count 3 ./relay/
func BenchmarkRelayCPUStream(b *testing.B) {
	rc := startCPUChild(b, "tls-tls-stream")
	k, err := identity.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	in := make(chan net.Conn, 1)
	recv, err := relay.NewClient(relay.ClientConfig{Key: k, Dialers: []relay.LinkDialer{relay.TLSDialer{}}, Logger: quiet(),
		AcceptStream: func(_ identity.PeerID, c net.Conn) { in <- c }})
	if err != nil {
		b.Fatal(err)
	}
	defer recv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := recv.Connect(ctx, rc.sa); err != nil {
		b.Fatal(err)
	}
	send, _ := cpuClient(b, rc.sa, "tls", nil)
	time.Sleep(100 * time.Millisecond) // the receiver's FEATURES
	w, err := send.DialStream(ctx, k.ID())
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	r := <-in
	var got atomic.Int64
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	chunk := make([]byte, 64<<10)
	var cpu time.Duration
	var bytes uint64
	var wall time.Duration
	b.ResetTimer()
	for range b.N {
		m0 := rc.mark(b)
		got0 := got.Load()
		sent := int64(0)
		start := time.Now()
		for end := start.Add(cpuFloodFor); time.Now().Before(end); {
			if _, err := w.Write(chunk); err != nil {
				b.Fatal(err)
			}
			sent += int64(len(chunk))
		}
		for got.Load()-got0 < sent {
			time.Sleep(time.Millisecond)
		}
		wall += time.Since(start)
		m1 := rc.mark(b)
		cpu += m1.cpu - m0.cpu
		bytes += m1.bytes - m0.bytes
	}
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/(float64(bytes)/1200), "µs/1200B")
	b.ReportMetric(float64(bytes)/1e6/cpu.Seconds(), "MB/cpu-s")
	b.ReportMetric(float64(bytes)/1e6/wall.Seconds(), "MB/s")
	b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "relay-core-%")
	b.ReportMetric(0, "ns/op")
}
