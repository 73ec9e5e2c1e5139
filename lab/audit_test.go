package lab_test

import (
	"strings"
	"testing"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// webFromClientPolicy lets app=client (alone) reach app=web on TCP 80:
// web's ingress is enforced.
const webFromClientPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-from-client
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
`

// Policy audit mode (--policy-audit-mode): a connection the policy does
// not allow succeeds, and `hubble observe --verdict AUDIT` shows it at the
// enforcing pod's ingress with the reason it would have been dropped for
// (POLICY_DENIED), once per connection (its SYN; its later packets are
// not flows); the allowed connection is FORWARDED, not audited; `filament
// status` says audit mode is on.
func TestPolicyAuditMode(t *testing.T) {
	hubble := hubbleCLI(t)
	l := labtest.Up(t, 1, 0, "--policy-audit-mode")
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	labtest.Pod(t, l, "n1", "client", "app=client")
	labtest.Pod(t, l, "n1", "intruder", "app=other")
	serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
	labtest.ImportPolicy(t, l, "n1", webFromClientPolicy)
	base := "http://" + web.IP + "/"
	var audited []map[string]any
	eventually(t, "the intruder reaches web and hubble observe --verdict AUDIT shows it", func() bool {
		if got := curlCodes(t, l, "intruder", base); got != "200" {
			t.Fatalf("intruder under audit mode: %q, want 200", got)
		}
		audited = hubbleObserve(t, l, hubble, "n1", "--verdict", "AUDIT")
		return len(audited) > 0
	})
	for _, f := range audited {
		if field(f, "verdict") != "AUDIT" || field(f, "drop_reason_desc") != "POLICY_DENIED" ||
			field(f, "source", "pod_name") != "intruder" || field(f, "destination", "pod_name") != "web" ||
			field(f, "traffic_direction") != "INGRESS" || field(f, "l4", "TCP", "destination_port") != float64(80) ||
			field(f, "l4", "TCP", "flags", "SYN") != true || field(f, "l4", "TCP", "flags", "ACK") != nil {
			t.Errorf("audited flow: %v", f)
		}
	}
	if got := curlCodes(t, l, "client", base); got != "200" {
		t.Fatalf("client: %q, want 200", got)
	}
	eventually(t, "the client's connection is FORWARDED at web", func() bool {
		return len(hubbleObserve(t, l, hubble, "n1", "--verdict", "FORWARDED", "--from-pod", "default/client", "--to-pod", "default/web")) > 0
	})
	if got := hubbleObserve(t, l, hubble, "n1", "--verdict", "AUDIT", "--from-pod", "default/client"); len(got) != 0 {
		t.Errorf("the allowed client audited: %v", got)
	}
	out, err := labtest.NodeRun(t, l, "n1", "filament", "status")
	if err != nil || !strings.Contains(out, "policy audit mode") {
		t.Errorf("filament status: %v: %s", err, out)
	}
}
