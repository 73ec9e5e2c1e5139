package lab_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// l7WorldPolicy is the seeds' example (l7Policy) for clients outside the
// cluster.
var l7WorldPolicy = strings.Replace(l7Policy, "- fromEndpoints: [{matchLabels: {app: client}}]", "- fromEntities: [world]", 1)

// hostCurlCodes is curlCodes run in the namespace at path (a host outside
// the cluster): one request per URL on one connection, the status codes
// space-separated.
func hostCurlCodes(t *testing.T, path string, urls ...string) string {
	t.Helper()
	argv := []string{"netns", "exec", filepath.Base(path), "curl", "-s", "-w", "%{http_code} ", "--max-time", "5"}
	for _, u := range urls {
		argv = append(argv, "-o", "/dev/null", u)
	}
	out, _ := exec.Command("ip", argv...).Output()
	return strings.TrimSpace(string(out))
}

// A NodePort service whose backend pod has ingress L7 rules, reached by a
// host outside the cluster: through the backend's own node (a local
// backend: the connection goes to that node's proxy untranslated, which
// answers from the frontend and dials the backend) and through the other
// node (a remote backend: translated, tunnelled, steered to the proxy on
// the backend's node). GET /public/.* is answered by the backend, the rest
// 403 by the proxy, on one connection. Until 2026-12-06 the local
// backend's node dropped every such connection (to_container: around the
// proxy).
func TestL7NodePort(t *testing.T) {
	l := labtest.Up(t, 2, 0)
	web := labtest.Pod(t, l, "n2", "web", "app=web")
	serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
	labtest.ImportPolicy(t, l, "n1", l7WorldPolicy)
	upsertNodePort(t, l, remoteNodePort("web", "10.96.0.40", "TCP", 80, 80, 30480, web.IP), "n1", "n2")
	out := labtest.UnderlayHost(t, l, "out", "172.30.0.50")
	for _, c := range []struct{ node, backend string }{{"n2", "local"}, {"n1", "remote"}} {
		n, err := l.Node(c.node)
		if err != nil {
			t.Fatal(err)
		}
		base := fmt.Sprintf("http://%s:30480", n.IP)
		eventually(t, c.node+" ("+c.backend+" backend): GET /public/ through the NodePort", func() bool {
			return hostCurlCodes(t, out, base+"/public/a") == "200"
		})
		if got := hostCurlCodes(t, out, base+"/private", base+"/public/b"); got != "403 200" {
			t.Errorf("%s (%s backend): GET /private then GET /public/b on one connection: %q, want \"403 200\"", c.node, c.backend, got)
		}
	}
}
