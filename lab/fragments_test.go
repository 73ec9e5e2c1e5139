package lab_test

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// bigEcho sends one UDP datagram of size bytes from the namespace at path
// to addr and returns how many bytes of the same came back within wait
// (0 for none).
func bigEcho(t testing.TB, path, addr string, size int, wait time.Duration) int {
	t.Helper()
	got := 0
	if err := inNS(t, path, func() error {
		c, err := net.DialTimeout("udp4", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(wait))
		out := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
		if _, err := c.Write(out); err != nil {
			return err
		}
		in := make([]byte, 64<<10)
		n, err := c.Read(in)
		if err == nil && bytes.Equal(in[:n], out) {
			got = n
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

const fragmentsPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: srv}
spec:
  endpointSelector: {matchLabels: {app: srv}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: UDP}]}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    icmps: [{fields: [{type: 8}]}]
  - fromEntities: [world, remote-node, host]
    toPorts: [{ports: [{port: "8080", protocol: UDP}]}]
`

// TestFragmentedDatagrams sends UDP datagrams and pings bigger than the
// MTU (their senders' kernels fragment them; the echoes come back in
// fragments too) between pods, on one node and across nodes, and from a
// host outside the cluster through a NodePort, in tunnel and native
// routing and through WireGuard (pods only). Where policy lets them
// through they must arrive whole; a pod the policy does not allow is
// refused, big or small. Before, every fragment after the first was
// dropped ("fragment not supported"), so no datagram bigger than the MTU
// ever arrived.
func TestFragmentedDatagrams(t *testing.T) {
	for _, v := range nodePortModes {
		t.Run(v.name, func(t *testing.T) { testFragmentedDatagrams(t, v.name, v.routing, v.args...) })
	}
}

func testFragmentedDatagrams(t *testing.T, mode, routing string, agentArgs ...string) {
	l := labtest.UpRouting(t, 2, routing, agentArgs...)
	srv := labtest.Pod(t, l, "n2", "srv", "app=srv")
	near := labtest.Pod(t, l, "n2", "near", "app=client")
	far := labtest.Pod(t, l, "n1", "far", "app=client")
	other := labtest.Pod(t, l, "n1", "other", "app=other")
	labtest.Serve(t, lab.NetNSPath(srv.NetNS), 8080, func(c net.Conn) { c.Close() }, func(b []byte) []byte { return b })
	labtest.ImportPolicy(t, l, "n1", fragmentsPolicy)
	upsertNodePort(t, l, remoteNodePort("srv", "10.96.0.22", "UDP", 80, 8080, 30083, srv.IP), "n1")
	n1, err := l.Node("n1")
	if err != nil {
		t.Fatal(err)
	}
	out := labtest.UnderlayHost(t, l, "out", "172.30.0.50")
	dst := srv.IP + ":8080"
	cases := []struct{ what, path, addr string }{
		{"a pod on the same node", lab.NetNSPath(near.NetNS), dst},
		{"a pod on another node", lab.NetNSPath(far.NetNS), dst},
		{"a host through n1's NodePort", out, n1.IP + ":30083"},
	}
	if mode == "wireguard" {
		// The host's fragments fill the underlay's MTU, which WireGuard's
		// device towards n2 does not take, and the datapath cannot cut
		// them smaller (TestNodePortTooBigForThePath): not this case.
		cases = cases[:2]
	}
	for _, c := range cases {
		firstContact(t, l, c.what+": a small datagram", func() bool { return bigEcho(t, c.path, c.addr, 100, time.Second) == 100 })
		for _, size := range []int{1600, 4000, 9000} {
			// One retry: UDP, on a busy machine.
			if got := bigEcho(t, c.path, c.addr, size, 2*time.Second); got != size {
				if got = bigEcho(t, c.path, c.addr, size, 2*time.Second); got != size {
					t.Errorf("%s, %s: a %d-byte datagram: %d bytes echoed, want all", mode, c.what, size, got)
				}
			}
		}
	}
	for _, p := range []*lab.Pod{near, far} {
		var b []byte
		for try := 0; try < 2; try++ { // one retry
			cmd, err := l.PodCommand(p.Name, "ping", "-c", "1", "-W", "2", "-s", "3000", srv.IP)
			if err != nil {
				t.Fatal(err)
			}
			if b, err = cmd.CombinedOutput(); err == nil {
				break
			} else if try == 1 {
				t.Errorf("%s: a 3,000-byte ping from %s: %v: %s", mode, p.Name, err, b)
			}
		}
	}
	for _, size := range []int{100, 4000} {
		if got := bigEcho(t, lab.NetNSPath(other.NetNS), dst, size, time.Second); got != 0 {
			t.Errorf("%s: a %d-byte datagram from a pod the policy does not allow: %d bytes echoed", mode, size, got)
		}
	}
}
