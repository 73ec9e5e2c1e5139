package lab_test

import (
	"fmt"
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
// stream, flowing before, delivers nothing more.
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
    toPorts: [{ports: [{port: "7000", protocol: TCP}]}]
`
			labtest.ImportPolicy(t, l, "n2", fmt.Sprintf(allow, "a"))
			st := startStream(t, lab.NetNSPath(b.NetNS), lab.NetNSPath(a.NetNS), b.IP, 7000, 20*time.Second, 5*time.Second)
			st.grows(t, "allowed")
			st.grows(t, "allowed, established")
			labtest.ImportPolicy(t, l, "n2", fmt.Sprintf(allow, "nobody"))
			// The import returns once n2 has the policy; its datapath
			// follows within the agent's apply. Quiet for 2 s within 15 s:
			// stopped.
			deadline := time.Now().Add(15 * time.Second)
			last, since := st.got(), time.Now()
			for time.Since(since) < 2*time.Second {
				if time.Now().After(deadline) {
					t.Fatalf("the stream still delivers 15 s after the allow went (%d bytes)", st.got())
				}
				time.Sleep(100 * time.Millisecond)
				if n := st.got(); n != last {
					last, since = n, time.Now()
				}
			}
			// And stays stopped.
			time.Sleep(2 * time.Second)
			if n := st.got(); n != last {
				t.Fatalf("the stream delivered %d bytes more after it had stopped", n-last)
			}
			st.finish()
		})
	}
}
