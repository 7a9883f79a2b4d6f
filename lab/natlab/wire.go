package natlab

// The wire: a transparent L2 forwarder that delays frames. See Impairment
// for why it exists and what it costs.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Interface names inside a wire's namespace: wireHost faces the host (it is
// the old peer of the host's interface), wireBridge faces the bridge.
const (
	wireHost   = "wh"
	wireBridge = "wb"
)

// wireQueue is how many frames one direction of a wire holds at most (in
// flight during the delay, or waiting for a congested output). Beyond it
// frames are dropped, like a router's full queue. 16384 full-size frames
// are 130 ms at 1.5 Gbit/s, more than the wire can carry.
const wireQueue = 16384

// wireFrameMax is the largest frame the wire carries: an Ethernet frame of
// the lab's 1500-byte MTU with a VLAN tag, rounded up. Offloads are off on
// every interface that feeds a wire, so nothing larger should arrive; a
// larger frame (a GSO super-frame that slipped through) is dropped and
// counted in wireStats.Oversize.
const wireFrameMax = 2048

// frame is one Ethernet frame on its way through a wire.
type frame struct {
	buf *[wireFrameMax]byte
	n   int
	due time.Time
}

var framePool = sync.Pool{New: func() any { return new([wireFrameMax]byte) }}

// wireStats counts what a wire did, per direction (0: up, from the host;
// 1: down, towards the host).
type wireStats struct {
	Forwarded [2]atomic.Uint64
	Dropped   [2]atomic.Uint64 // queue full or write refused (ENOBUFS)
	Oversize  [2]atomic.Uint64
}

// wire forwards frames between its two interfaces, each direction through
// a FIFO that holds every frame for that direction's delay (plus jitter).
// Order is preserved: a frame is never released before the one ahead of it.
type wire struct {
	ns    string
	files [2]*os.File // 0: wireHost, 1: wireBridge
	// delay and jitter per direction, in nanoseconds; changed at any time
	// by Impair (frames already queued keep their release time).
	delay  [2]atomic.Int64
	jitter [2]atomic.Int64
	stats  wireStats

	stop     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// startWire opens a raw packet socket on each of the wire's interfaces in
// namespace ns and starts the four goroutines (a reader and a writer per
// direction).
func startWire(ns string) (*wire, error) {
	w := &wire{ns: ns, stop: make(chan struct{})}
	err := runIn(ns, func() error {
		for i, name := range []string{wireHost, wireBridge} {
			f, err := openPacket(name)
			if err != nil {
				return err
			}
			w.files[i] = f
		}
		return nil
	})
	if err != nil {
		for _, f := range w.files {
			if f != nil {
				f.Close()
			}
		}
		return nil, err
	}
	for dir := range 2 {
		q := make(chan frame, wireQueue)
		in, out := w.files[dir], w.files[1-dir]
		w.wg.Add(2)
		go w.read(dir, in, q)
		go w.write(dir, out, q)
	}
	return w, nil
}

// setDelay changes a direction's delay and jitter.
func (w *wire) setDelay(dir int, delay, jitter time.Duration) {
	w.delay[dir].Store(int64(delay))
	w.jitter[dir].Store(int64(jitter))
}

// close stops the goroutines and closes the sockets; frames in flight are
// lost. It returns when every goroutine has ended.
func (w *wire) close() {
	w.stopOnce.Do(func() {
		close(w.stop)
		for _, f := range w.files {
			f.Close() // wakes the readers
		}
		w.wg.Wait()
	})
}

// read receives frames arriving on in and queues them with their release
// time. Frames the wire itself sent (PACKET_OUTGOING) are skipped; the
// socket option PACKET_IGNORE_OUTGOING already filters them, the check is
// a second guard.
func (w *wire) read(dir int, in *os.File, q chan<- frame) {
	defer w.wg.Done()
	defer close(q)
	rc, err := in.SyscallConn()
	if err != nil {
		return
	}
	var last time.Time // release time of the previous frame (order)
	for {
		buf := framePool.Get().(*[wireFrameMax]byte)
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf[:], unix.MSG_TRUNC)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			framePool.Put(buf)
			// ENETDOWN: the interface went down (or was down at bind);
			// the socket resumes when it comes back up.
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENETDOWN) {
				continue
			}
			return // closed
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			framePool.Put(buf)
			continue
		}
		if n > wireFrameMax {
			w.stats.Oversize[dir].Add(1)
			framePool.Put(buf)
			continue
		}
		now := time.Now()
		due := now.Add(time.Duration(w.delay[dir].Load()))
		if j := w.jitter[dir].Load(); j > 0 {
			due = due.Add(time.Duration(rand.Int64N(2*j+1) - j))
		}
		if due.Before(last) {
			due = last
		}
		last = due
		select {
		case q <- frame{buf: buf, n: n, due: due}:
		default:
			w.stats.Dropped[dir].Add(1)
			framePool.Put(buf)
		}
	}
}

// write releases each queued frame on out at its due time.
func (w *wire) write(dir int, out *os.File, q <-chan frame) {
	defer w.wg.Done()
	rc, err := out.SyscallConn()
	if err != nil {
		for f := range q {
			framePool.Put(f.buf)
		}
		return
	}
	for f := range q {
		if !w.sleepUntil(f.due) {
			framePool.Put(f.buf)
			for f := range q { // until the reader closes q
				framePool.Put(f.buf)
			}
			return
		}
		var werr error
		err := rc.Write(func(fd uintptr) bool {
			_, werr = unix.Write(int(fd), f.buf[:f.n])
			return werr != unix.EAGAIN
		})
		framePool.Put(f.buf)
		switch {
		case err == nil && werr == nil:
			w.stats.Forwarded[dir].Add(1)
		case err == nil:
			w.stats.Dropped[dir].Add(1) // ENOBUFS: the output queue is full
		default: // closed
			for f := range q {
				framePool.Put(f.buf)
			}
			return
		}
	}
}

// sleepUntil waits until t, or returns false when the wire stops first.
// It sleeps with nanosleep(2) on the writer's own thread rather than with
// a Go timer: the runtime's timers wake up to a millisecond late (its
// poller waits in whole milliseconds), which would add up to 1 ms to every
// delayed frame; nanosleep is accurate to tens of microseconds. Sleeps are
// cut into slices of sleepSlice so that close is never kept waiting long.
func (w *wire) sleepUntil(t time.Time) bool {
	const sleepSlice = 10 * time.Millisecond
	for {
		select {
		case <-w.stop:
			return false
		default:
		}
		d := time.Until(t)
		if d <= 0 {
			return true
		}
		ts := unix.NsecToTimespec(int64(min(d, sleepSlice)))
		unix.Nanosleep(&ts, nil)
	}
}

// openPacket opens a non-blocking AF_PACKET socket that sees every frame
// arriving on interface ifname of the current namespace and sends on it.
// The socket is created listening to no protocol and bound afterwards, so
// it never queues a frame from another interface.
func openPacket(ifname string) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("natlab: packet socket: %w", err)
	}
	fail := func(err error) (*os.File, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("natlab: packet socket on %s: %w", ifname, err)
	}
	ifi, err := ifIndex(ifname)
	if err != nil {
		return fail(err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return fail(err)
	}
	// Room for bursts: 4 MiB each way (FORCE ignores rmem_max; we are root).
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)
	proto := htons(unix.ETH_P_ALL)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi}); err != nil {
		return fail(err)
	}
	return os.NewFile(uintptr(fd), "packet:"+ifname), nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func ifIndex(name string) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

// ethtoolValue and ifreqData are the kernel's struct ethtool_value and
// struct ifreq with its ifr_data member (40 bytes on 64-bit Linux).
type ethtoolValue struct{ cmd, data uint32 }

type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// offloadsOff turns off, on each interface of namespace ns, what lets a
// raw socket see frames that are not on the wire as they would be: TX
// checksum offload (frames with a partial checksum), TSO and GSO (64 KiB
// super-frames) and GRO (merged frames). It is `ethtool -K dev tx off tso
// off gso off gro off` done with the legacy SIOCETHTOOL ioctls, so the lab
// needs no ethtool program.
func offloadsOff(ns string, ifnames ...string) error {
	return runIn(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for _, name := range ifnames {
			for _, cmd := range []uint32{unix.ETHTOOL_STXCSUM, unix.ETHTOOL_STSO, unix.ETHTOOL_SGSO, unix.ETHTOOL_SGRO} {
				ev := &ethtoolValue{cmd: cmd}
				var ifr ifreqData
				copy(ifr.name[:unix.IFNAMSIZ-1], name)
				ifr.data = unsafe.Pointer(ev)
				if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 && errno != unix.EOPNOTSUPP {
					return fmt.Errorf("natlab: ethtool %#x on %s in %s: %w", cmd, name, ns, errno)
				}
			}
		}
		return nil
	})
}

// peerName returns the name of the veth peer of interface dev (in
// namespace ns), which lives in namespace peerNS.
func peerName(ctx context.Context, ns, dev, peerNS string) (string, error) {
	out, err := output(ctx, "ip", "-j", "-n", ns, "link", "show", "dev", dev)
	if err != nil {
		return "", err
	}
	var self []struct {
		LinkIndex int `json:"link_index"`
	}
	if err := json.Unmarshal([]byte(out), &self); err != nil || len(self) != 1 || self[0].LinkIndex == 0 {
		return "", fmt.Errorf("natlab: no veth peer for %s in %s: %q", dev, ns, out)
	}
	out, err = output(ctx, "ip", "-j", "-n", peerNS, "link", "show")
	if err != nil {
		return "", err
	}
	var links []struct {
		Index int    `json:"ifindex"`
		Name  string `json:"ifname"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return "", fmt.Errorf("natlab: links of %s: %w", peerNS, err)
	}
	for _, l := range links {
		if l.Index == self[0].LinkIndex {
			return l.Name, nil
		}
	}
	return "", fmt.Errorf("natlab: veth peer %d of %s/%s not found in %s", self[0].LinkIndex, ns, dev, peerNS)
}

// insertWire cuts link st (host interface <-> bridge port) and puts a wire
// namespace in the middle:
//
//	host dev <-> wh [wire ns: forwarder] wb <-> new port on the bridge
//
// The host's interface, addresses, MAC and routes are untouched; its
// carrier drops for the few milliseconds the re-plumbing takes.
func (st *linkState) insertWire(ctx context.Context) error {
	h, l := st.host, st.host.lab
	bns, bridge := h.net.ns, h.net.bridge
	old, err := peerName(ctx, h.ns, st.dev, bns)
	if err != nil {
		return err
	}
	wns := l.nsName(h.name + ".wire")
	if err := l.addNS(ctx, wns); err != nil {
		return err
	}
	// The wire namespace must not speak: no IPv6 link-local addresses, no
	// router solicitations, no MLD reports on the link.
	if err := sysctl(ctx, wns, "net.ipv6.conf.all.disable_ipv6", "1", "net.ipv6.conf.default.disable_ipv6", "1"); err != nil {
		return err
	}
	l.mu.Lock()
	l.nextLink++
	port := fmt.Sprintf("p%d", l.nextLink)
	l.mu.Unlock()
	steps := [][]string{
		{"ip", "-n", wns, "link", "add", wireBridge, "type", "veth", "peer", "name", port, "netns", bns},
		{"ip", "-n", bns, "link", "set", old, "nomaster"},
		{"ip", "-n", bns, "link", "set", old, "netns", wns},
		{"ip", "-n", wns, "link", "set", old, "name", wireHost},
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return err
		}
	}
	if err := offloadsOff(wns, wireHost, wireBridge); err != nil {
		return err
	}
	if err := offloadsOff(bns, port); err != nil {
		return err
	}
	if err := offloadsOff(h.ns, st.dev); err != nil {
		return err
	}
	// Up before the sockets bind (a packet socket bound to a down
	// interface starts with ENETDOWN); the bridge port last.
	for _, s := range [][]string{
		{"ip", "-n", wns, "link", "set", wireHost, "up"},
		{"ip", "-n", wns, "link", "set", wireBridge, "up"},
	} {
		if err := run(ctx, s...); err != nil {
			return err
		}
	}
	w, err := startWire(wns)
	if err != nil {
		return err
	}
	st.wire, st.port = w, port
	l.onStop(w.close)
	if err := run(ctx, "ip", "-n", bns, "link", "set", port, "master", bridge, "up"); err != nil {
		return err
	}
	l.log.Debug("wire inserted", "host", h.name, "dev", st.dev, "ns", wns, "port", port)
	return nil
}
