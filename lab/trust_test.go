package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/service/maglev"

	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/internal/attack"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// dials reports whether a TCP connection from the namespace at path to
// ip:port is accepted (nothing is exchanged).
func dials(t testing.TB, path, ip string, port int) bool {
	t.Helper()
	ok := false
	inNS(t, path, func() error {
		c, err := net.DialTimeout("tcp4", net.JoinHostPort(ip, strconv.Itoa(port)), 1500*time.Millisecond)
		if err == nil {
			ok = true
			c.Close()
		}
		return nil
	})
	return ok
}

// nodeReachable says whether the agent of on sees node name alive
// (failure detection), as `filament node list` shows it.
func nodeReachable(t testing.TB, on *lab.Node, name string) bool {
	t.Helper()
	nodes, err := client.New(on.Socket).Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == name {
			return n.Reachable
		}
	}
	return false
}

// pingWithin retries a ping until it answers or the time is up.
func pingWithin(t testing.TB, l *lab.Lab, pod, ip string, within time.Duration) error {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := labtest.Ping(t, l, pod, ip)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

const gossipPortPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: gossip-allowed}
spec:
  endpointSelector: {matchLabels: {app: prober}}
  egress:
  - toEntities: [host]
    toPorts: [{ports: [{port: "7946", protocol: TCP}]}]
`

// A pod cannot cut its node off from another node with forged gossip: the
// node's control ports (gossip here) are closed to pods by the datapath,
// and gossip is sealed with the cluster's key anyway. Issue 13, item 1.
func TestForgedGossipFromPod(t *testing.T) {
	l := labtest.UpRouting(t, 2, "tunnel")
	a := labtest.Pod(t, l, "n1", "attacker", "app=attacker")
	b := labtest.Pod(t, l, "n2", "target", "app=target")
	n1, _ := l.Node("n1")
	n2, _ := l.Node("n2")
	if err := pingWithin(t, l, "attacker", b.IP, 10*time.Second); err != nil {
		t.Fatalf("before the attack: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !nodeReachable(t, n1, "n2") {
		if time.Now().After(deadline) {
			t.Fatal("n1 never saw n2 reachable")
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The gossip port of both nodes is closed to the pod (TCP), while
	// another port of the node stays open to it.
	podNS := lab.NetNSPath(a.NetNS)
	for _, n := range []*lab.Node{n1, n2} {
		if dials(t, podNS, n.IP, 7946) {
			t.Errorf("pod reaches the gossip port of %s (%s:7946)", n.Name, n.IP)
		}
	}
	serve(t, lab.NetNSPath(n1.NetNS), 7000)
	if !reach(t, podNS, "tcp", n1.IP, 7000) {
		t.Error("pod cannot reach an ordinary port of its node: the check cannot tell ports apart")
	}
	// So are the node's other addresses (a second interface's, a bridge's
	// such as docker0): their identity is the world, yet a listener on a
	// control port there is the node's. Before 2026-12-05 the pod reached
	// it (an external kvstore on the host network listens on every
	// address).
	const second = "198.18.7.1"
	if out, err := exec.Command("ip", "-n", n1.NetNS, "addr", "add", second+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
	defer acceptOn(t, lab.NetNSPath(n1.NetNS), net.JoinHostPort(second, "7946")).Close()
	if dials(t, podNS, second, 7946) {
		t.Errorf("pod reaches a control port (7946) on another address of its node (%s)", second)
	}
	if !reach(t, podNS, "tcp", second, 7000) {
		t.Errorf("pod cannot reach an ordinary port on another address of its node (%s:7000)", second)
	}
	// And its broadcast and multicast addresses: a socket on every
	// address of the node (0.0.0.0: the VXLAN device's on 8472, here
	// one on the Hubble port's number, which is TCP at the node's
	// address) gets a pod's datagram to 255.255.255.255 or 224.0.0.1
	// (all hosts), whatever route the FIB has for them: here a default
	// route, as real nodes have (with none the lookup finds no route,
	// which counts as local). Before 2026-12-05 the FIB check passed them.
	if out, err := exec.Command("ip", "-n", n1.NetNS, "route", "add", "default", "via", n2.IP).CombinedOutput(); err != nil {
		t.Fatalf("ip route add default: %v: %s", err, out)
	}
	defer exec.Command("ip", "-n", n1.NetNS, "route", "del", "default").Run()
	for _, dst := range []string{"255.255.255.255", "224.0.0.1"} {
		if datagramReaches(t, n1, podNS, dst, lab.HubblePort) {
			t.Errorf("pod's datagram to %s:%d (a control port) reached a socket of its node", dst, lab.HubblePort)
		}
		if !datagramReaches(t, n1, podNS, dst, 7001) {
			t.Errorf("pod's datagram to %s:7001 did not reach its node: the check cannot tell ports apart", dst)
		}
	}

	// And another node's other addresses: n1 routes 198.18.7.2, an
	// address of n2's loopback, to n2 (its default route), where a
	// listener on a control port is n2's. n2 lists the address in its
	// record and n1 closes the port there; before 2026-12-05 the pod
	// reached it (only a node's underlay address was known).
	const otherSecond = "198.18.7.2"
	if out, err := exec.Command("ip", "-n", n2.NetNS, "addr", "add", otherSecond+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
	defer acceptOn(t, lab.NetNSPath(n2.NetNS), net.JoinHostPort(otherSecond, "7946")).Close()
	serve(t, lab.NetNSPath(n2.NetNS), 7000)
	if !reach(t, podNS, "tcp", otherSecond, 7000) {
		t.Fatalf("pod cannot reach an ordinary port on another address of n2 (%s:7000): the route the attack needs is missing", otherSecond)
	}
	deadline = time.Now().Add(10 * time.Second)
	for dials(t, podNS, otherSecond, 7946) {
		if time.Now().After(deadline) {
			t.Errorf("pod reaches a control port (7946) on another address of another node (n2's %s)", otherSecond)
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if !reach(t, podNS, "tcp", otherSecond, 7000) {
		t.Errorf("pod cannot reach an ordinary port on another address of n2 (%s:7000) after n1 learned it", otherSecond)
	}

	// Five forged deaths of n2, the last at the highest incarnation, to
	// both nodes.
	var forged [][]byte
	for _, inc := range []uint32{1, 2, 100, 1 << 20, 0xFFFFFFFF} {
		forged = append(forged, attack.GossipDead("n2", "n1", inc))
	}
	inNS(t, podNS, func() error {
		for _, n := range []*lab.Node{n1, n2} {
			if err := attack.SendUDP(net.JoinHostPort(n.IP, "7946"), forged...); err != nil {
				t.Errorf("send forged gossip: %v", err)
			}
		}
		return nil
	})
	time.Sleep(3 * time.Second) // many probe and gossip rounds
	if !nodeReachable(t, n1, "n2") {
		t.Error("n1 lists n2 as unreachable after forged gossip from a pod")
	}
	if err := pingWithin(t, l, "attacker", b.IP, 5*time.Second); err != nil {
		t.Errorf("after the attack: %v", err)
	}

	// A policy naming the port opens it for the pods it selects.
	prober := labtest.Pod(t, l, "n1", "prober", "app=prober")
	labtest.ImportPolicy(t, l, "n1", gossipPortPolicy)
	deadline = time.Now().Add(10 * time.Second)
	for !dials(t, lab.NetNSPath(prober.NetNS), n1.IP, 7946) {
		if time.Now().After(deadline) {
			t.Fatal("a policy allowing host:7946/TCP does not open the gossip port")
		}
		time.Sleep(300 * time.Millisecond)
	}
	if dials(t, podNS, n1.IP, 7946) {
		t.Error("the policy for app=prober opened the gossip port to another pod")
	}
}

// acceptOn listens on TCP addr in the namespace at path and accepts (and
// closes) every connection until the listener is closed.
func acceptOn(t *testing.T, path, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := inNS(t, path, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln
}

// datagramReaches tells whether a UDP datagram sent from the pod's
// namespace to dst:port (broadcast allowed) reaches a socket on 0.0.0.0
// of that port in node's namespace.
func datagramReaches(t *testing.T, node *lab.Node, podNS, dst string, port int) bool {
	t.Helper()
	var pc net.PacketConn
	if err := inNS(t, lab.NetNSPath(node.NetNS), func() (err error) {
		pc, err = net.ListenPacket("udp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(port)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	msg := "probe " + dst
	if err := inNS(t, podNS, func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
			}); err != nil {
				return err
			}
			return serr
		}}
		s, err := lc.ListenPacket(context.Background(), "udp4", ":0")
		if err != nil {
			return err
		}
		defer s.Close()
		for range 3 {
			if _, err := s.WriteTo([]byte(msg), &net.UDPAddr{IP: net.ParseIP(dst), Port: port}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("send to %s:%d: %v", dst, port, err)
	}
	pc.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	buf := make([]byte, 64)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return false
		}
		if string(buf[:n]) == msg {
			return true
		}
	}
}

// A service cannot take the node's control plane away: a frontend on the
// kvstore's address is refused, and a stale one left in the pinned maps
// (as an agent before this check could write) neither redirects the
// agent's kvstore connection at restart nor survives the reconcile.
// Issue 13, item 6.
func TestServiceCannotTakeControlPlane(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	kvIP := strings.TrimSuffix(strings.TrimPrefix(l.Clusters[0].Kvstore, "https://"), ":2379")
	doc := fmt.Sprintf(`metadata: {name: hijack}
spec:
  clusterIP: %s
  ports: [{port: 2379}]
backends: [{ip: %s}]
`, kvIP, web.IP)
	out, err := labtest.UpsertService(t, l, "n1", doc)
	if err == nil || !strings.Contains(out, "spec.clusterIP "+kvIP) || !strings.Contains(out, "kvstore") {
		t.Fatalf("service on the kvstore address: err %v, output %q; want a refusal naming spec.clusterIP", err, out)
	}
	for _, bad := range []string{"127.0.0.1", "169.254.169.254", "224.0.0.1"} {
		out, err := labtest.UpsertService(t, l, "n1", strings.Replace(doc, "clusterIP: "+kvIP, "clusterIP: "+bad, 1))
		if err == nil || !strings.Contains(out, "spec.clusterIP "+bad) {
			t.Errorf("clusterIP %s: err %v, output %q; want a refusal naming it", bad, err, out)
		}
	}

	// The stale entry: written into n1's pinned maps while its agent is down.
	if err := l.StopAgent("n1"); err != nil {
		t.Fatal(err)
	}
	pin := labtest.PinDir(l, "n1")
	root := strings.TrimSuffix(pin, "/filament/default/n1")
	dp, err := datapath.Load(datapath.Config{BPFRoot: root, Cluster: "default", Node: "n1", MaglevSize: maglev.DefaultSize})
	if err != nil {
		t.Fatal(err)
	}
	fe := datapath.Frontend{IP: netip.MustParseAddr(kvIP), Port: 2379, Proto: unix.IPPROTO_TCP}
	if err := dp.UpsertService(fe, datapath.LBService{Backends: []datapath.LBBackend{{IP: netip.MustParseAddr(web.IP), Port: 2379}}}); err != nil {
		t.Fatal(err)
	}
	dp.Close()
	// The agent starts (its kvstore connection is not translated) and
	// removes the frontend no stored service has.
	if err := l.StartAgent(context.Background(), "n1"); err != nil {
		t.Fatalf("agent did not come back with a stale frontend on the kvstore address: %v", err)
	}
	dp, err = datapath.Load(datapath.Config{BPFRoot: root, Cluster: "default", Node: "n1", MaglevSize: maglev.DefaultSize})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	deadline := time.Now().Add(10 * time.Second)
	for slices.Contains(dp.Frontends(), fe) {
		if time.Now().After(deadline) {
			t.Fatal("the stale frontend on the kvstore address is still in the datapath")
		}
		time.Sleep(200 * time.Millisecond)
		dp.Close()
		if dp, err = datapath.Load(datapath.Config{BPFRoot: root, Cluster: "default", Node: "n1", MaglevSize: maglev.DefaultSize}); err != nil {
			t.Fatal(err)
		}
	}
}

// kvstoreWrite writes kvs (key -> JSON value) to the lab's first cluster's
// kvstore with the agent credentials, from network namespace netns: what a
// compromised node (or anyone with those credentials) can write.
func kvstoreWrite(t *testing.T, l *lab.Lab, netns string, kvs map[string]any) {
	t.Helper()
	raw := map[string]json.RawMessage{}
	for k, v := range kvs {
		b, _ := json.Marshal(v)
		raw[k] = b
	}
	data, _ := json.Marshal(raw)
	c := l.Clusters[0]
	put := exec.Command("ip", "netns", "exec", netns, os.Args[0])
	put.Env = append(os.Environ(), "FILAMENT_KV_PUT="+string(data), "FILAMENT_SIM_ETCD="+c.Kvstore, "FILAMENT_SIM_BUNDLE="+c.Bundle)
	if out, err := put.CombinedOutput(); err != nil {
		t.Fatalf("kvstore writes: %v %s", err, out)
	}
}

// kvstoreRead reads key from the cluster's kvstore with the agents'
// credentials, from namespace netns ("" when absent).
func kvstoreRead(t *testing.T, l *lab.Lab, netns, key string) string {
	t.Helper()
	c := l.Clusters[0]
	get := exec.Command("ip", "netns", "exec", netns, os.Args[0])
	get.Env = append(os.Environ(), "FILAMENT_KV_GET="+key, "FILAMENT_SIM_ETCD="+c.Kvstore, "FILAMENT_SIM_BUNDLE="+c.Bundle)
	out, err := get.Output()
	if err != nil {
		t.Fatalf("kvstore read %s: %v", key, err)
	}
	return string(out)
}

// Records a hostile kvstore writer makes cannot crash the agents (an
// ipcache entry without an address, or with an IPv6 one, and a node record
// with an IPv6 address did) nor claim an identity for an address outside
// the claiming node's pod CIDRs; an honest entry still lands.
func TestHostileKvstoreRecords(t *testing.T) {
	l := labtest.UpRouting(t, 2, "tunnel")
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	labtest.Pod(t, l, "n2", "other", "app=other")
	var webID uint32
	for _, ep := range labtest.Endpoints(t, l, "n1") {
		if ep.IPv4.String() == web.IP {
			webID = uint32(ep.Identity)
		}
	}
	n2, _ := l.Node("n2")
	inN2 := labtest.PodAddr(t, l, "n2", 200)
	const outside = "10.244.200.5"
	p := "filament/state/ip/v1/default/"
	kvstoreWrite(t, l, n2.NetNS, map[string]any{
		p + "10.244.1.77":                      map[string]any{"identity": webID, "node": "n2"},
		p + "fd00::5":                          map[string]any{"ip": "fd00::5", "identity": webID, "node": "n2"},
		p + outside:                            map[string]any{"ip": outside, "identity": webID, "hostIP": n2.IP, "node": "n2"},
		p + inN2:                               map[string]any{"ip": inN2, "identity": webID, "hostIP": n2.IP, "node": "n2"},
		"filament/state/nodes/v1/default/evil": map[string]any{"name": "evil", "cluster": "default", "ips": []string{"fd00::1"}},
	})
	m, err := ebpfLoadPinned(filepath.Join(labtest.PinDir(l, "n1"), "ipcache"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !ipcHas(m, inN2, 32) {
		if time.Now().After(deadline) {
			t.Fatal("n1 never installed the honest entry inside n2's pod CIDR")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if ipcHas(m, outside, 32) {
		t.Errorf("n1 installed %s, outside n2's pod CIDR, with web's identity", outside)
	}
	time.Sleep(time.Second) // every record has been through the watches
	for _, name := range []string{"n1", "n2"} {
		n, _ := l.Node(name)
		if _, err := client.New(n.Socket).Status(context.Background()); err != nil {
			t.Errorf("agent of %s after the hostile records: %v", name, err)
		}
	}
}

// The cluster's gossip key rotates (add, use, drop with the CLI, the lab's
// nodes sharing the bundle file) while the nodes keep seeing each other.
func TestGossipKeyRotationInLab(t *testing.T) {
	l := labtest.UpRouting(t, 2, "tunnel")
	n1, _ := l.Node("n1")
	n2, _ := l.Node("n2")
	both := func(what string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !nodeReachable(t, n1, "n2") || !nodeReachable(t, n2, "n1") {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the nodes do not see each other", what)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	both("before the rotation")
	keyFile := filepath.Join(l.Clusters[0].Bundle, "gossip.key")
	before, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	changes := func(n *lab.Node) int {
		log, _ := os.ReadFile(n.LogFile)
		return strings.Count(string(log), "gossip keys changed")
	}
	for i, step := range []string{"add", "use", "drop"} {
		if out, err := labtest.NodeRun(t, l, "n1", "filament", "clustermesh", "rotate-gossip-key", "--step", step); err != nil {
			t.Fatalf("rotate-gossip-key --step %s: %v %s", step, err, out)
		}
		// Agents re-read the file every 3 s: each step applied by both
		// before the next (two steps within one tick would be one change).
		eventually(t, "both agents apply step "+step, func() bool { return changes(n1) >= i+1 && changes(n2) >= i+1 })
		both("after step " + step)
	}
	after, _ := os.ReadFile(keyFile)
	if string(after) == string(before) || strings.Count(string(after), "\n") != 1 {
		t.Fatalf("key file after the rotation: %q (before %q)", after, before)
	}
	for _, n := range []*lab.Node{n1, n2} {
		if c := changes(n); c != 3 {
			t.Errorf("agent of %s applied %d key changes, want 3", n.Name, c)
		}
	}
}
