package lab_test

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/crypto/wireguard"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// TestNodePortTooBigForThePath sends UDP datagrams through n1's NodePort
// to a backend on n2, which n1 reaches through WireGuard's device (its MTU
// below the underlay's). A datagram too big for that path, with DF set
// (the client does path MTU discovery), must be answered as the kernel's
// forwarding would answer it: ICMP "fragmentation needed" from the
// NodePort's address, naming the path's MTU, so that the client learns it;
// n1 reports the drop (one event per refused datagram); a datagram of the
// size learned goes through, and so does a bigger one that the client's
// kernel then cuts into fragments of that size. One without DF, sent
// before the client learned the MTU, which the datapath cannot fragment,
// is dropped and reported. Before, lb_out dropped both without an ICMP or
// an event: the client waited and never learned why.
func TestNodePortTooBigForThePath(t *testing.T) {
	l := labtest.UpRouting(t, 2, "tunnel", "--encryption", "wireguard", "--encryption-strict")
	echo := labtest.Pod(t, l, "n2", "echo", "app=echo")
	labtest.Serve(t, lab.NetNSPath(echo.NetNS), 8080, func(c net.Conn) { c.Close() }, func(b []byte) []byte { return b })
	upsertNodePort(t, l, remoteNodePort("echo", "10.96.0.21", "UDP", 80, 8080, 30082, echo.IP), "n1")
	n1, err := l.Node("n1")
	if err != nil {
		t.Fatal(err)
	}
	var wgMTU int
	if err := ns.WithNetNSPath(lab.NetNSPath(n1.NetNS), func(ns.NetNS) error {
		link, err := netlink.LinkByName(wireguard.DeviceName)
		if err == nil {
			wgMTU = link.Attrs().MTU
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tooBig := newTally()
	labtest.Monitor(t, l, "n1", "drop", func(ev types.Event) {
		if ev.Reason == datapath.ReasonName(datapath.ReasonFragNeeded) {
			tooBig.add(ev.Src.Addr().String())
		}
	})
	out := labtest.UnderlayHost(t, l, "out", "172.30.0.50")
	frontend := n1.IP + ":30082"

	// exchange sends size bytes from a new socket (DF set or not) and
	// returns what came back, the socket's error, and the socket's path MTU.
	exchange := func(size int, df bool, wait time.Duration) (got int, err error, mtu int) {
		nerr := ns.WithNetNSPath(out, func(ns.NetNS) error {
			c, derr := net.DialTimeout("udp4", frontend, time.Second)
			if derr != nil {
				return derr
			}
			defer c.Close()
			raw, derr := c.(*net.UDPConn).SyscallConn()
			if derr != nil {
				return derr
			}
			pmtu := unix.IP_PMTUDISC_DO
			if !df {
				pmtu = unix.IP_PMTUDISC_DONT // and fragmented to the path MTU the route knows
			}
			raw.Control(func(fd uintptr) { derr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, pmtu) })
			if derr != nil {
				return derr
			}
			c.SetDeadline(time.Now().Add(wait))
			b := make([]byte, 8192)
			if _, err = c.Write(b[:size]); err == nil {
				got, err = c.Read(b)
			}
			raw.Control(func(fd uintptr) { mtu, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU) })
			return nil
		})
		if nerr != nil {
			t.Fatal(nerr)
		}
		return got, err, mtu
	}
	firstContact(t, l, "a first datagram through the NodePort", func() bool {
		got, err, _ := exchange(100, true, time.Second)
		return err == nil && got == 100
	})

	// The underlay's MTU (1,500) lets the client send 1,472 bytes; the
	// path through WireGuard does not.
	big := 1500 - 28
	if big+28 <= wgMTU {
		t.Fatalf("WireGuard's device on n1 has MTU %d: the test needs it below 1500", wgMTU)
	}
	// Without DF first (the client knows no smaller path MTU yet, so it
	// sends the datagram whole): the kernel would fragment it; the
	// datapath cannot, and drops it, reported.
	if got, err, _ := exchange(big, false, time.Second); err == nil {
		t.Errorf("a %d-byte datagram without DF: %d bytes came back through a path of MTU %d", big, got, wgMTU)
	}
	eventually(t, "n1's drop event for the datagram without DF", func() bool { return tooBig.get("172.30.0.50") == 1 })

	_, err, mtu := exchange(big, true, 3*time.Second)
	if !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("a %d-byte datagram with DF through the NodePort: %v; want EMSGSIZE (ICMP fragmentation needed from %s)", big, err, n1.IP)
	}
	if mtu != wgMTU {
		t.Errorf("the client's path MTU to %s after the ICMP: %d; want WireGuard's %d", n1.IP, mtu, wgMTU)
	}
	eventually(t, "n1's drop event for the datagram with DF", func() bool { return tooBig.get("172.30.0.50") == 2 })
	if got, err, _ := exchange(mtu-28, true, 3*time.Second); err != nil || got != mtu-28 {
		t.Errorf("a %d-byte datagram (the path MTU learned): %d bytes back, %v", mtu-28, got, err)
	}
	// Now the client's kernel cuts a datagram without DF to the path MTU
	// it learned: the fragments fit WireGuard's device, are translated
	// (the later ones followed by their first's ports), and so is the
	// echo, which comes back in fragments through WireGuard.
	if got, err, _ := exchange(4000, false, 3*time.Second); err != nil || got != 4000 {
		t.Errorf("a 4,000-byte datagram in fragments of the path MTU learned: %d bytes back, %v", got, err)
	}
}
