package lab_test

import (
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// A new connection that reuses the 4-tuple of one that just closed (its
// conntrack entry still in its 10 s closing state) is judged by the
// policy of now: after the allow is withdrawn, the same client port gets
// nothing. Before the fix the SYN found the old entry and went through.
func TestPortReuseAfterPolicyChange(t *testing.T) {
	l := labtest.Up(t, 1, 0)
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	labtest.Pod(t, l, "n1", "client", "app=client")
	serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
	allow := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: %s}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`
	labtest.ImportPolicy(t, l, "n1", fmt.Sprintf(allow, "client"))
	url := "http://" + web.IP + "/"
	// The server closes first (Connection: close), so the client's side
	// of the tuple is free again at once.
	req := []string{"--local-port", "40123", "-H", "Connection: close", url}
	eventually(t, "client reaches web", func() bool { return curlCodes(t, l, "client", req...) == "200" })
	labtest.ImportPolicy(t, l, "n1", fmt.Sprintf(allow, "nobody"))
	if got := curlCodes(t, l, "client", append([]string{"--connect-timeout", "2"}, req...)...); got != "000" {
		t.Fatalf("a new connection on the closed one's tuple after the allow went: %q, want no connection (000)", got)
	}
}

// A policy change reaches an established connection from another node
// that the kernel routes to the pod (to_container's fast path, which
// passes its packets after one conntrack lookup while the datapath
// revision is the one their policy was checked at): native routing, and
// native routing through WireGuard (from_wireguard on the way). The
// server's ingress allow goes (re-imported for another client); the
// stream, flowing before, delivers nothing more. Besides the TCP stream
// (whose ACKs from_container re-checks too), a one-way UDP flow, whose
// packets only to_container judges on the server's node. (The test
// bounds the time only loosely: without the revision check, the slow
// path's refresh every 100 jiffies would stop the flows too, a little
// later; the BPF tests, TestToContainerFastPath, pin the check itself.)
func TestPolicyChangeStopsEstablishedStream(t *testing.T) {
	for _, tc := range []routingMode{
		{"native", "native", nil},
		{"native+wireguard", "native", wireguardStrict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := labtest.UpRouting(t, 2, tc.routing, tc.args...)
			a := labtest.Pod(t, l, "n1", "a", "app=a")
			b := labtest.Pod(t, l, "n2", "b", "app=b")
			allow := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: %s}}]
    toPorts: [{ports: [{port: "7000", protocol: TCP}, {port: "7001", protocol: UDP}]}]
`
			labtest.ImportPolicy(t, l, "n2", fmt.Sprintf(allow, "a"))
			st := startStream(t, lab.NetNSPath(b.NetNS), lab.NetNSPath(a.NetNS), b.IP, 7000, 20*time.Second, 5*time.Second)
			udp := startDatagrams(t, lab.NetNSPath(b.NetNS), lab.NetNSPath(a.NetNS), b.IP, 7001)
			st.grows(t, "allowed")
			st.grows(t, "allowed, established")
			eventually(t, "datagrams arrive", func() bool { return udp.Load() > 20 })
			labtest.ImportPolicy(t, l, "n2", fmt.Sprintf(allow, "nobody"))
			// The import returns once n2 has the policy; its datapath
			// follows within the agent's apply. Quiet for 2 s within 15 s:
			// stopped; and stays so.
			for _, flow := range []struct {
				name string
				got  func() int64
			}{{"TCP stream", st.got}, {"UDP flow", udp.Load}} {
				deadline := time.Now().Add(15 * time.Second)
				last, since := flow.got(), time.Now()
				for time.Since(since) < 2*time.Second {
					if time.Now().After(deadline) {
						t.Fatalf("the %s still delivers 15 s after the allow went (%d)", flow.name, flow.got())
					}
					time.Sleep(100 * time.Millisecond)
					if n := flow.got(); n != last {
						last, since = n, time.Now()
					}
				}
				time.Sleep(2 * time.Second)
				if n := flow.got(); n != last {
					t.Fatalf("the %s delivered %d more after it had stopped", flow.name, n-last)
				}
			}
			st.finish()
		})
	}
}

// startDatagrams sends a datagram every 10 ms from the namespace at
// clientPath to ip:port, where a socket in serverPath counts them, until
// cleanup; it returns the count.
func startDatagrams(t *testing.T, serverPath, clientPath, ip string, port int) *atomic.Int64 {
	t.Helper()
	var pc net.PacketConn
	if err := inNS(t, serverPath, func() (err error) { pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port)); return }); err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	if err := inNS(t, clientPath, func() (err error) { c, err = net.Dial("udp4", net.JoinHostPort(ip, strconv.Itoa(port))); return }); err != nil {
		pc.Close()
		t.Fatal(err)
	}
	var n atomic.Int64
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); c.Close(); pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			c.Write([]byte("one way"))
		}
	}()
	return &n
}
