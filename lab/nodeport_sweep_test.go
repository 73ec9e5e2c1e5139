package lab_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/filament-net/filament/bpf"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// Node n1 holds a real TCP connection straight to a pod on n2 (native
// routing: from n1's own address). Another host of the underlay forges
// SYNs from n1's address and that connection's port to n2's NodePort,
// whose one backend is that pod. Before 2026-12-06 (found by reading) n2
// translated the forged SYN (a local backend keeps the client's address
// and port), and the pod's next packets on n1's connection left as the
// NodePort's: n1's kernel refused them and the connection was cut. Now no
// translation is made on the tuple of a live connection of the backend
// (TestNodePortSweepLeavesDirectConnectionsAlone is the programs' own
// test), and n1's connection goes on.
func TestNodePortSweepLeavesDirectConnectionsAlone(t *testing.T) {
	l := labtest.UpRouting(t, 2, "native")
	pod := labtest.Pod(t, l, "n2", "web", "app=web")
	// Echoes each line.
	labtest.Serve(t, lab.NetNSPath(pod.NetNS), 8080, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprint(c, line)
		}
	}, func(b []byte) []byte { return b })
	upsertNodePort(t, l, remoteNodePort("web", "10.96.0.21", "TCP", 80, 8080, 30082, pod.IP), "n2")
	n1, err := l.Node("n1")
	if err != nil {
		t.Fatal(err)
	}
	n2, err := l.Node("n2")
	if err != nil {
		t.Fatal(err)
	}
	forger := labtest.UnderlayHost(t, l, "forger", "172.30.0.51")
	var conn net.Conn
	if err := inNS(t, lab.NetNSPath(n1.NetNS), func() error {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(n1.IP)}}
		c, err := d.Dial("tcp4", net.JoinHostPort(pod.IP, "8080"))
		conn = c
		return err
	}); err != nil {
		t.Fatalf("n1's connection to the pod: %v\n%s", err, labtest.Describe(t, l))
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	echo := func(what, line string) error {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintln(conn, line); err != nil {
			return fmt.Errorf("%s: write: %w", what, err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != line+"\n" {
			return fmt.Errorf("%s: read %q, %v; want %q", what, got, err, line)
		}
		return nil
	}
	if err := echo("before", "one"); err != nil {
		t.Fatal(err)
	}
	// The forger sends from n1's address and the connection's port. It
	// neither answers ARP for n1's address nor announces it (n2 would send
	// it n1's packets: another attack).
	for _, argv := range [][]string{
		{"sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"},
		{"ip", "addr", "add", n1.IP + "/32", "dev", "lo"},
	} {
		if out, err := exec.Command("nsenter", append([]string{"--net=" + forger}, argv...)...).CombinedOutput(); err != nil {
			t.Fatalf("forger: %v: %v %s", argv, err, out)
		}
	}
	port := conn.LocalAddr().(*net.TCPAddr).Port
	var syns []*layers.TCP
	for i := range 3 {
		syns = append(syns, &layers.TCP{SrcPort: layers.TCPPort(port), DstPort: 30082, Seq: uint32(1000 + i), SYN: true, Window: 1000})
	}
	forgeTCP(t, forger, n1.IP, n2.IP, syns...)
	if err := echo("after the forged SYNs", "two"); err != nil {
		t.Errorf("n1's connection after forged SYNs on its tuple to n2's NodePort: %v (the pod's packets left as the NodePort's)", err)
	}
	// The forged SYNs reached n2's datapath and were refused there.
	eventually(t, "n2 counts the forged SYNs' drops", func() bool {
		return metric(t, l, "n2", "filament_drop_packets_total{", `reason="NodePort translation unavailable`) >= 3
	})

	// A real NodePort connection (from the forger's own address): its
	// entry in the pod's conntrack is flagged as the NodePort flow's
	// (CT_F_NODEPORT, from the mark from_netdev puts on the packets it
	// translates, through n2's stack), n1's direct one is not.
	np, err := labtest.Open(forger, n2.IP+":30082")
	if err != nil {
		t.Fatalf("a NodePort connection: %v", err)
	}
	defer np.Close()
	np.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(np, "three")
	if got, err := bufio.NewReader(np).ReadString('\n'); err != nil || got != "three\n" {
		t.Fatalf("the NodePort connection's echo: %q %v", got, err)
	}
	flags := map[string]uint8{}
	for _, m := range pinnedMaps(t, l, "n2", "conntrack") {
		var k bpf.DatapathCtKey
		var v bpf.DatapathCtEntry
		for it := m.Iterate(); it.Next(&k, &v); {
			var src [4]byte
			binary.NativeEndian.PutUint32(src[:], k.Saddr)
			if k.Proto == 6 && k.Dir == 1 {
				flags[net.IP(src[:]).String()] = v.Flags
			}
		}
	}
	const ctFNodePort = 128
	if f, ok := flags["172.30.0.51"]; !ok || f&ctFNodePort == 0 {
		t.Errorf("the NodePort connection's conntrack entry on n2: %v (flags %#x), want CT_F_NODEPORT", ok, f)
	}
	if f, ok := flags[n1.IP]; !ok || f&ctFNodePort != 0 {
		t.Errorf("n1's direct connection's conntrack entry on n2: %v (flags %#x), want no CT_F_NODEPORT", ok, f)
	}
}
