package lab_test

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// Native routing's pod traffic between nodes is forwarded by the programs
// (the FIB out, straight into the pod's namespace in), not by the nodes'
// IP forwarding: a TCP transfer between pods on n1 and n2 leaves both
// nodes' forwarded-datagram counters (/proc/net/snmp, Ip ForwDatagrams)
// where they were, and the server pod's ingress policy still decides on
// n2 (a port it does not allow is dropped there, reported). With
// --native-forwarding kernel the same transfer is forwarded by both
// nodes, which shows the counter does count it.
func TestNativeForwardingSkipsIPForwarding(t *testing.T) {
	const mib = 8
	forwarded := func(l *lab.Lab, node string) int {
		t.Helper()
		c, err := l.NodeCommand(node, "cat", "/proc/net/snmp")
		if err != nil {
			t.Fatal(err)
		}
		out, err := c.Output()
		if err != nil {
			t.Fatalf("%s: /proc/net/snmp: %v", node, err)
		}
		return snmpIP(t, out, "ForwDatagrams")
	}
	transfer := func(t *testing.T, forwarding string) (n1, n2 int) {
		l, srv := crossNodeIperf(t, "5201", "native", "--native-forwarding", forwarding)
		b1, b2 := forwarded(l, "n1"), forwarded(l, "n2")
		c, _ := l.PodCommand("client", "iperf3", "-c", srv.IP, "-p", "5201", "-n", strconv.Itoa(mib)+"M")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("iperf3 %d MiB: %v\n%s", mib, err, out)
		}
		n1, n2 = forwarded(l, "n1")-b1, forwarded(l, "n2")-b2
		t.Logf("%s forwarding: %d MiB from n1's pod to n2's: n1 forwarded %d datagrams, n2 %d", forwarding, mib, n1, n2)
		// Policy still decides on n2: port 5202 is not allowed.
		denied := make(chan struct{}, 1)
		labtest.Monitor(t, l, "n2", "drop", func(ev types.Event) {
			if ev.Reason == datapath.ReasonName(datapath.ReasonPolicyDenied) && ev.Dst.Port() == 5202 {
				select {
				case denied <- struct{}{}:
				default:
				}
			}
		})
		c, _ = l.PodCommand("client", "timeout", "3", "iperf3", "-c", srv.IP, "-p", "5202", "-n", "1K", "--connect-timeout", "1000")
		if err := c.Run(); err == nil {
			t.Fatalf("%s forwarding: a connection to port 5202, which n2's policy does not allow, was made", forwarding)
		}
		select {
		case <-denied:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s forwarding: n2 reported no policy drop of the connection to port 5202", forwarding)
		}
		return n1, n2
	}
	var k1, k2 int
	t.Run("kernel", func(t *testing.T) {
		k1, k2 = transfer(t, "kernel")
		// A TCP transfer of 8 MiB is far more than 100 packets each way,
		// however much GRO and GSO aggregate.
		if k1 < 100 || k2 < 100 {
			t.Fatalf("with the kernel's forwarding, n1 forwarded %d and n2 %d datagrams of an %d MiB transfer: the counter does not show it", k1, k2, mib)
		}
	})
	t.Run("bpf", func(t *testing.T) {
		n1, n2 := transfer(t, "bpf")
		if n1 != 0 || n2 != 0 {
			t.Fatalf("n1 forwarded %d and n2 %d datagrams of the transfer: the programs should have (the kernel's forwarding: %d and %d)", n1, n2, k1, k2)
		}
	})
}

// snmpIP reads field of the Ip lines of /proc/net/snmp (a header line of
// names, then one of values).
func snmpIP(t *testing.T, snmp []byte, field string) int {
	t.Helper()
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(snmp))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != "Ip:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == field && i < len(f) {
				v, err := strconv.Atoi(f[i])
				if err != nil {
					t.Fatalf("/proc/net/snmp Ip %s: %q", field, f[i])
				}
				return v
			}
		}
	}
	t.Fatalf("/proc/net/snmp has no Ip %s", field)
	return 0
}
