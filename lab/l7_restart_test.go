package lab_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
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

// Another socket bound to the proxy's port while the proxy is not there
// (a local user, a host-network pod, at any restart of the proxy) gets no
// flow: the datapath hands new flows to the sockets the proxy put in
// proxy_listeners and to no other, and the agent keeps trying to start
// the proxy, which runs once the port is free again. Until 2026-12-07 the
// datapath looked up whatever was bound to 127.0.0.1:<port>, so the
// squatter read the pods' DNS queries (and could accept NodePort L7
// connections, whose destination is the node's own address; a pod's
// connection to another pod needs a transparent socket, which takes
// CAP_NET_ADMIN), and an agent whose proxy could not bind at its start
// gave up on it for good (found by a review).
func TestL7ProxyPortSquatterGetsNothing(t *testing.T) {
	l, base := l7Lab(t)
	n, err := l.Node("n1")
	if err != nil {
		t.Fatal(err)
	}
	client, err := l.Pod("client")
	if err != nil {
		t.Fatal(err)
	}
	webIP := strings.TrimPrefix(base, "http://")
	// The client's DNS to web goes through the proxy (any name).
	labtest.ImportPolicy(t, l, "n1", squatDNSPolicy)
	eventually(t, "GET /public/ still allowed with the client's egress policy", func() bool {
		return curlCodes(t, l, "client", base+"/public/a") == "200"
	})
	if err := l.StopAgent("n1"); err != nil {
		t.Fatal(err)
	}
	if pid := proxyPID(t, l, "n1"); pid != 0 {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	// The squatter takes the port (TCP and UDP) once the proxy let go.
	var tcp net.Listener
	var udp net.PacketConn
	eventually(t, "the proxy's port free for the squatter", func() bool {
		return ns.WithNetNSPath(lab.NetNSPath(n.NetNS), func(ns.NetNS) (err error) {
			if tcp, err = net.Listen("tcp4", "127.0.0.1:15001"); err != nil {
				return err
			}
			if udp, err = net.ListenPacket("udp4", "127.0.0.1:15001"); err != nil {
				tcp.Close()
			}
			return err
		}) == nil
	})
	var accepted, datagrams atomic.Int32
	go func() {
		b := make([]byte, 2048)
		for {
			if _, _, err := udp.ReadFrom(b); err != nil {
				return
			}
			datagrams.Add(1)
		}
	}()
	go func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	squatting := true
	defer func() {
		if squatting {
			tcp.Close()
			udp.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.StartAgent(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if code := curlCodes(t, l, "client", base+"/public/a"); code == "200" {
			t.Fatalf("a request went through while another socket held the proxy's port (code %s)", code)
		}
	}
	// A query from the client to web's port 53, which its DNS rule sends
	// to the proxy.
	err = ns.WithNetNSPath(lab.NetNSPath(client.NetNS), func(ns.NetNS) error {
		c, err := net.Dial("udp4", net.JoinHostPort(webIP, "53"))
		if err != nil {
			return err
		}
		defer c.Close()
		for i := 0; i < 5; i++ {
			if _, err := c.Write([]byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01x\x00\x00\x01\x00\x01")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // what the datapath hands a socket is there at once
	if a := accepted.Load(); a != 0 {
		t.Errorf("the squatter on the proxy's port accepted %d of the pods' L7 connections", a)
	}
	if d := datagrams.Load(); d != 0 {
		t.Errorf("the squatter on the proxy's port read %d of the pods' DNS datagrams", d)
	}
	tcp.Close()
	udp.Close()
	squatting = false
	eventuallyWithin(t, 30*time.Second, "GET /public/ through the proxy started once the port was free", func() bool {
		return curlCodes(t, l, "client", base+"/public/a") == "200"
	})
	if proxyPID(t, l, "n1") == 0 {
		t.Error("no filament-proxy in n1's namespace")
	}
}

// squatDNSPolicy sends the client's DNS to web through the proxy (any
// name), its HTTP to web as before.
const squatDNSPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns:
        - matchPattern: "*"
`
