package lab_test

import (
	"fmt"
	"testing"

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
