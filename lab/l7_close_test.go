package lab_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// After a response that ends its connection (Connection: close), the
// proxy lets the client close first, as curl and wrk do once they have
// the response: the connection's TIME_WAIT is then the client's, in its
// own namespace. Were it the proxy's, in the node's namespace with the
// client's own tuple, a new connection from the same client port (free
// again at once on the client's side) would meet the old socket instead of
// the proxy's listener, and its SYN would be lost once (a 1 s stall; p99
// of the new-connection benchmark went to 0.8 s). The upstream connection,
// which has the client's address as its source, is closed with a reset
// for the same reason: it leaves no TIME_WAIT either.
func TestL7ClientClosesFirst(t *testing.T) {
	l, base := l7Lab(t)
	client, err := l.Pod("client")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if got := curlCodes(t, l, "client", "-H", "Connection: close", base+"/public/close"); got != "200" {
			t.Fatalf("request %d: %q, want 200", i, got)
		}
	}
	// TIME_WAIT sockets with the client's address, either side.
	timeWait := func(cmd *exec.Cmd, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ss: %v %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	ss := []string{"ss", "-Htn", "state", "time-wait", "( src " + client.IP + " or dst " + client.IP + " )"}
	if tw := timeWait(l.NodeCommand("n1", ss...)); tw != "" {
		t.Errorf("the node's namespace holds TIME_WAIT sockets with the client's address (the proxy closed first, downstream or upstream):\n%s", tw)
	}
	// Control: the client's namespace has them (the filter works).
	if tw := timeWait(l.PodCommand("client", ss...)); tw == "" {
		t.Errorf("no TIME_WAIT socket in the client's namespace after 5 closed connections")
	}
}

// The node's own connections (health probes, say) to a pod port whose L7
// rules apply to the host are dropped, never let through unchecked: the
// host's packets reach the pod at tc egress, where no socket can be
// assigned, so the proxy cannot see them. An L4 allow of the host on that
// port (fromEntities: [host], no rules) lets them through, every request.
func TestL7HostTraffic(t *testing.T) {
	l := labtest.Up(t, 1, 0)
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
	const hostL7 = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-host}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEntities: [host]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public/.*"}]
`
	nodeCurl := func(path string) string {
		cmd, err := l.NodeCommand("n1", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--connect-timeout", "2", "--max-time", "5", "http://"+web.IP+path)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := cmd.Output() // curl exits non-zero when it gets no connection
		return string(out)
	}
	eventually(t, "the node reaches the pod before any policy", func() bool { return nodeCurl("/public/a") == "200" })
	labtest.ImportPolicy(t, l, "n1", hostL7)
	eventually(t, "the node's connection to an L7 port of the host's is dropped", func() bool { return nodeCurl("/public/a") == "000" })
	if got := nodeCurl("/private"); got != "000" {
		t.Errorf("the node's GET /private under L7 rules: %q, want no connection (000), never 200", got)
	}
	// Beside the L7 rule, which stays.
	labtest.ImportPolicy(t, l, "n1", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-host-l4}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEntities: [host]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`)
	eventually(t, "an L4 allow of the host lets the node's requests through", func() bool { return nodeCurl("/private") == "200" })
	if out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "list"); err != nil || !strings.Contains(out, "web-host ") && !strings.Contains(out, "web-host\n") {
		t.Errorf("the L7 policy web-host is gone after the L4 one was imported: %v\n%s", err, out)
	}
}
