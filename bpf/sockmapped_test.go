package bpf

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// sockMappedEnv makes the test binary (TestMain) connect a dual-stack
// IPv6 TCP socket to the v4-mapped address of the frontend it names and
// print the peer address getpeername reports.
const sockMappedEnv = "FILAMENT_BPF_SOCK_MAPPED"

func sockMapped(frontend string) error {
	fe, err := netip.ParseAddrPort(frontend)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return err
	}
	tv := unix.Timeval{Sec: 3} // bounds the connect too
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(fe.Port()), Addr: netip.AddrFrom16(fe.Addr().As16()).As16()}); err != nil {
		return fmt.Errorf("connect [::ffff:%s]:%d: %w", fe.Addr(), fe.Port(), err)
	}
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return err
	}
	p := sa.(*unix.SockaddrInet6)
	fmt.Println(netip.AddrPortFrom(netip.AddrFrom16(p.Addr).Unmap(), uint16(p.Port)))
	return nil
}

// A dual-stack IPv6 socket (Java's default) connecting to a ClusterIP as
// its v4-mapped address is translated like an IPv4 one (connect6), and
// sees the service's address as its peer (getpeername6). Found 2026-12-06
// by reading the socket programs: only the IPv4 hooks were attached, and
// the kernel takes a v4-mapped connect down the IPv4 path without them,
// so such a socket connected to the bare frontend address and failed.
func TestMappedSocketTranslated(t *testing.T) {
	root := cgroup2Root(t)
	// A namespace of the test's own, which the child's connect cannot
	// leave: untranslated, the frontend address is unreachable there.
	inNetns(t)
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	vip := net.IPv4(10, 255, 77, 9).To4()
	f := load(t)
	be := closingListener(t)
	f.memberService(vip, 7780, 6, be)
	cg := f.podCgroup(root, map[ebpf.AttachType]*ebpf.Program{
		ebpf.AttachCGroupInet6Connect:     f.objs.SockConnect6,
		ebpf.AttachCgroupInet6GetPeername: f.objs.SockGetpeername6,
		ebpf.AttachCGroupInet4Connect:     f.objs.SockConnect4,
		ebpf.AttachCgroupInet4GetPeername: f.objs.SockGetpeername4,
	})
	out, err := inCgroup(cg, sockMappedEnv, fmt.Sprintf("%s:7780", vip)).CombinedOutput()
	if err != nil {
		t.Fatalf("the dual-stack client: %v: %s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), fmt.Sprintf("%s:7780", vip); got != want {
		t.Fatalf("the client's peer is %s, want the service's %s", got, want)
	}
}
