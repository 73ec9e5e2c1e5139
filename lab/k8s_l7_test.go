package lab_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// webPublicCNP is the seeds' example (l7Policy) as a CiliumNetworkPolicy
// object of namespace default, with a headers and a headerMatches rule
// besides (the CRD must keep them) and extra further HTTP rules.
func webPublicCNP(t *testing.T, extra string) *unstructured.Unstructured {
	t.Helper()
	u := kubeObject(t, l7Policy+`        - {path: "/strict", headers: ["X-Token: abc"]}
        - {path: "/env", headerMatches: [{name: X-Env, value: prod, mismatch: REPLACE}]}
`+extra)
	u.SetNamespace("default")
	return u
}

// kubeObject parses one YAML document into an unstructured object.
func kubeObject(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

// podGet runs curl in pod with args and returns the body it got.
func podGet(t *testing.T, l *lab.Lab, pod string, args ...string) string {
	t.Helper()
	cmd, err := l.PodCommand(pod, append([]string{"curl", "-s", "--max-time", "5"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := cmd.Output()
	return string(out)
}

// Kubernetes mode with L7 rules on a real kube-apiserver: the seeds'
// example as a CiliumNetworkPolicy object keeps its rules.http through the
// CRD (nothing pruned) and is enforced by the web pod's node's proxy for
// clients on the same node and on the other one (native routing); an
// update of the object adds POST; a CiliumClusterwideNetworkPolicy gives
// another peer its own HTTP rules; deleting the objects lifts them: once
// the CNP is gone the clients are no longer allowed at all (the CCNP still
// selects web, so ingress stays default-deny), and once the CCNP is gone
// too no policy selects web and every request passes (no proxy).
func TestKubernetesL7HTTP(t *testing.T) {
	l, dyn, cs := kubeLab(t)
	ctx := context.Background()
	web := kubePod(t, l, cs, "n1", "web", "web")
	kubePod(t, l, cs, "n1", "near", "client")
	kubePod(t, l, cs, "n2", "far", "client")
	kubePod(t, l, cs, "n2", "other", "other")
	serveHTTPWith(t, lab.NetNSPath(web.NetNS), 80, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s X-Env=%s", r.Method, r.URL.Path, r.Header.Get("X-Env"))
	})
	base := "http://" + web.IP

	// The CiliumNetworkPolicy object, created once the CRDs are served.
	cnp := webPublicCNP(t, "")
	cnpRes := resourceOf(dyn, cnp)
	eventually(t, "the CiliumNetworkPolicy CRD serves", func() bool {
		_, err := cnpRes.Create(ctx, cnp, metav1.CreateOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatalf("creating the CiliumNetworkPolicy: %v", err)
		}
		return err == nil
	})
	stored, err := cnpRes.Get(ctx, "web-public", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !equalYAML(t, stored.Object["spec"], cnp.Object["spec"]) {
		t.Fatalf("the API server stored the spec as\n%v\nnot as written (pruned?)\n%v", stored.Object["spec"], cnp.Object["spec"])
	}

	// Both agents' informers list the CRD's objects once it is served;
	// one that started before (the agents start before the API server)
	// may be in client-go's list backoff, up to 30 s (jittered to 60 s).
	for _, on := range []string{"n1", "n2"} {
		eventuallyWithin(t, 90*time.Second, on+" holds the CiliumNetworkPolicy", func() bool {
			out, err := labtest.NodeRun(t, l, on, "filament", "policy", "get", "default/web-public")
			return err == nil && strings.Contains(out, "headerMatches")
		})
	}
	for _, pod := range []string{"near", "far"} {
		// Without the policy every request passes: wait for a 403.
		eventually(t, pod+": GET /private denied by the node's proxy", func() bool {
			return curlCodes(t, l, pod, base+"/private") == "403"
		})
		if got := curlCodes(t, l, pod, base+"/public/a", base+"/private", base+"/public/b"); got != "200 403 200" {
			t.Errorf("%s: GET /public/a, /private, /public/b on one connection: %q, want \"200 403 200\"", pod, got)
		}
		if got := curlCodes(t, l, pod, "-X", "POST", base+"/public/a"); got != "403" {
			t.Errorf("%s: POST /public/a: %q, want 403", pod, got)
		}
		if got := curlCodes(t, l, pod, base+"/strict"); got != "403" {
			t.Errorf("%s: /strict without X-Token: %q, want 403", pod, got)
		}
		if got := curlCodes(t, l, pod, "-H", "X-Token: abc", base+"/strict"); got != "200" {
			t.Errorf("%s: /strict with X-Token: abc: %q, want 200", pod, got)
		}
		if got := podGet(t, l, pod, "-H", "X-Env: dev", base+"/env"); got != "GET /env X-Env=prod" {
			t.Errorf("%s: /env with X-Env: dev reached the server as %q, want X-Env=prod (REPLACE)", pod, got)
		}
	}
	if got := curlCodes(t, l, "other", "--connect-timeout", "2", base+"/public/a"); got != "000" {
		t.Errorf("a pod the policy does not name: %q, want no connection (000)", got)
	}

	// The update path: the object gains a POST rule.
	cur, err := cnpRes.Get(ctx, "web-public", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	upd := webPublicCNP(t, `        - {method: POST, path: "/public/.*"}
`)
	upd.SetResourceVersion(cur.GetResourceVersion())
	if _, err := cnpRes.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, pod := range []string{"near", "far"} {
		eventually(t, pod+": POST /public/a allowed after the update", func() bool {
			return curlCodes(t, l, pod, "-X", "POST", base+"/public/a") == "200"
		})
		if got := curlCodes(t, l, pod, "-X", "POST", base+"/private", base+"/admin"); got != "403 403" {
			t.Errorf("%s after the update: POST /private, POST /admin: %q, want \"403 403\"", pod, got)
		}
	}

	// A CiliumClusterwideNetworkPolicy: other may GET /status only; the
	// clients' rules are their own (per peer identity).
	ccnp := kubeObject(t, `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: web-status}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /status}]}
`)
	ccnpRes := resourceOf(dyn, ccnp)
	if _, err := ccnpRes.Create(ctx, ccnp, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "other: GET /status allowed by the clusterwide policy", func() bool {
		return curlCodes(t, l, "other", base+"/status") == "200"
	})
	if got := curlCodes(t, l, "other", base+"/public/a"); got != "403" {
		t.Errorf("other: GET /public/a: %q, want 403", got)
	}
	if got := curlCodes(t, l, "other", "-X", "POST", base+"/status"); got != "403" {
		t.Errorf("other: POST /status: %q, want 403", got)
	}
	if got := curlCodes(t, l, "near", base+"/status"); got != "403" {
		t.Errorf("near: GET /status (only other's rule): %q, want 403", got)
	}

	// Deleting the CiliumNetworkPolicy: the CCNP still selects web, so the
	// clients, which it does not name, are not allowed at all any more.
	if err := cnpRes.Delete(ctx, "web-public", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, pod := range []string{"near", "far"} {
		eventually(t, pod+": no connection once the CiliumNetworkPolicy is deleted", func() bool {
			return curlCodes(t, l, pod, "--connect-timeout", "2", base+"/public/a") == "000"
		})
	}
	if got := curlCodes(t, l, "other", base+"/status", base+"/public/a"); got != "200 403" {
		t.Errorf("other after the CNP's deletion: GET /status, GET /public/a: %q, want \"200 403\"", got)
	}

	// Deleting the CCNP too: no policy selects web, every request passes.
	if err := ccnpRes.Delete(ctx, "web-status", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "other: GET /public/a once no policy selects web", func() bool {
		return curlCodes(t, l, "other", base+"/public/a") == "200"
	})
	for _, pod := range []string{"near", "far", "other"} {
		if got := curlCodes(t, l, pod, "-X", "POST", base+"/private", base+"/admin"); got != "200 200" {
			t.Errorf("%s without policy: POST /private, POST /admin: %q, want \"200 200\"", pod, got)
		}
	}
}

// equalYAML reports whether a and b marshal to the same YAML.
func equalYAML(t *testing.T, a, b any) bool {
	t.Helper()
	ya, err := yaml.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	yb, err := yaml.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(ya) == string(yb)
}
