package transfer

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/stream"
)

// BenchmarkLabTransfer compares reach's file transfer with bare copies over
// the same lab path, in one run: the sender on a public host, the receiver
// behind a port-restricted NAT (reach connects direct; the bare copies
// dial the sender's public address through the same NAT).
//
//	go test -run '^$' -bench BenchmarkLabTransfer -benchtime 1x -count 3 ./transfer/
//
// REACH_BENCH_MB sets the large file's size (default 1024), and
// REACH_BENCH_FILES the number of small files (default 10000, 0-4 KiB).
// Every copy goes from a file on disk to a file on disk; reach also hashes
// and verifies on the receiving side (the sender hashed in Prepare, before
// the clock). Sub-benchmarks: large (reach, bare quic-go on one stream and
// on two, TLS 1.3 over TCP), small (reach vs tar over plain TCP) and
// small-streams (reach with 1, 2, 4 and 8 data streams). Figures are in
// docs/transfer.md.
func BenchmarkLabTransfer(b *testing.B) {
	largeMB := envInt("REACH_BENCH_MB", 1024)
	nSmall := envInt("REACH_BENCH_FILES", 10000)
	l := natlab.NewT(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srvHost, err := l.AddPublicHost(ctx, "srv")
	if err != nil {
		b.Fatal(err)
	}
	_, cs := reachlab.StartServer(b, srvHost)
	snd, err := l.AddSite(ctx, "snd", natlab.Open)
	if err != nil {
		b.Fatal(err)
	}
	rcv, err := l.AddSite(ctx, "rcv", natlab.Kind(natlab.PortRestricted))
	if err != nil {
		b.Fatal(err)
	}

	dir := b.TempDir()
	large := filepath.Join(dir, "large.bin")
	if err := writeRandomFile(large, int64(largeMB)<<20); err != nil {
		b.Fatal(err)
	}
	small := filepath.Join(dir, "small")
	smallBytes := writeSmallFiles(b, small, nSmall)
	b.Logf("large file %d MiB; %d small files, %d KiB", largeMB, nSmall, smallBytes>>10)

	// reach: the sender serves both offers; the receiver keeps one session.
	quiet := slog.New(slog.DiscardHandler)
	cfg := reach.Config{Servers: []string{cs}, Logger: quiet}
	na := reachlab.NewNode(b, snd.Host, cfg)
	nb := reachlab.NewNode(b, rcv.Host, cfg)
	offLarge, err := Prepare(ctx, []string{large}, PrepareConfig{})
	if err != nil {
		b.Fatal(err)
	}
	offSmall, err := Prepare(ctx, []string{small}, PrepareConfig{})
	if err != nil {
		b.Fatal(err)
	}
	sender := NewSender(SenderConfig{})
	sender.Add(offLarge)
	sender.Add(offSmall)
	runCtx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	wg.Add(1)
	go func() { defer wg.Done(); sender.Serve(runCtx, na) }()
	sess, err := nb.DialSession(ctx, na.ID())
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("reach: %s over %v", sess.Strategy(), sess.RemoteAddr())

	// The bare servers on the sender's host: QUIC and TLS over TCP.
	bare := startBareServers(b, runCtx, &wg, snd.Host)

	out := filepath.Join(dir, "out")
	reachRecv := func(id ID, streams int) func() error {
		return func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			_, err := ReceiveSession(ctx, sess, id, ReceiveConfig{Dir: out, Streams: streams})
			return err
		}
	}
	size := int64(largeMB) << 20
	largeOut := filepath.Join(out, "large.bin")
	// Each sub-benchmark interleaves its variants in mirrored order (A B C
	// C B A) every iteration, so that the load of a shared machine falls on
	// all of them alike; it reports each variant's MB/s and the ratios.
	b.Run("large", func(b *testing.B) {
		paired(b, out, size, "reach", []variant{
			{"reach", reachRecv(offLarge.ID, 0)},
			{"quic", func() error { return bare.quicFile(rcv.Host, large, largeOut, 1) }},
			{"quic2", func() error { return bare.quicFile(rcv.Host, large, largeOut, 2) }},
			{"tls", func() error { return bare.tlsFile(rcv.Host, large, largeOut) }},
			{"stream", func() error { return streamCopy(na, nb, large, largeOut) }},
		})
	})
	b.Run("small", func(b *testing.B) {
		paired(b, out, smallBytes, "reach", []variant{
			{"reach", reachRecv(offSmall.ID, 0)},
			{"tar", func() error { return bare.tarDir(rcv.Host, small, out) }},
		})
	})
	b.Run("small-streams", func(b *testing.B) {
		var vs []variant
		for _, n := range []int{1, 2, 4, 8} {
			vs = append(vs, variant{fmt.Sprintf("s%d", n), reachRecv(offSmall.ID, n)})
		}
		paired(b, out, smallBytes, "s1", vs)
	})
}

// streamCopy copies src to dst on a plain stream of the session between
// the nodes (from a to b, as reach's transfer goes): what the transfer
// package adds is the difference to the reach variant.
func streamCopy(a, b *reach.Node, src, dst string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	sess, err := a.DialSession(ctx, b.ID()) // the session b dialled
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		st, err := sess.OpenStream(ctx)
		if err != nil {
			errc <- err
			return
		}
		defer st.Close()
		f, err := os.Open(src)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		_, err = io.CopyBuffer(st, f, make([]byte, ioBuffer))
		if err == nil {
			err = st.CloseWrite()
		}
		io.Copy(io.Discard, st)
		errc <- err
	}()
	st, err := b.Accept(ctx)
	if err != nil {
		return err
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.CopyBuffer(f, st, make([]byte, ioBuffer))
	st.Close()
	if err2 := <-errc; err == nil {
		err = err2
	}
	return err
}

// variant is one way of moving the data, run into an empty out directory.
type variant struct {
	name string
	run  func() error
}

// paired runs the variants in mirrored order every iteration and reports
// name-MB/s for each and name/base, the speed of each relative to base.
func paired(b *testing.B, out string, size int64, base string, vs []variant) {
	total := map[string]time.Duration{}
	for i := range b.N {
		order := slices.Clone(vs)
		for _, pass := range []int{0, 1} {
			if pass == 1 {
				slices.Reverse(order)
			}
			for _, v := range order {
				os.RemoveAll(out)
				os.MkdirAll(out, 0o755)
				start := time.Now()
				if err := v.run(); err != nil {
					b.Fatalf("%s (iteration %d): %v", v.name, i, err)
				}
				total[v.name] += time.Since(start)
			}
		}
	}
	mbs := func(name string) float64 { return float64(size) * float64(2*b.N) / total[name].Seconds() / 1e6 }
	for _, v := range vs {
		b.ReportMetric(mbs(v.name), v.name+"-MB/s")
		if v.name != base {
			b.ReportMetric(mbs(base)/mbs(v.name), base+"/"+v.name)
		}
	}
	b.ReportMetric(0, "ns/op") // the per-variant figures are the result
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v >= 0 {
		return v
	}
	return def
}

func writeRandomFile(p string, size int64) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	buf := make([]byte, 4<<20)
	r := mrand.NewChaCha8([32]byte{1})
	for left := size; left > 0; left -= int64(len(buf)) {
		r.Read(buf)
		if _, err := f.Write(buf[:min(int64(len(buf)), left)]); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// writeSmallFiles writes n files of 0-4 KiB in 100 directories under dir.
func writeSmallFiles(b *testing.B, dir string, n int) int64 {
	r := mrand.NewChaCha8([32]byte{2})
	buf := make([]byte, 4096)
	var total int64
	for i := range n {
		d := filepath.Join(dir, fmt.Sprintf("d%02d", i%100))
		os.MkdirAll(d, 0o755)
		k := int(r.Uint64() % 4097)
		r.Read(buf[:k])
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d", i)), buf[:k], 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(k)
	}
	return total
}

// bareServers serve files from the sender's host over bare quic-go and
// TLS over TCP: the client writes a request line "PATH [PART/PARTS]" and
// reads the bytes (a tar stream for a directory) until EOF.
type bareServers struct {
	quicAddr, tcpAddr netip.AddrPort
	plainAddr         netip.AddrPort // plain TCP, for tar
	skey              *identity.Key
	ckey              *identity.Key
}

const (
	bareQUICPort = 42000
	bareTCPPort  = 42001
	barePlainTCP = 42002
)

func startBareServers(b *testing.B, ctx context.Context, wg *sync.WaitGroup, h *natlab.Host) *bareServers {
	s := &bareServers{quicAddr: netip.AddrPortFrom(h.Addr(), bareQUICPort), tcpAddr: netip.AddrPortFrom(h.Addr(), bareTCPPort),
		plainAddr: netip.AddrPortFrom(h.Addr(), barePlainTCP)}
	s.skey, _ = identity.GenerateKey()
	s.ckey, _ = identity.GenerateKey()
	stls, err := identity.ServerTLSConfig(s.skey, stream.ALPN)
	if err != nil {
		b.Fatal(err)
	}
	uc, err := h.ListenUDP(s.quicAddr)
	if err != nil {
		b.Fatal(err)
	}
	tr := &quic.Transport{Conn: uc}
	ln, err := tr.Listen(stls, stream.QUICConfig(stream.Config{}))
	if err != nil {
		b.Fatal(err)
	}
	tl, err := h.ListenTCP(s.tcpAddr)
	if err != nil {
		b.Fatal(err)
	}
	pl, err := h.ListenTCP(s.plainAddr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close(); tr.Close(); uc.Close(); tl.Close(); pl.Close() })
	context.AfterFunc(ctx, func() { ln.Close(); tl.Close(); pl.Close() })
	wg.Add(3)
	go func() {
		defer wg.Done()
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serveBare(c)
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			}()
		}
	}()
	go func() {
		defer wg.Done()
		for {
			qc, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				defer qc.CloseWithError(0, "")
				var swg sync.WaitGroup
				for {
					st, err := qc.AcceptStream(ctx)
					if err != nil {
						break
					}
					swg.Add(1)
					go func() { defer swg.Done(); serveBare(st); st.Close() }()
				}
				swg.Wait()
			}()
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, stls)
				defer tc.Close()
				serveBare(tc)
				tc.CloseWrite()
				io.Copy(io.Discard, tc) // until the client closes
			}()
		}
	}()
	return s
}

// serveBare answers one request: a file's bytes (or one part of them), or
// a directory as a tar stream.
func serveBare(rw io.ReadWriter) {
	br := bufio.NewReader(rw)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	var p string
	var part, parts int64 = 0, 1
	fmt.Sscanf(strings.TrimSpace(line), "%s %d/%d", &p, &part, &parts)
	st, err := os.Stat(p)
	if err != nil {
		return
	}
	if st.IsDir() {
		tw := tar.NewWriter(rw)
		tw.AddFS(os.DirFS(p))
		tw.Close()
		return
	}
	f, err := os.Open(p)
	if err != nil {
		return
	}
	defer f.Close()
	chunk := (st.Size() + parts - 1) / parts
	io.CopyBuffer(rw, io.NewSectionReader(f, part*chunk, chunk), make([]byte, ioBuffer))
}

// quicFile copies src to dst over a new bare QUIC connection from h, on
// n streams (each a contiguous part of the file).
func (s *bareServers) quicFile(h *natlab.Host, src, dst string, n int) error {
	uc, err := h.ListenUDP(netip.AddrPort{})
	if err != nil {
		return err
	}
	tr := &quic.Transport{Conn: uc}
	defer uc.Close()
	defer tr.Close()
	ctls, _, err := identity.ClientTLSConfig(s.ckey, s.skey.ID(), stream.ALPN)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	qc, err := tr.Dial(ctx, net.UDPAddrFromAddrPort(s.quicAddr), ctls, stream.QUICConfig(stream.Config{}))
	if err != nil {
		return err
	}
	defer qc.CloseWithError(0, "")
	st0, _ := os.Stat(src)
	chunk := (st0.Size() + int64(n) - 1) / int64(n)
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	errc := make(chan error, n)
	for i := range n {
		go func() {
			st, err := qc.OpenStreamSync(ctx)
			if err != nil {
				errc <- err
				return
			}
			fmt.Fprintf(st, "%s %d/%d\n", src, i, n)
			st.Close()
			w := io.NewOffsetWriter(f, int64(i)*chunk)
			k, err := io.CopyBuffer(w, st, make([]byte, ioBuffer))
			if err == nil && k != min(chunk, st0.Size()-int64(i)*chunk) {
				err = fmt.Errorf("stream %d: %d bytes", i, k)
			}
			errc <- err
		}()
	}
	for range n {
		if err := <-errc; err != nil {
			return err
		}
	}
	return f.Close()
}

// tlsFile copies src to dst over a new TLS 1.3 over TCP connection from h.
func (s *bareServers) tlsFile(h *natlab.Host, src, dst string) error {
	tc, err := s.dialTLS(h)
	if err != nil {
		return err
	}
	defer tc.Close()
	fmt.Fprintf(tc, "%s 0/1\n", src)
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.CopyBuffer(f, tc, make([]byte, ioBuffer)); err != nil {
		return err
	}
	return f.Close()
}

func (s *bareServers) dialTLS(h *natlab.Host) (*tls.Conn, error) {
	c, err := h.DialTCP(s.tcpAddr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	ctls, _, err := identity.ClientTLSConfig(s.ckey, s.skey.ID(), stream.ALPN)
	if err != nil {
		c.Close()
		return nil, err
	}
	tc := tls.Client(c, ctls)
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// tarDir is `tar c | nc` and `nc | tar x`: the directory as a tar stream
// over plain TCP (no TLS), unpacked into out as it arrives.
func (s *bareServers) tarDir(h *natlab.Host, src, out string) error {
	c, err := h.DialTCP(s.plainAddr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(c, "%s\n", src)
	tr := tar.NewReader(bufio.NewReaderSize(c, ioBuffer))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(out, filepath.FromSlash(hdr.Name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, hdr.FileInfo().Mode().Perm())
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, tr); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
		}
	}
}
