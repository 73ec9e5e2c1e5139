package lab_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/filament-net/filament/crypto/wireguard"
	"github.com/filament-net/filament/lab/labtest"
)

// wgStandalone is plain wireguard-go as its own process, with none of
// ours: a TUN (tun.CreateTUN, offloads as wireguard-go sets them), a device
// with the default bind, the UAPI socket, configured through wgctrl like
// the agent's device. spec is "name mtu port privkey peerpub endpoint
// allowed"; it prints "ready" and runs until stdin closes.
func wgStandalone(spec string) error {
	f := strings.Fields(spec)
	if len(f) != 7 {
		return fmt.Errorf("spec %q: want name mtu port key peer endpoint allowed", spec)
	}
	name := f[0]
	mtu, _ := strconv.Atoi(f[1])
	port, _ := strconv.Atoi(f[2])
	key, err := wgtypes.ParseKey(f[3])
	if err != nil {
		return err
	}
	peer, err := wgtypes.ParseKey(f[4])
	if err != nil {
		return err
	}
	ep, err := net.ResolveUDPAddr("udp4", f[5])
	if err != nil {
		return err
	}
	_, allowed, err := net.ParseCIDR(f[6])
	if err != nil {
		return err
	}
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return err
	}
	// Errors to stderr: stdout is read only up to "ready".
	logger := &device.Logger{Verbosef: device.DiscardLogf, Errorf: func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, name+": "+f+"\n", a...)
	}}
	dev := device.NewDevice(t, conn.NewDefaultBind(), logger)
	defer dev.Close()
	uf, err := ipc.UAPIOpen(name)
	if err != nil {
		return err
	}
	uapi, err := ipc.UAPIListen(name, uf)
	if err != nil {
		return err
	}
	defer uapi.Close()
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	if err := dev.Up(); err != nil {
		return err
	}
	wg, err := wgctrl.New()
	if err != nil {
		return err
	}
	defer wg.Close()
	if err := wg.ConfigureDevice(name, wgtypes.Config{PrivateKey: &key, ListenPort: &port, ReplacePeers: true,
		Peers: []wgtypes.PeerConfig{{PublicKey: peer, Endpoint: ep, AllowedIPs: []net.IPNet{*allowed}}}}); err != nil {
		return err
	}
	signal.Ignore(syscall.SIGINT)
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	return nil
}

// standaloneWG is a pair of namespaces set up like two lab nodes (eth0 on
// a bridge, MTU 1500), each running wgStandalone, with 10.98.0.1 and
// 10.98.0.2 on the tunnel; kernel says whether the kernel module made the
// devices instead.
type standaloneWG struct {
	ns     [2]string
	pids   []int // the wireguard-go processes (ip netns exec execs in place)
	kernel bool
}

// upStandaloneWG builds the namespaces and starts wireguard-go in each (or,
// with kernel, configures kernel WireGuard devices; it skips when the module
// is absent).
func upStandaloneWG(b *testing.B, prefix string, kernel bool) *standaloneWG {
	b.Helper()
	s := &standaloneWG{ns: [2]string{prefix + "-a", prefix + "-b"}, kernel: kernel}
	under := prefix + "-u"
	for _, n := range []string{under, s.ns[0], s.ns[1]} {
		labtest.NetNS(b, n)
	}
	ipRun := func(args ...string) {
		b.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			b.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	ipRun("-n", under, "link", "add", "br0", "type", "bridge")
	ipRun("-n", under, "link", "set", "br0", "up")
	keys := [2]wgtypes.Key{}
	for i, n := range s.ns {
		port := fmt.Sprintf("p%d", i)
		ipRun("-n", under, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", n)
		ipRun("-n", under, "link", "set", port, "master", "br0", "up")
		ipRun("-n", n, "addr", "add", fmt.Sprintf("172.31.250.%d/24", i+1), "dev", "eth0")
		ipRun("-n", n, "link", "set", "eth0", "up")
		ipRun("-n", n, "link", "set", "lo", "up")
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			b.Fatal(err)
		}
		keys[i] = k
	}
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	for i, n := range s.ns {
		// Names are unique on the machine: UAPI sockets share /var/run/wireguard.
		dev := fmt.Sprintf("%s%d", prefix, i)
		other := keys[1-i].PublicKey().String()
		ep := fmt.Sprintf("172.31.250.%d:51900", 2-i)
		allowed := fmt.Sprintf("10.98.0.%d/32", 2-i)
		if kernel {
			if out, err := exec.Command("ip", "-n", n, "link", "add", dev, "type", "wireguard").CombinedOutput(); err != nil {
				b.Skipf("no kernel WireGuard: %v %s", err, out)
			}
			kf := fmt.Sprintf("%s/key%d", b.TempDir(), i)
			if err := os.WriteFile(kf, []byte(keys[i].String()), 0o600); err != nil {
				b.Fatal(err)
			}
			if out, err := exec.Command("ip", "netns", "exec", n, "wg", "set", dev, "listen-port", "51900", "private-key", kf,
				"peer", other, "endpoint", ep, "allowed-ips", allowed).CombinedOutput(); err != nil {
				b.Fatalf("wg set: %v %s", err, out)
			}
			ipRun("-n", n, "link", "set", dev, "mtu", "1420")
		} else {
			cmd := exec.Command("ip", "netns", "exec", n, self)
			cmd.Env = append(os.Environ(), "FILAMENT_WG_STANDALONE="+strings.Join([]string{dev, "1420", "51900",
				keys[i].String(), other, ep, allowed}, " "))
			in, w, err := os.Pipe()
			if err != nil {
				b.Fatal(err)
			}
			cmd.Stdin, cmd.Stderr = in, os.Stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				b.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			in.Close()
			s.pids = append(s.pids, cmd.Process.Pid)
			b.Cleanup(func() { w.Close(); cmd.Wait() })
			line, _ := bufio.NewReader(out).ReadString('\n')
			if strings.TrimSpace(line) != "ready" {
				b.Fatalf("standalone wireguard-go in %s did not start: %q", n, line)
			}
		}
		ipRun("-n", n, "addr", "add", fmt.Sprintf("10.98.0.%d/24", i+1), "dev", dev)
		ipRun("-n", n, "link", "set", dev, "up")
	}
	return s
}

// BenchmarkWireGuardThroughput: one TCP stream for 3 s through WireGuard,
// in the same run: wireguard-go alone between two namespaces set up like
// lab nodes (the limit for the embedded path), the agents' embedded
// WireGuard (pod on n1 to pod on n2, strict), measured in alternating
// rounds, then the kernel module between the same namespaces (where it
// exists) and the plain VXLAN tunnel between pods as context.
func BenchmarkWireGuardThroughput(b *testing.B) {
	const rounds = 7
	b.Run("alternating", func(b *testing.B) {
		s := upStandaloneWG(b, "fwgs", false)
		srvA := exec.Command("ip", "netns", "exec", s.ns[1], "iperf3", "-s", "-p", "5201")
		srvA.Start()
		defer func() { srvA.Process.Kill(); srvA.Wait() }()

		l, srv := crossNodeIperf(b, "", "tunnel", "--encryption", "wireguard", "--encryption-strict")
		deadline := time.Now().Add(15 * time.Second)
		for exec.Command("ip", "netns", "exec", s.ns[0], "ping", "-c", "1", "-W", "1", "10.98.0.2").Run() != nil {
			if time.Now().After(deadline) {
				b.Fatal("standalone wireguard-go: no ping through the tunnel")
			}
		}
		// Both TUNs as wireguard-go made them (vnet_hdr: TSO/USO offloads).
		b.Logf("standalone: %s", tunFlags(b, s.ns[0], "fwgs0"))
		n1, _ := l.Node("n1")
		b.Logf("agent n1: %s", tunFlags(b, n1.NetNS, wireguard.DeviceName))
		n2, _ := l.Node("n2")
		// The agents and their children (the WireGuard device's own
		// process, where the agent runs it in one).
		agents := append([]int{n1.PID, n2.PID}, childPIDs(n1.PID, n2.PID)...)
		b.Logf("agent processes: %v", agents)
		// One stream through each, alternately, with the CPU time the two
		// WireGuard processes spent per Gbit/s-second moved (encryption,
		// decryption and the kernel work done in their system calls).
		stream := func(pids []int, c *exec.Cmd) wgRound {
			before := 0.0
			for _, p := range pids {
				before += cpuSeconds(b, p)
			}
			g := iperf(b, c)
			after := 0.0
			for _, p := range pids {
				after += cpuSeconds(b, p)
			}
			return wgRound{gbit: g, cpuPerGbit: (after - before) / (g * 3)}
		}
		// One short untimed stream through each first: handshakes done,
		// agents past their start-up work, buffers allocated.
		iperf(b, exec.Command("ip", "netns", "exec", s.ns[0], "iperf3", "-c", "10.98.0.2", "-p", "5201", "-t", "1", "-J"))
		warm, _ := l.PodCommand("client", "iperf3", "-c", srv.IP, "-p", "5201", "-t", "1", "-J")
		iperf(b, warm)
		// What each pair of processes spends with no stream at all (3 s):
		// the agents' own background work is part of their CPU per Gbit.
		idle := func(pids []int) float64 {
			before := 0.0
			for _, p := range pids {
				before += cpuSeconds(b, p)
			}
			time.Sleep(3 * time.Second)
			after := 0.0
			for _, p := range pids {
				after += cpuSeconds(b, p)
			}
			return (after - before) / 3
		}
		idleAlone, idleOurs := idle(s.pids), idle(agents)
		b.Logf("idle, CPU-s per s: standalone pair %.3f, agents %.3f", idleAlone, idleOurs)
		var alone, ours []wgRound
		for r := 0; r < rounds; r++ {
			alone = append(alone, stream(s.pids, exec.Command("ip", "netns", "exec", s.ns[0], "iperf3", "-c", "10.98.0.2", "-p", "5201", "-t", "3", "-J")))
			c, _ := l.PodCommand("client", "iperf3", "-c", srv.IP, "-p", "5201", "-t", "3", "-J")
			ours = append(ours, stream(agents, c))
			b.Logf("round %d: standalone wireguard-go %.2f Gbit/s (%.2f CPU-s per Gbit), agent's embedded %.2f Gbit/s (%.2f CPU-s per Gbit)",
				r+1, alone[r].gbit, alone[r].cpuPerGbit, ours[r].gbit, ours[r].cpuPerGbit)
		}
		ga, gu := median(alone, func(w wgRound) float64 { return w.gbit }), median(ours, func(w wgRound) float64 { return w.gbit })
		ca, cu := median(alone, func(w wgRound) float64 { return w.cpuPerGbit }), median(ours, func(w wgRound) float64 { return w.cpuPerGbit })
		b.ReportMetric(ga, "standalone-Gbit/s")
		b.ReportMetric(gu, "agent-Gbit/s")
		b.ReportMetric(100*gu/ga, "agent-%-of-standalone")
		b.ReportMetric(ca, "standalone-cpu-s/Gbit")
		b.ReportMetric(cu, "agent-cpu-s/Gbit")
		b.ReportMetric(idleAlone, "standalone-idle-cpu-s/s")
		b.ReportMetric(idleOurs, "agent-idle-cpu-s/s")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("kernel-wireguard", func(b *testing.B) {
		s := upStandaloneWG(b, "fwgk", true)
		srv := exec.Command("ip", "netns", "exec", s.ns[1], "iperf3", "-s", "-p", "5201")
		srv.Start()
		defer func() { srv.Process.Kill(); srv.Wait() }()
		time.Sleep(300 * time.Millisecond)
		g := iperf(b, exec.Command("ip", "netns", "exec", s.ns[0], "iperf3", "-c", "10.98.0.2", "-p", "5201", "-t", "3", "-J"))
		b.ReportMetric(g, "Gbit/s")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("context-plain-tunnel", func(b *testing.B) {
		l, srv := crossNodeIperf(b, "", "tunnel")
		c, _ := l.PodCommand("client", "iperf3", "-c", srv.IP, "-p", "5201", "-t", "3", "-J")
		b.ReportMetric(iperf(b, c), "Gbit/s")
		b.ReportMetric(0, "ns/op")
	})
}

// childPIDs are the processes whose parent is one of parents.
func childPIDs(parents ...int) []int {
	var out []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		for _, p := range parents {
			if ppid == p {
				out = append(out, pid)
			}
		}
	}
	return out
}

// tunFlags is the "tun type ..." line of ip -d link for dev in ns.
func tunFlags(b *testing.B, ns, dev string) string {
	out, err := exec.Command("ip", "-d", "-n", ns, "link", "show", dev).CombinedOutput()
	if err != nil {
		b.Fatalf("ip -d link show %s: %v %s", dev, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "tun ") {
			return line
		}
	}
	return strings.TrimSpace(string(out))
}

// wgRound is one stream's throughput and the CPU time the WireGuard
// processes spent per Gbit/s-second.
type wgRound struct{ gbit, cpuPerGbit float64 }

// median of f over rs (the mean of the middle two for an even count).
func median(rs []wgRound, f func(wgRound) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	sort.Float64s(v)
	if len(v) == 0 {
		return 0
	}
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}
