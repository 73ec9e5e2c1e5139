package lab_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/internal/testutil"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// hubbleCLI is the real hubble CLI: $FILAMENT_HUBBLE (make test sets it:
// missing, the test fails), else make hubble's cache (missing, the test
// skips).
func hubbleCLI(t testing.TB) string {
	t.Helper()
	return testutil.CachedTool(t, "FILAMENT_HUBBLE", "hubble-v1.20.2", "hubble")
}

// hubbleObserve runs `hubble observe -o json` with args against node's
// Hubble API (its unix socket, beside the agent's) and returns the flows.
func hubbleObserve(t *testing.T, l *lab.Lab, hubble, node string, args ...string) []map[string]any {
	t.Helper()
	n, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	server := "unix://" + filepath.Join(filepath.Dir(n.Socket), "hubble.sock")
	return observeJSON(t, l, node, append([]string{hubble, "observe", "--server", server, "-o", "json", "--last", "1000"}, args...)...)
}

// filamentObserve runs `filament observe -o json` with args on node (its
// default server: the Hubble socket beside the agent's) and returns the
// flows.
func filamentObserve(t *testing.T, l *lab.Lab, node string, args ...string) []map[string]any {
	t.Helper()
	return observeJSON(t, l, node, append([]string{"filament", "observe", "-o", "json", "--last", "1000"}, args...)...)
}

// observeJSON runs an observe command printing GetFlowsResponses as JSON
// lines on node and returns their flows.
func observeJSON(t *testing.T, l *lab.Lab, node string, argv ...string) []map[string]any {
	t.Helper()
	out, err := labtest.NodeRun(t, l, node, argv...)
	if err != nil {
		t.Fatalf("%v: %v: %s", argv, err, out)
	}
	return parseFlows(t, out)
}

// hubbleFollows runs `hubble observe -f -o json` with args on node's API
// and calls cause (again, every second) until a flow comes through.
func hubbleFollows(t *testing.T, l *lab.Lab, hubble, node string, cause func(), args ...string) {
	t.Helper()
	n, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	server := "unix://" + filepath.Join(filepath.Dir(n.Socket), "hubble.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd, err := l.NodeCommand(node, append([]string{hubble, "observe", "--server", server, "-o", "json", "-f"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		cause()
		select {
		case line := <-lines:
			if fs := parseFlows(t, line); len(fs) == 1 {
				return
			}
		case <-time.After(time.Second):
		case <-ctx.Done():
			t.Fatalf("hubble observe -f %v: no flow within 30s", args)
		}
	}
}

// parseFlows reads the flows of `hubble observe -o json` output.
func parseFlows(t *testing.T, out string) []map[string]any {
	t.Helper()
	var flows []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("observe output %q: %v", line, err)
		}
		if f, ok := r["flow"].(map[string]any); ok {
			flows = append(flows, f)
		}
	}
	return flows
}

// sameFlows fails t unless every flow of want (what the hubble CLI found)
// is among got (what filament observe found after it: the ring only grew
// since) and every flow of got passes pass (the filters).
func sameFlows(t *testing.T, what string, want, got []map[string]any, pass func(map[string]any) bool) {
	t.Helper()
	key := func(f map[string]any) string {
		b, _ := json.Marshal([]any{f["time"], f["verdict"], field(f, "source", "pod_name"), field(f, "destination", "pod_name"), f["l4"], f["l7"]})
		return string(b)
	}
	seen := map[string]bool{}
	for _, f := range got {
		seen[key(f)] = true
		if !pass(f) {
			t.Errorf("filament observe %s: a flow the filters exclude: %v", what, f)
		}
	}
	for _, f := range want {
		if !seen[key(f)] {
			t.Errorf("filament observe %s: missing a flow hubble observe found: %v", what, f)
		}
	}
}

// field walks a decoded flow: field(f, "source", "pod_name").
func field(f map[string]any, path ...string) any {
	var v any = f
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// The real hubble CLI against a node: the seeds' L7 policy on web, a
// client's allowed and denied requests and a pod the policy does not
// name. `hubble observe` with its filters (verdict, pod, label, protocol,
// HTTP method and status) finds the dropped connection (POLICY_DENIED,
// both pods named), the L7 flows with their method, URL and code, the
// client's connections the policy sends to the proxy (REDIRECTED, at
// web's ingress), and nothing a filter excludes; `filament observe` with
// the same filters finds the same flows.
func TestHubbleObserve(t *testing.T) {
	hubble := hubbleCLI(t)
	l := labtest.Up(t, 1, 0)
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	labtest.Pod(t, l, "n1", "client", "app=client")
	labtest.Pod(t, l, "n1", "intruder", "app=other")
	serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
	labtest.ImportPolicy(t, l, "n1", l7Policy)
	base := "http://" + web.IP
	eventually(t, "GET /public/ allowed through the proxy", func() bool {
		return curlCodes(t, l, "client", base+"/public/a") == "200"
	})
	if got := curlCodes(t, l, "client", "-X", "POST", base+"/private"); got != "403" {
		t.Fatalf("POST /private: %q, want 403", got)
	}
	if got := curlCodes(t, l, "intruder", "--connect-timeout", "2", base+"/"); got != "000" {
		t.Fatalf("intruder: %q, want no connection", got)
	}

	var drops []map[string]any
	eventually(t, "hubble observe --verdict DROPPED --from-pod default/intruder shows the dropped connection", func() bool {
		drops = hubbleObserve(t, l, hubble, "n1", "--verdict", "DROPPED", "--from-pod", "default/intruder")
		return len(drops) > 0
	})
	d := drops[0]
	if field(d, "drop_reason_desc") != "POLICY_DENIED" || field(d, "destination", "pod_name") != "web" ||
		field(d, "IP", "destination") != web.IP || field(d, "l4", "TCP", "destination_port") != float64(80) ||
		field(d, "traffic_direction") != "INGRESS" || field(d, "node_name") == nil {
		t.Errorf("dropped flow: %v", d)
	}
	for _, f := range drops {
		if field(f, "source", "pod_name") != "intruder" || field(f, "verdict") != "DROPPED" {
			t.Errorf("a flow the filters exclude: %v", f)
		}
	}

	// filament observe: the same filters find the same flows, as JSON
	// and as compact lines.
	sameFlows(t, "--verdict DROPPED --from-pod default/intruder", drops,
		filamentObserve(t, l, "n1", "--verdict", "DROPPED", "--from-pod", "default/intruder"), func(f map[string]any) bool {
			return field(f, "source", "pod_name") == "intruder" && field(f, "verdict") == "DROPPED"
		})
	out, err := labtest.NodeRun(t, l, "n1", "filament", "observe", "--verdict", "dropped", "--from-pod", "intruder", "--last", "1000")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) < len(drops) {
		t.Errorf("filament observe compact: %v, %d lines for %d flows: %s", err, len(lines), len(drops), out)
	}
	for _, line := range lines {
		if !strings.Contains(line, "default/intruder:") || !strings.Contains(line, "-> default/web:80 ") || !strings.HasSuffix(line, " drop DROPPED (POLICY_DENIED)") {
			t.Errorf("filament observe compact line: %q", line)
		}
	}

	var l7 []map[string]any
	eventually(t, "hubble observe --protocol http --label app=client shows the two requests", func() bool {
		l7 = hubbleObserve(t, l, hubble, "n1", "--protocol", "http", "--from-label", "app=client")
		return len(l7) >= 2
	})
	codes := map[string]any{}
	for _, f := range l7 {
		codes[field(f, "l7", "http", "method").(string)+" "+field(f, "l7", "http", "url").(string)] = field(f, "l7", "http", "code")
	}
	if codes["GET http://"+web.IP+"/public/a"] != float64(200) || codes["POST http://"+web.IP+"/private"] != float64(403) {
		t.Errorf("L7 flows (method url -> code): %v", codes)
	}
	isHTTP := func(f map[string]any) bool { return field(f, "l7", "http") != nil }
	sameFlows(t, "--protocol http --from-label app=client", l7,
		filamentObserve(t, l, "n1", "--protocol", "http", "--from-label", "app=client"), func(f map[string]any) bool {
			return isHTTP(f) && field(f, "source", "pod_name") == "client"
		})
	// --label: either end (the client's requests, as the source).
	sameFlows(t, "--protocol http --label app=client", l7,
		filamentObserve(t, l, "n1", "--protocol", "HTTP", "--label", "app=client"), isHTTP)
	denied := hubbleObserve(t, l, hubble, "n1", "--http-method", "POST", "--http-status", "403")
	if len(denied) == 0 || field(denied[0], "verdict") != "DROPPED" || field(denied[0], "source", "pod_name") != "client" {
		t.Errorf("--http-method POST --http-status 403: %v", denied)
	}
	if none := hubbleObserve(t, l, hubble, "n1", "--from-pod", "default/nobody"); len(none) != 0 {
		t.Errorf("--from-pod default/nobody: %d flows", len(none))
	}
	sameFlows(t, "--http-method POST --http-status 403", denied,
		filamentObserve(t, l, "n1", "--http-method", "POST", "--http-status", "403"), func(f map[string]any) bool {
			return field(f, "l7", "http", "method") == "POST" && field(f, "l7", "http", "code") == float64(403)
		})
	if none := filamentObserve(t, l, "n1", "--from-pod", "default/nobody"); len(none) != 0 {
		t.Errorf("filament observe --from-pod default/nobody: %d flows", len(none))
	}
	// The client's connections to web go to the proxy: REDIRECTED policy
	// verdicts at web's ingress (the proxy's own upstream connection is
	// not redirected).
	redirected := hubbleObserve(t, l, hubble, "n1", "--verdict", "REDIRECTED")
	if len(redirected) == 0 {
		t.Errorf("--verdict REDIRECTED: no flow")
	}
	for _, f := range redirected {
		if field(f, "source", "pod_name") != "client" || field(f, "destination", "pod_name") != "web" || field(f, "traffic_direction") != "INGRESS" ||
			field(f, "l4", "TCP", "destination_port") != float64(80) || field(f, "event_type", "type") != float64(5) || field(f, "l4", "TCP", "flags", "SYN") != true {
			t.Errorf("--verdict REDIRECTED: %v", f)
		}
	}
	sameFlows(t, "--verdict REDIRECTED", redirected, filamentObserve(t, l, "n1", "--verdict", "REDIRECTED"), func(f map[string]any) bool {
		return field(f, "verdict") == "REDIRECTED"
	})
	if out, err := labtest.NodeRun(t, l, "n1", "filament", "observe", "--verdict", "LOST"); err == nil || !strings.Contains(out, `--verdict "LOST"`) {
		t.Errorf("filament observe --verdict LOST: %v: %s", err, out)
	}
	// Hubble's semantics the CLI relies on: a pod without namespace is
	// the default namespace's, a node name without cluster any cluster's.
	if got := hubbleObserve(t, l, hubble, "n1", "--from-pod", "intruder", "--node-name", "n1", "--verdict", "DROPPED"); len(got) == 0 {
		t.Errorf("--from-pod intruder --node-name n1: no flow")
	}
	// --namespace, --port, --since with the real CLI; a window in the
	// future has nothing.
	for _, args := range [][]string{{"--namespace", "default", "--from-label", "app=other"}, {"--port", "80", "--from-pod", "default/intruder"},
		{"--since", "10m", "--from-pod", "default/intruder"}} {
		got := hubbleObserve(t, l, hubble, "n1", append([]string{"--verdict", "DROPPED"}, args...)...)
		if len(got) == 0 {
			t.Errorf("hubble observe %v: no flow", args)
		}
		for _, f := range got {
			if field(f, "source", "pod_name") != "intruder" {
				t.Errorf("hubble observe %v: a flow of %v", args, field(f, "source", "pod_name"))
			}
		}
	}
	if got := hubbleObserve(t, l, hubble, "n1", "--since", time.Now().Add(time.Hour).Format(time.RFC3339)); len(got) != 0 {
		t.Errorf("--since an hour ahead: %d flows", len(got))
	}
	// -f: the real CLI following; a new drop comes through.
	hubbleFollows(t, l, hubble, "n1", func() { curlCodes(t, l, "intruder", "--connect-timeout", "1", base+"/") },
		"--verdict", "DROPPED", "--from-pod", "default/intruder")
	// The API's socket is its owner's and group's only.
	n, _ := l.Node("n1")
	if fi, err := os.Stat(filepath.Join(filepath.Dir(n.Socket), "hubble.sock")); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("hubble socket: %v %v, want mode 0660", fi, err)
	}
}

// clusterIPService is a ClusterIP service (default/web) with one backend.
const clusterIPService = `apiVersion: filament.io/v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.30
  ports:
  - {name: http, port: 80, targetPort: 8080}
backends:
- {ip: %s, node: n1}
`

// A pod's connection to a service's ClusterIP is a TRANSLATED flow (the
// socket load balancer's translation, reported once per connection):
// from the client to the backend pod's address and port, with
// destination_service naming the service; `hubble observe --verdict
// TRANSLATED` finds it, and filament observe the same.
func TestHubbleTranslatedFlows(t *testing.T) {
	hubble := hubbleCLI(t)
	l := labtest.Up(t, 1, 0)
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	client := labtest.Pod(t, l, "n1", "client", "app=client")
	labtest.ServeName(t, lab.NetNSPath(web.NetNS), 8080, "web")
	labtest.MustUpsertService(t, l, "n1", fmt.Sprintf(clusterIPService, web.IP))
	eventually(t, "client reaches the ClusterIP", func() bool {
		name, err := labtest.Who(lab.NetNSPath(client.NetNS), "10.96.0.30:80")
		return err == nil && name == "web"
	})
	var xlated []map[string]any
	eventually(t, "hubble observe --verdict TRANSLATED shows the client's connection to the service", func() bool {
		xlated = hubbleObserve(t, l, hubble, "n1", "--verdict", "TRANSLATED", "--from-pod", "default/client")
		return len(xlated) > 0
	})
	for _, f := range xlated {
		if field(f, "verdict") != "TRANSLATED" || field(f, "IP", "destination") != web.IP || field(f, "IP", "source") != client.IP ||
			field(f, "l4", "TCP", "destination_port") != float64(8080) || field(f, "destination", "pod_name") != "web" ||
			field(f, "destination_service", "name") != "web" || field(f, "destination_service", "namespace") != "default" ||
			field(f, "traffic_direction") != "EGRESS" {
			t.Errorf("translated flow: %v", f)
		}
	}
	sameFlows(t, "--verdict TRANSLATED --from-pod default/client", xlated,
		filamentObserve(t, l, "n1", "--verdict", "TRANSLATED", "--from-pod", "default/client"), func(f map[string]any) bool {
			return field(f, "verdict") == "TRANSLATED" && field(f, "source", "pod_name") == "client"
		})
}

// Forwarded flows with no policy at all (--flow-events connections, the
// default): a connection between two pods that nothing enforces is a
// FORWARDED flow with its SYN, at the client (egress) and at the server
// (ingress), and not a reply; its later packets are not flows
// (--tcp-flags ACK finds none of the client's), and --tcp-flags SYN
// finds only SYNs.
func TestHubbleForwardedFlowsWithoutPolicy(t *testing.T) {
	hubble := hubbleCLI(t)
	l := labtest.Up(t, 1, 0)
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	labtest.Pod(t, l, "n1", "client", "app=client")
	serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
	eventually(t, "client reaches web", func() bool {
		return curlCodes(t, l, "client", "http://"+web.IP+"/") == "200"
	})
	var fwd []map[string]any
	eventually(t, "hubble observe --verdict FORWARDED shows the connection at both pods", func() bool {
		fwd = hubbleObserve(t, l, hubble, "n1", "--verdict", "FORWARDED", "--from-pod", "default/client", "--to-pod", "default/web")
		dirs := map[any]bool{}
		for _, f := range fwd {
			dirs[field(f, "traffic_direction")] = true
		}
		return dirs["EGRESS"] && dirs["INGRESS"]
	})
	for _, f := range fwd {
		if field(f, "l4", "TCP", "destination_port") != float64(80) || field(f, "l4", "TCP", "flags", "SYN") != true ||
			field(f, "l4", "TCP", "flags", "ACK") != nil || field(f, "is_reply") != false || field(f, "IP", "destination") != web.IP {
			t.Errorf("forwarded flow: %v", f)
		}
	}
	syns := hubbleObserve(t, l, hubble, "n1", "--tcp-flags", "SYN", "--from-pod", "default/client")
	if len(syns) < len(fwd) {
		t.Errorf("--tcp-flags SYN: %d flows, want at least the %d forwarded ones", len(syns), len(fwd))
	}
	for _, f := range syns {
		if field(f, "l4", "TCP", "flags", "SYN") != true {
			t.Errorf("--tcp-flags SYN: a flow without SYN: %v", f)
		}
	}
	if acks := hubbleObserve(t, l, hubble, "n1", "--tcp-flags", "ACK", "--from-pod", "default/client"); len(acks) != 0 {
		t.Errorf("--tcp-flags ACK: %d flows of the client's established packets, want none (one flow per connection): %v", len(acks), acks)
	}
}
