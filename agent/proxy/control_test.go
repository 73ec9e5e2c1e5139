package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// controlClient talks to a control API on a unix socket.
func controlClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
}

func startControl(t *testing.T, p *Proxy, stateDir string) *http.Client {
	t.Helper()
	c, err := NewControl(p, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "proxy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go c.Serve(ln)
	t.Cleanup(func() { c.Close() })
	return controlClient(sock)
}

func call(t *testing.T, c *http.Client, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://proxy"+path, strings.NewReader(body))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestControlAPI(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	stateDir := t.TempDir()
	c := startControl(t, h.p, stateDir)
	if code, body := call(t, c, "GET", "/healthz", ""); code != 200 || body != "ok\n" {
		t.Fatalf("healthz: %d %q", code, body)
	}
	port := h.upstream.Port()
	good := Config{Revision: 42, IPCache: ipcache, Policies: []PortPolicy{{Endpoint: serverIP, Direction: Ingress, Port: port, Protocol: "TCP",
		Rules: []PeerRules{{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Method: "GET", Path: "/api/.*"}}}}}}}
	b, _ := json.Marshal(good)
	if code, body := call(t, c, "PUT", "/v1/config", string(b)); code != http.StatusNoContent {
		t.Fatalf("PUT good config: %d %s", code, body)
	}
	for _, tc := range []struct{ body, want string }{
		{strings.Replace(string(b), `"GET"`, `"("`, 1), `policies[0].rules[0].http[0].method "("`},
		{strings.Replace(string(b), `"direction"`, `"directon"`, 1), `unknown field "directon"`},
		{strings.Replace(string(b), `"endpoint":"127.0.0.10"`, `"endpoint":"10.0.0.300"`, 1), `10.0.0.300`},
		{string(b) + "{}", "data after"},
		{`{"revision":43,"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":80,"protocol":"TCP"}],"ipcache":[{"prefix":"10.0.0.0/8","identity":0}]}`, "ipcache[0].identity"},
	} {
		if code, body := call(t, c, "PUT", "/v1/config", tc.body); code != 400 || !strings.Contains(body, tc.want) {
			t.Errorf("PUT bad config: %d %q, want 400 with %q", code, body, tc.want)
		}
	}
	code, body := call(t, c, "GET", "/v1/config", "")
	var got Config
	if code != 200 || json.Unmarshal([]byte(body), &got) != nil || got.Revision != 42 {
		t.Fatalf("GET config after refusals: %d %s", code, body)
	}

	// Records as NDJSON while requests go through.
	req, _ := http.NewRequest("GET", "http://proxy/v1/records", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// And in the binary form, for the same requests.
	breq, _ := http.NewRequest("GET", "http://proxy/v1/records", nil)
	breq.Header.Set("Accept", RecordsBinary)
	bresp, err := c.Do(breq)
	if err != nil {
		t.Fatal(err)
	}
	defer bresp.Body.Close()
	if ct := bresp.Header.Get("Content-Type"); ct != RecordsBinary {
		t.Fatalf("binary records stream of type %q", ct)
	}
	if got := h.curl("-o", "/dev/null", "-w", "%{http_code}", h.url("/api/x")); got != "200" {
		t.Fatalf("allowed request: %s", got)
	}
	if got := h.curl("-o", "/dev/null", "-w", "%{http_code}", h.url("/public/x")); got != "403" {
		t.Fatalf("denied request: %s", got)
	}
	sc := bufio.NewScanner(resp.Body)
	var recs []Record
	for len(recs) < 2 && sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	if len(recs) != 2 {
		t.Fatalf("records: %v %v", recs, sc.Err())
	}
	readRecords(t, NewRecordReader(bresp.Body), recs) // the binary stream has the same records
	want := Record{Direction: Ingress, Endpoint: serverIP, SrcIP: clientIP, DstIP: serverIP, DstPort: port,
		SrcIdentity: clientID, DstIdentity: serverID, Protocol: "HTTP/1.1", Method: "GET", Host: h.addr, Path: "/api/x", Status: 200, Verdict: Forwarded}
	r := recs[0]
	if r.Latency <= 0 || r.SrcPort == 0 || time.Since(r.Time) > time.Minute {
		t.Errorf("record %+v", r)
	}
	r.Latency, r.Time, r.SrcPort = 0, time.Time{}, 0
	if !equalRecords(r, want) {
		t.Errorf("allowed record\n%+v\nwant\n%+v", r, want)
	}
	want.Path, want.Status, want.Verdict, want.Reason = "/public/x", 403, Denied, "no ingress rule matches"
	r = recs[1]
	r.Latency, r.Time, r.SrcPort = 0, time.Time{}, 0
	if !equalRecords(r, want) {
		t.Errorf("denied record\n%+v\nwant\n%+v", r, want)
	}

	_, metrics := call(t, c, "GET", "/metrics", "")
	for _, want := range []string{
		`filament_proxy_http_requests_total{code="200",method="GET",verdict="forwarded"} 1`,
		`filament_proxy_http_requests_total{code="403",method="GET",verdict="denied"} 1`,
		`filament_proxy_http_request_duration_seconds_count 2`,
		`filament_proxy_records_dropped_total 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// A restarted proxy enforces the persisted config at once.
	p2 := New(Options{})
	if _, err := NewControl(p2, stateDir); err != nil {
		t.Fatal(err)
	}
	if got := p2.Config(); got.Revision != 42 || len(got.Policies) != 1 || got.Policies[0].Rules[0].HTTP[0].Path != "/api/.*" {
		t.Fatalf("persisted config: %+v", got)
	}
	if id := p2.cfg.Load().identity(clientIP); id != clientID {
		t.Fatalf("persisted ipcache: %d", id)
	}
}

func equalRecords(a, b Record) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// A subscriber that does not read loses records, counted; the proxy goes on.
func TestSlowSubscriberDrops(t *testing.T) {
	p := New(Options{})
	_, cancel := p.Subscribe()
	defer cancel()
	ch2, cancel2 := p.Subscribe()
	for range subscriberBuffer + 10 {
		p.observe(Record{Verdict: Denied, Method: "GET", Status: 403, SrcIP: netip.MustParseAddr("10.0.0.1")})
	}
	if got := len(ch2); got != subscriberBuffer {
		t.Fatalf("buffered %d", got)
	}
	cancel2()
	if _, ok := <-ch2; !ok {
		t.Fatal("records lost before the close")
	}
	var m dto.Metric
	p.metrics.dropped.Write(&m)
	if got := m.GetCounter().GetValue(); got != 20 {
		t.Fatalf("dropped %v, want 20", got)
	}
}

// A request that arrives before its policy waits for the next config,
// and a config the agent PUTs on the control socket is one (before, only
// SetConfig woke the waiters: a request waited the whole policyWait).
func TestPolicyPutWakesWaitingRequest(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	c := startControl(t, h.p, t.TempDir())
	next := h.p.nextConfig()
	if code, body := call(t, c, "PUT", "/v1/config", `{"revision": 2, "policies": [], "ipcache": []}`); code != http.StatusNoContent {
		t.Fatalf("PUT: %d %s", code, body)
	}
	select {
	case <-next:
	default:
		t.Fatal("a PUT config did not wake those waiting for the next config")
	}
}
