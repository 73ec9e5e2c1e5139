package lab_test

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// exportedFlows reads the flows of a JSON-lines export file (none while
// it does not exist yet).
func exportedFlows(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var flows []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r map[string]any
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("export file line %q: %v", sc.Text(), err)
		}
		if fl, ok := r["flow"].(map[string]any); ok {
			flows = append(flows, fl)
		}
	}
	return flows
}

// The flow metrics and the exporter on a node with the seeds' L7 policy:
// after a client's allowed request and two denied connections (one from
// a pod the export denylist names), /metrics counts flows by verdict
// (FORWARDED and DROPPED), the POLICY_DENIED drops and the HTTP request;
// the export file holds the denied connection as a JSON line, and not the
// one the denylist filters out (which the ring holds).
func TestHubbleFlowMetricsAndExport(t *testing.T) {
	hubble := hubbleCLI(t)
	export := filepath.Join(t.TempDir(), "flows", "flows.json")
	l := labtest.Up(t, 1, 0, "--hubble-export-file", export, "--hubble-export-file-max-size-mb", "1",
		"--hubble-export-denylist", `{"source_pod":["default/ghost"]}`)
	web := labtest.Pod(t, l, "n1", "web", "app=web")
	labtest.Pod(t, l, "n1", "client", "app=client")
	labtest.Pod(t, l, "n1", "intruder", "app=other")
	labtest.Pod(t, l, "n1", "ghost", "app=ghost")
	serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
	labtest.ImportPolicy(t, l, "n1", l7Policy)
	base := "http://" + web.IP
	eventually(t, "GET /public/ allowed through the proxy", func() bool {
		return curlCodes(t, l, "client", base+"/public/a") == "200"
	})
	// The ghost first: the exporter reads the ring in order, so once the
	// intruder's drop is in the file the ghost's was considered before it.
	for _, pod := range []string{"ghost", "intruder"} {
		if got := curlCodes(t, l, pod, "--connect-timeout", "2", base+"/"); got != "000" {
			t.Fatalf("%s: %q, want no connection", pod, got)
		}
	}

	eventually(t, "/metrics counts dropped and forwarded flows, POLICY_DENIED drops and the GET", func() bool {
		return metric(t, l, "n1", "hubble_flows_processed_total{", `verdict="DROPPED"`) > 0 &&
			metric(t, l, "n1", "hubble_flows_processed_total{", `verdict="FORWARDED"`) > 0 &&
			metric(t, l, "n1", "hubble_drop_total{", `reason="POLICY_DENIED"`) >= 2 &&
			metric(t, l, "n1", "hubble_http_requests_total{", `method="GET"`) > 0
	})
	if n := metric(t, l, "n1", "filament_flow_export_flows_total", ""); n == 0 {
		t.Errorf("filament_flow_export_flows_total: %v", n)
	}

	var denied map[string]any
	eventually(t, "the export file holds the intruder's dropped connection", func() bool {
		for _, f := range exportedFlows(t, export) {
			if field(f, "source", "pod_name") == "intruder" && field(f, "verdict") == "DROPPED" {
				denied = f
				return true
			}
		}
		return false
	})
	if field(denied, "drop_reason_desc") != "POLICY_DENIED" || field(denied, "destination", "pod_name") != "web" ||
		field(denied, "IP", "destination") != web.IP || field(denied, "l4", "TCP", "destination_port") != float64(80) {
		t.Errorf("exported dropped flow: %v", denied)
	}
	if ghost := hubbleObserve(t, l, hubble, "n1", "--from-pod", "default/ghost", "--verdict", "DROPPED"); len(ghost) == 0 {
		t.Fatal("the ring holds no dropped flow of the ghost")
	}
	for _, f := range exportedFlows(t, export) {
		if field(f, "source", "pod_name") == "ghost" {
			t.Errorf("the denylist's pod was exported: %v", f)
		}
	}
	if fi, err := os.Stat(export); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("export file %v %v: want it its owner's only", fi, err)
	}
}
