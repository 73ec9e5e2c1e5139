package lab_test

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// serveHTTP runs an HTTP server on port in the namespace at path that
// answers every request 200 with "<method> <path> from <remote IP>" (the
// source address the server sees), closed at cleanup.
func serveHTTP(t testing.TB, path string, port int) {
	t.Helper()
	serveHTTPWith(t, path, port, func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "%s %s from %s\n", r.Method, r.URL.Path, host)
	})
}

// seenFrom requests url (a serveHTTP server, through the proxy) from pod
// and returns the source address the server saw, "" when the request
// failed.
func seenFrom(t testing.TB, l *lab.Lab, pod, url string) string {
	t.Helper()
	cmd, err := l.PodCommand(pod, "curl", "-s", "-f", "--max-time", "5", url)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := cmd.Output()
	_, from, _ := strings.Cut(strings.TrimSpace(string(out)), " from ")
	return from
}

// assertSeenFrom checks that the server behind url sees pod's own address
// as the source of pod's request: the proxy's upstream connection keeps
// the client's address.
func assertSeenFrom(t testing.TB, l *lab.Lab, pod *lab.Pod, url string) {
	t.Helper()
	if got := seenFrom(t, l, pod.Name, url); got != pod.IP {
		t.Errorf("%s: the server saw the request from %q, want the client's address %s", pod.Name, got, pod.IP)
	}
}

// serveHTTPWith is serveHTTP with its own handler (HTTP/1.1 and h2c).
func serveHTTPWith(t testing.TB, path string, port int, h http.HandlerFunc) {
	t.Helper()
	var ln net.Listener
	err := ns.WithNetNSPath(path, func(ns.NetNS) (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true) // h2c with prior knowledge, as the proxy forwards HTTP/2
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// l7Lab is one node with a web pod serving HTTP on port 80, a client pod
// and l7Policy in force (GET /public/ answered through the proxy); it
// returns the lab and web's base URL.
func l7Lab(t *testing.T) (*lab.Lab, string) {
	t.Helper()
	l := labtest.Up(t, 1, 0)
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	labtest.Pod(t, l, "n1", "client", "app=client")
	serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
	labtest.ImportPolicy(t, l, "n1", l7Policy)
	base := "http://" + web.IP
	eventually(t, "GET /public/ allowed through the proxy", func() bool {
		return curlCodes(t, l, "client", base+"/public/a") == "200"
	})
	return l, base
}

// curlCodes runs curl in pod with one request per URL on one connection
// (keep-alive) and returns the status codes, space-separated.
func curlCodes(t testing.TB, l *lab.Lab, pod string, args ...string) string {
	t.Helper()
	argv := []string{"curl", "-s", "-w", "%{http_code} ", "--max-time", "5"}
	for _, a := range args {
		if strings.HasPrefix(a, "http://") {
			argv = append(argv, "-o", "/dev/null")
		}
		argv = append(argv, a)
	}
	cmd, err := l.PodCommand(pod, argv...)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := cmd.Output()
	return strings.TrimSpace(string(out))
}

const l7Policy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-public}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: "/public/.*"
`

// The seeds' example on ingress: GET /public/.* is allowed, every other
// request gets 403 from the node's proxy, and the connection stays usable
// after a 403 — from a pod on the same node and from one on another node
// (tunnel). A peer the policy does not name gets nothing at L4.
func TestL7IngressHTTP(t *testing.T) {
	l := labtest.Up(t, 2, 0)
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	near := labtest.Pod(t, l, "n1", "near", "app=client")
	far := labtest.Pod(t, l, "n2", "far", "app=client")
	labtest.Pod(t, l, "n2", "other", "app=other")
	serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
	labtest.ImportPolicy(t, l, "n1", l7Policy)
	base := "http://" + web.IP
	for _, c := range []*lab.Pod{near, far} {
		pod := c.Name
		eventually(t, pod+": GET /public/ allowed through the proxy", func() bool {
			return curlCodes(t, l, pod, base+"/public/a") == "200"
		})
		if got := curlCodes(t, l, pod, base+"/private", base+"/public/b"); got != "403 200" {
			t.Errorf("%s: GET /private then GET /public/b on one connection: %q, want \"403 200\"", pod, got)
		}
		if got := curlCodes(t, l, pod, "-X", "POST", base+"/public/a"); got != "403" {
			t.Errorf("%s: POST /public/a: %q, want 403", pod, got)
		}
		// curl 7.88 does not reuse a prior-knowledge HTTP/2 connection:
		// one request each.
		for path, want := range map[string]string{"/public/h2": "200", "/admin": "403"} {
			if got := curlCodes(t, l, pod, "--http2-prior-knowledge", base+path); got != want {
				t.Errorf("%s: HTTP/2 GET %s: %q, want %s", pod, path, got, want)
			}
		}
		assertSeenFrom(t, l, c, base+"/public/from")
	}
	if got := curlCodes(t, l, "other", "--connect-timeout", "2", base+"/public/a"); got != "000" {
		t.Errorf("a pod the policy does not name: %q, want no connection (000)", got)
	}
}

// Egress L7 on the source node: a client whose egress policy allows only
// GET /public/.* to web gets 403 for the rest from its own node's proxy,
// for a server on its node and on another one (tunnel); the proxy's
// upstream keeps the client's identity (web's ingress policy admits only
// clients) and its address (what the servers see).
func TestL7EgressHTTP(t *testing.T) {
	testL7Egress(t, labtest.Up(t, 2, 0))
}

// Egress L7 in the other routing modes. Without a tunnel no VNI carries
// the client's identity, so the destination's datapath knows the client
// only by the upstream's source address, which must be the client's (the
// node's would be remote-node, which web's ingress policy refuses).
// Native routing brings the replies back through from_netdev, WireGuard
// (with or without a tunnel) through from_wireguard.
func TestL7EgressRoutingModes(t *testing.T) {
	for _, tc := range []routingMode{
		{"native", "native", nil},
		{"native+wireguard", "native", wireguardStrict},
		{"tunnel+wireguard", "tunnel", wireguardStrict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testL7Egress(t, labtest.UpRouting(t, 2, tc.routing, tc.args...))
		})
	}
}

// testL7Egress is the egress L7 case on a two-node lab l.
func testL7Egress(t *testing.T, l *lab.Lab) {
	t.Helper()
	near := labtest.Pod(t, l, "n1", "web1", "app=web")
	far := labtest.Pod(t, l, "n2", "web2", "app=web")
	client := labtest.Pod(t, l, "n1", "client", "app=client")
	for _, w := range []*lab.Pod{near, far} {
		serveHTTP(t, lab.NetNSPath(w.NetNS), 80)
	}
	labtest.ImportPolicy(t, l, "n1", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public/.*"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-clients}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	for _, w := range []*lab.Pod{near, far} {
		base := "http://" + w.IP
		firstContact(t, l, "GET /public/ to "+w.Name+" allowed through the client's proxy", func() bool {
			return curlCodes(t, l, "client", base+"/public/a") == "200"
		})
		if got := curlCodes(t, l, "client", base+"/private", base+"/public/b"); got != "403 200" {
			t.Errorf("%s: GET /private then GET /public/b on one connection: %q, want \"403 200\"", w.Name, got)
		}
		assertSeenFrom(t, l, client, base+"/public/from")
	}
}

// headers and headerMatches on real traffic: a required header value
// (403 without it), and REPLACE rewriting what the server receives.
func TestL7HeaderRules(t *testing.T) {
	l := labtest.Up(t, 1, 0)
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	labtest.Pod(t, l, "n1", "client", "app=client")
	serveHTTPWith(t, lab.NetNSPath(web.NetNS), 80, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "X-Env=%s", r.Header.Get("X-Env"))
	})
	labtest.ImportPolicy(t, l, "n1", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-headers}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {path: "/strict", headers: ["X-Token: abc"]}
        - {path: "/env", headerMatches: [{name: X-Env, value: prod, mismatch: REPLACE}]}
`)
	base := "http://" + web.IP
	eventually(t, "/strict with its header allowed", func() bool {
		return curlCodes(t, l, "client", "-H", "X-Token: abc", base+"/strict") == "200"
	})
	if got := curlCodes(t, l, "client", base+"/strict"); got != "403" {
		t.Errorf("/strict without X-Token: %q, want 403", got)
	}
	cmd, err := l.PodCommand("client", "curl", "-s", "--max-time", "5", "-H", "X-Env: dev", base+"/env")
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := cmd.Output(); string(out) != "X-Env=prod" {
		t.Errorf("/env with X-Env: dev reached the server as %q, want X-Env=prod (REPLACE)", out)
	}
}
