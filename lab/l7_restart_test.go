package lab_test

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/lab"
)

// proxyPID is the pid of the filament-proxy running in node's namespace (0: none).
func proxyPID(t *testing.T, l *lab.Lab, node string) int {
	t.Helper()
	n, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("ip", "netns", "pids", n.NetNS).Output()
	for _, f := range strings.Fields(string(out)) {
		comm, _ := os.ReadFile("/proc/" + f + "/comm")
		if strings.TrimSpace(string(comm)) == "filament-proxy" {
			pid, _ := strconv.Atoi(f)
			return pid
		}
	}
	return 0
}

// Each request through the proxy is an "l7" event in `filament monitor`:
// verdict, method, path, status and both sides' labels.
func TestL7MonitorEvents(t *testing.T) {
	l, base := l7Lab(t)
	n, _ := l.Node("n1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan types.Event, 256)
	connected := make(chan struct{})
	go client.New(n.Socket).MonitorConnected(ctx, 0, "l7", func() { close(connected) }, func(ev types.Event) {
		select {
		case events <- ev:
		default:
		}
	})
	select {
	case <-connected:
	case <-time.After(15 * time.Second):
		t.Fatal("monitor never connected")
	}
	// The agent reads the proxy's records once someone listens: requests
	// are sent until their events arrive.
	seen := map[string]bool{}
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	curlCodes(t, l, "client", base+"/public/m", base+"/private")
	for !seen["forwarded /public/m 200"] || !seen["denied /private 403"] {
		select {
		case <-tick.C:
			curlCodes(t, l, "client", base+"/public/m", base+"/private")
		case ev := <-events:
			if ev.Type != "l7" || ev.L7 == nil {
				t.Fatalf("event of type %q in an l7 subscription: %+v", ev.Type, ev)
			}
			if ev.Direction != "ingress" || "http://"+ev.Dst.Addr().String() != base || !strings.Contains(strings.Join(ev.SrcLabels, ","), "app=client") ||
				!strings.Contains(strings.Join(ev.DstLabels, ","), "app=web") || ev.Endpoint == 0 || ev.L7.Method != "GET" {
				t.Errorf("l7 event: %+v %+v", ev, *ev.L7)
			}
			seen[ev.L7.Verdict+" "+ev.L7.Path+" "+strconv.Itoa(ev.L7.Status)] = true
		case <-deadline:
			t.Fatalf("l7 events seen %v; want an allowed GET /public/m (200) and a denied GET /private (403)", seen)
		}
	}
	// The agent's /metrics serves the proxy's request counters.
	for _, m := range [][2]string{
		{"filament_proxy_http_requests_total", `code="403",method="GET",verdict="denied"`},
		{"filament_proxy_http_requests_total", `code="200",method="GET",verdict="forwarded"`},
		{"filament_proxy_http_request_duration_seconds_count", ""},
	} {
		if metric(t, l, "n1", m[0], m[1]) == 0 {
			t.Errorf("the agent's metrics lack %s {%s} > 0", m[0], m[1])
		}
	}
}

var h2loadLine = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)

// The agent restarts in the middle of an h2load run through the L7 proxy:
// the proxy is the same process afterwards (adopted, not restarted) and no
// request fails. Cilium loses its proxy over an agent restart.
func TestL7ProxySurvivesAgentRestart(t *testing.T) {
	if _, err := exec.LookPath("h2load"); err != nil {
		t.Skip("skipped: h2load (Debian nghttp2-client) is not installed")
	}
	l, base := l7Lab(t)
	before := proxyPID(t, l, "n1")
	if before == 0 {
		t.Fatal("no filament-proxy in n1's namespace")
	}
	cmd, err := l.PodCommand("client", "h2load", "--h1", "-c", "8", "-D", "8", base+"/public/load")
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan string, 1)
	go func() {
		b, _ := cmd.CombinedOutput()
		out <- string(b)
	}()
	time.Sleep(2 * time.Second)
	if err := l.StopAgent("n1"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.StartAgent(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	res := <-out
	m := h2loadLine.FindStringSubmatch(res)
	if m == nil {
		t.Fatalf("h2load output without a requests line:\n%s", res)
	}
	done, _ := strconv.Atoi(m[3])
	t.Logf("h2load across the agent restart: %s", m[0])
	if done == 0 || m[5] != "0" || m[6] != "0" || m[7] != "0" {
		t.Errorf("requests failed across the agent restart: %s", m[0])
	}
	if !regexp.MustCompile(`status codes: [1-9]\d* 2xx, 0 3xx, 0 4xx, 0 5xx`).MatchString(res) {
		t.Errorf("not every request got a 2xx:\n%s", res)
	}
	if after := proxyPID(t, l, "n1"); after != before {
		t.Errorf("proxy pid %d after the agent restart, was %d: it was restarted, not adopted", after, before)
	}
}
