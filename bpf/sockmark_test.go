package bpf

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// sockMarkEnv makes the test binary (TestMain) set SO_MARK to the value it
// names (hex) on a TCP socket and print "set" or the error.
const sockMarkEnv = "FILAMENT_BPF_SOCK_MARK"

func sockMark(v string) error {
	mark, err := strconv.ParseUint(v, 16, 32)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		fmt.Println(err)
		return nil
	}
	fmt.Println("set")
	return nil
}

// A process of the node's namespace outside the agent's cgroup (a
// host-network pod's: Linux 5.17 and later let CAP_NET_RAW alone set a
// mark) cannot mark a socket with the datapath's marks: a connection
// marked as the proxy's upstream reached a pod's L7 port unjudged, as any
// identity the mark named (found 2026-12-07 by a review). Other marks
// are its own business; the agent's cgroup (its proxy's) may; a pod's
// namespace is not the node's (the veth clears its marks).
func TestSetsockoptRefusesDatapathMarks(t *testing.T) {
	root := cgroup2Root(t)
	inNetns(t)
	f := load(t)
	cg := f.podCgroup(root, map[ebpf.AttachType]*ebpf.Program{ebpf.AttachCGroupSetsockopt: f.objs.SockSetsockopt})
	var st syscall.Stat_t
	if err := syscall.Fstat(int(cg.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	cookie, host := netnsCookie(t), uint32(0)
	k := uint32(0)
	setup := func(nsValue uint32, proxyCgroup uint64) {
		if err := f.objs.LbNetns.Put(&cookie, &nsValue); err != nil {
			t.Fatal(err)
		}
		if err := f.objs.Config.Put(&k, &DatapathNodeConfig{ProxyCgroup: proxyCgroup}); err != nil {
			t.Fatal(err)
		}
	}
	try := func(mark uint32) string {
		out, err := inCgroup(cg, sockMarkEnv, fmt.Sprintf("%x", mark)).CombinedOutput()
		if err != nil {
			t.Fatalf("the child: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	setup(host, st.Ino+1) // the agent's cgroup is another
	for _, mark := range []uint32{0xFA000123, 0xFB000007, 0xFC000000} {
		if got := try(mark); got == "set" {
			t.Errorf("mark %#x set by a process outside the agent's cgroup", mark)
		}
	}
	if got := try(0x42); got != "set" {
		t.Errorf("mark 0x42: %s", got)
	}
	setup(host, st.Ino) // the agent's (and its proxy's) cgroup
	if got := try(0xFA000123); got != "set" {
		t.Errorf("the agent's cgroup: mark 0xFA000123: %s", got)
	}
	setup(ip4(podIP), st.Ino+1) // a pod's namespace
	if got := try(0xFA000123); got != "set" {
		t.Errorf("a pod's namespace: mark 0xFA000123: %s", got)
	}
}
