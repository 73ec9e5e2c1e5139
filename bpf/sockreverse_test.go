package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/filament-net/filament/internal/testutil"
)

// sockEchoEnv makes the test binary a UDP client (TestMain) that sends a
// datagram to a frontend and prints the source address of the answer, once
// for every line on its standard input, from one socket.
const sockEchoEnv = "FILAMENT_BPF_SOCK_ECHO"

func sockEcho(frontend string) error {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer pc.Close()
	to, err := net.ResolveUDPAddr("udp4", frontend)
	if err != nil {
		return err
	}
	in := bufio.NewScanner(os.Stdin)
	buf := make([]byte, 64)
	for in.Scan() {
		if _, err := pc.WriteTo([]byte("ping"), to); err != nil {
			return err
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		fmt.Println(from)
	}
	return in.Err()
}

// An unconnected UDP socket sees a backend's answers as the service's
// (recvmsg4) only while that backend is still one of the service's. The
// attack: a long-lived resolver socket that once reached a DNS service's
// backend kept taking datagrams from that address as the service's after
// the backend left, when its address could be another pod's. The child's
// socket asks twice; between the two, the backend stops being a member.
func TestSocketReverseOnlyForMembers(t *testing.T) {
	testutil.RequireRoot(t)
	root := cgroup2Root(t)
	vip := net.IPv4(10, 255, 77, 8).To4()
	f := load(t)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	be := netip.MustParseAddrPort(pc.LocalAddr().String())
	mk := f.memberService(vip, 7779, 17, be)
	cg := f.podCgroup(root, map[ebpf.AttachType]*ebpf.Program{
		ebpf.AttachCGroupUDP4Sendmsg: f.objs.SockSendmsg4,
		ebpf.AttachCGroupUDP4Recvmsg: f.objs.SockRecvmsg4,
	})
	cmd := inCgroup(cg, sockEchoEnv, fmt.Sprintf("%s:7779", vip))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Skipf("skipped: a process in a cgroup: %v", err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	answers := bufio.NewScanner(stdout)
	ask := func(what, want string) {
		t.Helper()
		fmt.Fprintln(stdin)
		if !answers.Scan() {
			var ee *exec.ExitError
			if err := cmd.Wait(); errors.As(err, &ee) {
				t.Fatalf("%s: the client stopped: %v", what, err)
			}
			t.Fatalf("%s: no answer", what)
		}
		if got := strings.TrimSpace(answers.Text()); got != want {
			t.Fatalf("%s: the answer came from %s, want %s", what, got, want)
		}
	}
	ask("the backend a member", fmt.Sprintf("%s:7779", vip))
	if err := f.objs.LbMembers.Delete(&mk); err != nil {
		t.Fatal(err)
	}
	ask("the backend no longer a member", be.String())
}

// memberService is service 1, frontend vip:port of proto, with backend be
// (backend 1) a member; it returns the member's key.
func (f *fixture) memberService(vip net.IP, port uint16, proto uint8, be netip.AddrPort) DatapathLbMemberKey {
	f.t.Helper()
	f.lbService(1, vip, port, proto, 0, be)
	mk := DatapathLbMemberKey{Id: 1, Backend: 1}
	a := be.Addr().As4()
	if err := f.objs.LbMembers.Put(&mk, &DatapathLbBackend{Ip: ip4(a[:]), Port: htons(be.Port()), Id: 1}); err != nil {
		f.t.Fatal(err)
	}
	return mk
}

// inCgroup is the test binary as a helper (TestMain: env=value) in cgroup
// cg.
func inCgroup(cg *os.File, env, value string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+value)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	return cmd
}
