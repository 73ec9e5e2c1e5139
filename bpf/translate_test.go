package bpf

import (
	"encoding/binary"
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
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/internal/testutil"
)

// Redirected connections and service translations on the events ring.

const (
	eventTranslated = 3 // EVENT_TRANSLATED
	eventFlagProxy  = 2 // EVENT_F_PROXY
	reasonNoBackend = 9
	reasonNoProxy   = 13
	lbFlagNodePort  = 2
	markUpstream    = 0xFA000000
)

// A new connection whose verdict sends it to the L7 proxy is reported
// with the proxy flag (whether the proxy then takes it or not: here none
// listens, and it is dropped after); one allowed without L7 rules, or the
// proxy's own upstream connection, is not. With off, neither is reported.
func TestFlowEventsRedirected(t *testing.T) {
	for _, m := range []struct {
		name string
		mode DatapathFlowEvents
	}{
		{"connections", DatapathFlowEventsFLOW_EVENTS_CONNECTIONS},
		{"off", DatapathFlowEventsFLOW_EVENTS_OFF},
	} {
		t.Run(m.name, func(t *testing.T) {
			f := load(t)
			f.setFlowEvents(m.mode)
			put := func(dir uint8, port uint16, proxy uint16) {
				k := DatapathPolicyKey{Prefixlen: 88, EpId: podEP, Dir: dir, Identity: peerID, Proto: 6, Port: [2]uint8{uint8(port >> 8), uint8(port)}}
				if err := f.objs.Policy.Put(&k, &DatapathPolicyValue{Flags: 1, ProxyPort: proxy}); err != nil {
					t.Fatal(err)
				}
			}
			put(dirEgress, 80, 1) // egress L7 to the peer's port 80 (proxy port 1: none listens)
			put(dirEgress, 81, 0) // plain L4 to port 81
			put(dirIngress, 80, 1)
			r, err := newRingReader(f.objs.Events)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if ret := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43000, 80, true, false)); ret != actShot {
				t.Fatalf("SYN to the proxy, none listening: %d", ret)
			}
			f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43001, 81, true, false))
			// The proxy's upstream (marked, speaking for the peer) to the
			// pod's L7 ingress: its own connection, not redirected.
			ret, err := f.objs.ToContainer.Run(&ebpf.RunOptions{
				Data: tcp(t, peerIP, podIP, 50000, 80, true, false), Context: &sysSkBuff{Mark: markUpstream | peerID},
			})
			if err != nil || ret != actOK {
				t.Fatalf("upstream SYN: %d %v", ret, err)
			}
			f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43002, 82, true, false)) // no rule: the marker
			evs := f.eventsUntil(r, reasonDenied)
			var got []string
			for _, ev := range evs {
				switch {
				case ev.Type == eventVerdict:
					got = append(got, fmt.Sprintf("verdict %d->%d proxy=%v", ev.Sport, ev.Dport, ev.Flags&eventFlagProxy != 0))
				case ev.Type == eventDrop:
					got = append(got, fmt.Sprintf("drop %d", ev.Reason))
				default:
					got = append(got, fmt.Sprintf("event %d", ev.Type))
				}
			}
			want := []string{"verdict 43000->80 proxy=true", "drop 13", "verdict 43001->81 proxy=false",
				"verdict 50000->80 proxy=false", "drop 1"}
			if m.mode == DatapathFlowEventsFLOW_EVENTS_OFF {
				want = []string{"drop 13", "drop 1"}
			}
			if strings.Join(got, "; ") != strings.Join(want, "; ") {
				t.Fatalf("events:\n got  %q\n want %q", got, want)
			}
		})
	}
}

// lbService adds a frontend with the given backends (slots 1..n).
func (f *fixture) lbService(id uint32, vip net.IP, port uint16, proto uint8, flags uint8, backends ...netip.AddrPort) {
	f.t.Helper()
	k := DatapathLbKey{Vip: ip4(vip), Port: htons(port), Proto: proto}
	if err := f.objs.LbServices.Put(&k, &DatapathLbService{Id: id, Count: uint16(len(backends)), Flags: flags}); err != nil {
		f.t.Fatal(err)
	}
	for i, b := range backends {
		a := b.Addr().As4()
		sk := DatapathLbSlotKey{Id: id, Slot: uint32(i + 1)}
		if err := f.objs.LbSlots.Put(&sk, &DatapathLbBackend{Ip: ip4(a[:]), Port: htons(b.Port()), Id: uint32(i + 1)}); err != nil {
			f.t.Fatal(err)
		}
	}
}

// A NodePort connection from the network translated at the underlay
// device is reported once, with its first packet (the client, the local
// backend, the frontend), at the backend's ingress; its later packets
// are not. With enforced, the backend pod enforcing ingress, it is too;
// with off it is not. A frontend without backends drops: the marker.
func TestTranslatedNodePort(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	for _, m := range []struct {
		name string
		mode DatapathFlowEvents
		want int
	}{
		{"connections", DatapathFlowEventsFLOW_EVENTS_CONNECTIONS, 1},
		{"enforced", DatapathFlowEventsFLOW_EVENTS_ENFORCED, 1},
		{"off", DatapathFlowEventsFLOW_EVENTS_OFF, 0},
	} {
		t.Run(m.name, func(t *testing.T) {
			f := load(t)
			f.setFlowEvents(m.mode)
			f.lbService(1, nodeIP, 30080, 6, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), 8080))
			f.lbService(2, nodeIP, 30081, 6, lbFlagNodePort)
			r, err := newRingReader(f.objs.Events)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if ret := f.run(f.objs.FromNetdev, tcp(t, peerIP, nodeIP, 51000, 30080, true, false)); ret != actOK {
				t.Fatalf("SYN to the NodePort: %d", ret)
			}
			for i := 0; i < 3; i++ {
				if ret := f.run(f.objs.FromNetdev, tcp(t, peerIP, nodeIP, 51000, 30080, false, true)); ret != actOK {
					t.Fatalf("segment %d: %d", i, ret)
				}
			}
			if ret := f.run(f.objs.FromNetdev, tcp(t, peerIP, nodeIP, 51001, 30081, true, false)); ret != actShot {
				t.Fatalf("SYN to a frontend without backends: %d", ret)
			}
			evs := f.eventsUntil(r, reasonNoBackend)
			n := 0
			for _, ev := range evs[:len(evs)-1] {
				if ev.Type != eventTranslated {
					t.Fatalf("unexpected event %+v", ev)
				}
				n++
				// The frontend is in the place of the interface and length.
				if ev.Saddr != ip4(peerIP) || ev.Sport != 51000 || ev.Daddr != ip4(podIP) || ev.Dport != 8080 ||
					ev.Ifindex != ip4(nodeIP) || ev.Len != 30080 || ev.Proto != 6 {
					t.Errorf("translation %+v: want the client to the backend, frontend %s:30080", ev, nodeIP)
				}
				if ev.Dir != dirIngress || ev.EpId != podEP || ev.SrcIdentity != peerID || ev.DstIdentity != podID || ev.Reason != reasonForwarded {
					t.Errorf("translation %+v: want the backend pod's ingress, identities %#x -> %#x", ev, peerID, podID)
				}
			}
			if n != m.want {
				t.Fatalf("%d translation events, want %d", n, m.want)
			}
		})
	}
}

// sockHelperEnv makes the test binary a client (TestMain): it connects to
// a TCP frontend twice and sends three datagrams to a UDP frontend from
// one socket, inside the cgroup the socket programs are attached to.
const sockHelperEnv = "FILAMENT_BPF_SOCK_CLIENT"

func TestMain(m *testing.M) {
	if v := os.Getenv(sockEchoEnv); v != "" {
		if err := sockEcho(v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if v := os.Getenv(sockMappedEnv); v != "" {
		if err := sockMapped(v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if v := os.Getenv(sockPeerEnv); v != "" {
		if err := sockPeer(v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if v := os.Getenv(sockHelperEnv); v != "" {
		if err := sockClient(v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// sockClient: v is "TCP-FRONTEND UDP-FRONTEND".
func sockClient(v string) error {
	tcpFE, udpFE, _ := strings.Cut(v, " ")
	for range 2 {
		c, err := net.DialTimeout("tcp4", tcpFE, 5*time.Second)
		if err != nil {
			return err
		}
		c.Close()
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer pc.Close()
	to, err := net.ResolveUDPAddr("udp4", udpFE)
	if err != nil {
		return err
	}
	for range 3 {
		if _, err := pc.WriteTo([]byte("x"), to); err != nil {
			return err
		}
	}
	return nil
}

// netnsCookie is the cookie of the caller's network namespace.
func netnsCookie(t *testing.T) uint64 {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		t.Skipf("skipped: SO_NETNS_COOKIE: %v", err)
	}
	return c
}

// podCgroup registers the test's network namespace as the pod's (lb_netns)
// and returns a new cgroup under root with progs attached by type, for a
// child process to run in; all are removed when the test ends.
func (f *fixture) podCgroup(root string, progs map[ebpf.AttachType]*ebpf.Program) *os.File {
	t := f.t
	t.Helper()
	cookie := netnsCookie(t)
	pod := ip4(podIP) // the namespace is the pod's
	if err := f.objs.LbNetns.Put(&cookie, &pod); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(root, "filament-bpftest-")
	if err != nil {
		t.Skipf("skipped: a cgroup under %s: %v", root, err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	for typ, prog := range progs {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: typ, Program: prog})
		if err != nil {
			t.Fatalf("attach to %s: %v", dir, err)
		}
		t.Cleanup(func() { l.Close() })
	}
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cg.Close() })
	return cg
}

// cgroup2Root is where the cgroup v2 hierarchy is mounted.
func cgroup2Root(t *testing.T) string {
	t.Helper()
	data, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	t.Skip("skipped: no cgroup v2 hierarchy mounted")
	return ""
}

// A socket's connect to a service frontend, and an unconnected UDP
// socket's first datagram to it, are reported once each as the client
// pod's egress (its address and endpoint from the namespace's lb_netns
// entry; the port is not known yet) to the backend, with the frontend;
// the UDP socket's next datagrams to the same backend are not. With off,
// nothing is. The programs run for a child process in a cgroup of the
// test's own, attached there only.
func TestTranslatedSocket(t *testing.T) {
	testutil.RequireRoot(t)
	root := cgroup2Root(t)
	vip := net.IPv4(10, 255, 77, 7).To4() // an address no route or other test uses
	for _, m := range []struct {
		name string
		mode DatapathFlowEvents
		want int
	}{
		{"connections", DatapathFlowEventsFLOW_EVENTS_CONNECTIONS, 3},
		{"off", DatapathFlowEventsFLOW_EVENTS_OFF, 0},
	} {
		t.Run(m.name, func(t *testing.T) {
			f := load(t)
			f.setFlowEvents(m.mode)
			tcpBE := closingListener(t)
			pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			udpBE := netip.MustParseAddrPort(pc.LocalAddr().String())
			f.lbService(1, vip, 7777, 6, 0, tcpBE)
			f.lbService(2, vip, 7778, 17, 0, udpBE)
			cg := f.podCgroup(root, map[ebpf.AttachType]*ebpf.Program{
				ebpf.AttachCGroupInet4Connect: f.objs.SockConnect4,
				ebpf.AttachCGroupUDP4Sendmsg:  f.objs.SockSendmsg4,
			})
			r, err := newRingReader(f.objs.Events)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s:7777 %s:7778", sockHelperEnv, vip, vip))
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
			if out, err := cmd.CombinedOutput(); err != nil {
				var ee *exec.ExitError
				if !errors.As(err, &ee) {
					t.Skipf("skipped: a process in a cgroup: %v", err)
				}
				t.Fatalf("client: %v\n%s", err, out)
			}
			// The UDP backend got the datagrams: translated every time.
			pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 16)
			for i := 0; i < 3; i++ {
				if _, _, err := pc.ReadFrom(buf); err != nil {
					t.Fatalf("datagram %d at the backend: %v", i, err)
				}
			}
			f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43002, 82, true, false)) // no rule: the marker
			evs := f.eventsUntil(r, reasonDenied)
			var tcpN, udpN int
			for _, ev := range evs[:len(evs)-1] {
				if ev.Type != eventTranslated {
					t.Fatalf("unexpected event %+v", ev)
				}
				be, fe := tcpBE, uint32(7777)
				if ev.Proto == 17 {
					be, fe = udpBE, 7778
					udpN++
				} else {
					tcpN++
				}
				a := be.Addr().As4()
				if ev.Daddr != ip4(a[:]) || ev.Dport != be.Port() || ev.Ifindex != ip4(vip) || ev.Len != fe {
					t.Errorf("translation %+v: want to %s, frontend %s:%d", ev, be, vip, fe)
				}
				if ev.Saddr != ip4(podIP) || ev.Sport != 0 || ev.EpId != podEP || ev.SrcIdentity != podID || ev.Dir != dirEgress {
					t.Errorf("translation %+v: want the pod's egress (its address, no port yet)", ev)
				}
			}
			if tcpN+udpN != m.want || (m.want > 0 && (tcpN != 2 || udpN != 1)) {
				t.Fatalf("%d TCP and %d UDP translation events, want %d in all (2 connects, 1 UDP socket)", tcpN, udpN, m.want)
			}
		})
	}
}

// source returns the IPv4 source address and port of an Ethernet frame
// carrying TCP or UDP.
func source(t *testing.T, frame []byte) (net.IP, uint16) {
	t.Helper()
	ihl := int(frame[14]&0x0f) * 4
	return net.IP(frame[14+12 : 14+16]), binary.BigEndian.Uint16(frame[14+ihl:])
}

// A local backend's reply on a NodePort flow leaves from_container as the
// frontend (lb_reverse); a SYN the pod opens on the same tuple answers no
// client and leaves untranslated (new connections skip lb_reverse).
func TestNodePortReplyTranslatedSYNNot(t *testing.T) {
	f := load(t)
	f.unenforce()
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	f.lbService(1, nodeIP, 30080, 6, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), 8080))
	if ret := f.run(f.objs.FromNetdev, tcp(t, peerIP, nodeIP, 51000, 30080, true, false)); ret != actOK {
		t.Fatalf("SYN to the NodePort: %d", ret)
	}
	if ret := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 51000, 8080, true, false)); ret != actOK {
		t.Fatalf("translated SYN into the pod: %d", ret)
	}
	// The verdict depends on the test run's FIB (lb_out); the rewrite is
	// in the packet either way.
	_, out := f.runOut(f.objs.FromContainer, tcp(t, podIP, peerIP, 8080, 51000, true, true))
	if src, port := source(t, out); !src.Equal(nodeIP) || port != 30080 {
		t.Fatalf("backend's SYN-ACK left from %s:%d, want the frontend %s:30080", src, port, nodeIP)
	}
	ret, out := f.runOut(f.objs.FromContainer, tcp(t, podIP, peerIP, 8080, 51000, true, false))
	if src, port := source(t, out); ret != actOK || !src.Equal(podIP) || port != 8080 {
		t.Fatalf("pod's SYN: verdict %d, left from %s:%d, want %s:8080 untranslated", ret, src, port, podIP)
	}
}

// closingListener is a TCP listener on loopback that accepts and closes
// every connection until the test ends; it returns its address.
func closingListener(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}
