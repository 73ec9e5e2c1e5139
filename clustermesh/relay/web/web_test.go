package web

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/filament-net/filament/agent/hubble/pb/observer"
)

func serve(t *testing.T, c Config) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(Handler(c))
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	r, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return r, string(b)
}

// flowLines decodes an /api/flows answer.
func flowLines(t *testing.T, body string) []*observer.GetFlowsResponse {
	t.Helper()
	var out []*observer.GetFlowsResponse
	for _, l := range strings.Split(strings.TrimSpace(body), "\n") {
		if l == "" {
			continue
		}
		r := &observer.GetFlowsResponse{}
		if err := protojson.Unmarshal([]byte(l), r); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		out = append(out, r)
	}
	return out
}

func TestFlowsAPI(t *testing.T) {
	m := newTestMesh(t)
	m.record(time.Now().Add(-time.Minute))
	srv := serve(t, Config{Observer: m.client})
	for _, tc := range []struct {
		query string
		want  int
	}{
		{"", 10},
		{"verdict=DROPPED", 2},
		{"verdict=dropped,forwarded", 10},
		{"namespace=billing", 4},
		{"namespace=shop&pod=cart", 4},
		{"pod=cart", 4},
		{"pod=billing/led", 2},
		{"protocol=kafka", 1},
		{"protocol=http&verdict=FORWARDED", 3},
		{"namespace=default&protocol=http", 1},
		{"last=3", 3},
		{"since=2s", 0},
		{"since=" + time.Now().Add(-time.Hour).Format(time.RFC3339), 10},
		// Hubble's other options (agent/hubble/query).
		{"to-pod=cart", 4},
		{"from-namespace=billing", 2},
		{"label=k8s:app=payments", 4},
		{"to-port=9092", 2},
		{"type=drop", 2},
		{"first=2", 2},
		{"all=true", 10},
	} {
		r, body := get(t, srv.URL+"/api/flows?"+tc.query)
		if r.StatusCode != http.StatusOK || r.Header.Get("Content-Type") != "application/x-ndjson" {
			t.Errorf("%s: %s %q", tc.query, r.Status, body)
			continue
		}
		if got := flowLines(t, body); len(got) != tc.want {
			t.Errorf("%s: %d flows, want %d", tc.query, len(got), tc.want)
		}
	}
	for _, q := range []string{"verdict=MAYBE", "last=x", "last=0", "since=yesterday", "follow=maybe", "color=red",
		"protocol=carrier-pigeon", "first=1&last=1", "namespace=billing&pod=shop/cart", "label=a+in+(", "first=0",
		"pod=" + strings.Repeat("x", maxQueryValue+1), strings.Repeat("pod=x&", maxQueryValues+1)} {
		if r, body := get(t, srv.URL+"/api/flows?"+q); r.StatusCode != http.StatusBadRequest {
			t.Errorf("%.40s: %s %q, want 400", q, r.Status, body)
		}
	}
	if r, _ := get(t, srv.URL+"/api/flows?pod="+strings.Repeat("x", maxQuery)); r.StatusCode != http.StatusRequestURITooLong {
		t.Errorf("a long query: %s", r.Status)
	}
	// A hostile string is carried as it is (the page sets it as text).
	_, body := get(t, srv.URL+"/api/flows?namespace=default")
	if got := flowLines(t, body); len(got) != 1 || got[0].GetFlow().Source.PodName != hostilePod ||
		!strings.HasSuffix(got[0].GetFlow().L7.GetHttp().Url, hostilePath) {
		t.Errorf("hostile flow: %v", got)
	}
}

// The last flows are bounded by maxFlows whatever is asked.
func TestFlowsAPILast(t *testing.T) {
	m := newTestMesh(t)
	for i := range maxFlows/10 + 1 {
		m.record(time.Now().Add(time.Duration(-i) * time.Minute))
	}
	srv := serve(t, Config{Observer: m.client})
	_, body := get(t, srv.URL+"/api/flows?last=1000000")
	if got := flowLines(t, body); len(got) != maxFlows {
		t.Errorf("last=1000000: %d flows, want %d", len(got), maxFlows)
	}
}

func TestFollow(t *testing.T) {
	m := newTestMesh(t)
	m.record(time.Now().Add(-time.Minute))
	srv := serve(t, Config{Observer: m.client})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/flows?follow=1&verdict=DROPPED&last=1", nil)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	if r.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("follow: %s %s", r.Status, r.Header.Get("Content-Type"))
	}
	events := bufio.NewScanner(r.Body)
	next := func() *observer.GetFlowsResponse {
		for events.Scan() {
			if d, ok := strings.CutPrefix(events.Text(), "data: "); ok {
				resp := &observer.GetFlowsResponse{}
				if err := protojson.Unmarshal([]byte(d), resp); err != nil {
					t.Fatalf("event %q: %v", d, err)
				}
				return resp
			}
		}
		t.Fatalf("stream ended: %v", events.Err())
		return nil
	}
	// The last drop held (c2's; c1 has none), then a new one of c1.
	if f := next().GetFlow(); f.GetVerdict().String() != "DROPPED" || f.NodeName != "c2/n1" {
		t.Fatalf("backlog: %v", f)
	}
	ev := meshEvents(time.Now())[7] // c2's drop
	m.c1.Record(ev.Event)
	if f := next().GetFlow(); f.GetVerdict().String() != "DROPPED" || f.NodeName != "c1/n1" {
		t.Fatalf("followed: %v", f)
	}
	// A filter the page refuses is refused before any stream.
	if r, body := get(t, srv.URL+"/api/flows?follow=1&protocol=carrier-pigeon"); r.StatusCode != http.StatusBadRequest ||
		!strings.Contains(body, "carrier-pigeon") {
		t.Errorf("follow with a refused filter: %s %q", r.Status, body)
	}
	// A request the observer refuses ends the stream with a failure event.
	refused := serve(t, Config{Observer: refusingObserver{m.client}})
	r, body := get(t, refused.URL+"/api/flows?follow=1")
	if !strings.HasPrefix(body, "event: failure\ndata: ") || !strings.Contains(body, "refused here") {
		t.Errorf("follow the observer refuses: %s %q", r.Status, body)
	}
}

// refusingObserver refuses every GetFlows.
type refusingObserver struct{ observer.ObserverClient }

func (refusingObserver) GetFlows(context.Context, *observer.GetFlowsRequest, ...grpc.CallOption) (grpc.ServerStreamingClient[observer.GetFlowsResponse], error) {
	return nil, status.Error(codes.InvalidArgument, "flow filter refused here")
}

// Beyond maxFollows live streams, or maxCalls other requests, another is
// refused, not queued.
func TestRequestBounds(t *testing.T) {
	m := newTestMesh(t)
	h := newHandler(Config{Observer: m.client, Status: func(context.Context) (any, error) { return "ok", nil }})
	for range maxCalls {
		h.calls <- struct{}{}
	}
	for _, path := range []string{"/api/flows", "/api/map", "/api/status"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		if w.Code != http.StatusServiceUnavailable {
			t.Errorf("%s with %d requests at a time: %d", path, maxCalls, w.Code)
		}
	}
	<-h.calls
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/api/status", nil))
	if w.Code != http.StatusOK || len(h.calls) != maxCalls-1 {
		t.Errorf("a request in a free slot: %d, %d slots taken after it", w.Code, len(h.calls))
	}
	for range maxFollows {
		h.follows <- struct{}{}
	}
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/api/flows?follow=1", nil))
	if w.Code != http.StatusServiceUnavailable {
		t.Errorf("follow %d: %d", maxFollows+1, w.Code)
	}
	<-h.follows
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the client has gone: the handler returns at once
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/api/flows?follow=1", nil).WithContext(ctx))
	if w.Code != http.StatusOK || len(h.follows) != maxFollows-1 {
		t.Errorf("a follow in a free slot: %d, %d slots taken after it", w.Code, len(h.follows))
	}
}

func TestMapAPI(t *testing.T) {
	m := newTestMesh(t)
	m.record(time.Now().Add(-time.Minute))
	srv := serve(t, Config{Observer: m.client})
	r, body := get(t, srv.URL+"/api/map")
	var got Map
	if err := json.Unmarshal([]byte(body), &got); err != nil || r.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("map: %s %v %q", r.Header.Get("Content-Type"), err, body)
	}
	want := buildMap(meshFlows())
	if !equalJSON(t, got, want) {
		t.Errorf("map through the API:\n%s\nwant\n%s", body, mustJSON(t, want))
	}
	if r, _ := get(t, srv.URL+"/api/map?follow=1"); r.StatusCode != http.StatusBadRequest {
		t.Errorf("map with follow: %s", r.Status)
	}
	if _, body := get(t, srv.URL+"/api/map?namespace=billing"); !strings.Contains(body, `"flows":4`) {
		t.Errorf("map of billing: %s", body)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func equalJSON(t *testing.T, a, b any) bool { return mustJSON(t, a) == mustJSON(t, b) }

func TestStatusAPI(t *testing.T) {
	m := newTestMesh(t)
	if r, _ := get(t, serve(t, Config{Observer: m.client}).URL+"/api/status"); r.StatusCode != http.StatusNotFound {
		t.Errorf("no Status: %s", r.Status)
	}
	st := map[string]any{"clusters": []any{map[string]any{"name": "c1", "nodes": 2.0}}}
	r, body := get(t, serve(t, Config{Observer: m.client, Status: func(context.Context) (any, error) { return st, nil }}).URL+"/api/status")
	var got any
	if err := json.Unmarshal([]byte(body), &got); err != nil || !equalJSON(t, got, st) {
		t.Errorf("status: %s %q %v", r.Status, body, err)
	}
	failing := func(context.Context) (any, error) { return nil, errors.New("etcd unreachable") }
	if r, body := get(t, serve(t, Config{Observer: m.client, Status: failing}).URL+"/api/status"); r.StatusCode != http.StatusBadGateway ||
		!strings.Contains(body, "etcd unreachable") {
		t.Errorf("failing status: %s %q", r.Status, body)
	}
}

// The page and its files: the security headers on every answer, scripts
// only from files, only GET.
func TestPageAndHeaders(t *testing.T) {
	m := newTestMesh(t)
	srv := serve(t, Config{Observer: m.client})
	for path, ctype := range map[string]string{"/": "text/html", "/app.js": "text/javascript", "/style.css": "text/css",
		"/api/map": "application/json", "/nothing": "text/plain"} {
		r, body := get(t, srv.URL+path)
		if !strings.HasPrefix(r.Header.Get("Content-Type"), ctype) {
			t.Errorf("%s: Content-Type %q, want %s", path, r.Header.Get("Content-Type"), ctype)
		}
		for k, v := range securityHeaders {
			if r.Header.Get(k) != v {
				t.Errorf("%s: %s %q", path, k, r.Header.Get(k))
			}
		}
		if path == "/" && (!strings.Contains(body, `<script src="/app.js" defer></script>`) || strings.Contains(body, "<script>") ||
			strings.Contains(body, "style=") || strings.Contains(body, " on")) {
			t.Errorf("the page has inline script or style:\n%s", body)
		}
		if path == "/app.js" && strings.Contains(body, "innerHTML") {
			t.Errorf("app.js uses innerHTML")
		}
	}
	csp := securityHeaders["Content-Security-Policy"]
	if !strings.Contains(csp, "script-src 'self';") || strings.Contains(csp, "unsafe") {
		t.Errorf("CSP %q", csp)
	}
	r, err := http.Post(srv.URL+"/api/flows", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %s", r.Status)
	}
}

// Each followed flow is an event with its time as ID; an EventSource
// reconnecting with Last-Event-ID goes on after it (no row twice), not
// from the last flows again.
func TestFollowResumes(t *testing.T) {
	m := newTestMesh(t)
	m.record(time.Now().Add(-time.Minute))
	srv := serve(t, Config{Observer: m.client})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resumeAt := time.Now().Add(-time.Second) // after every flow held
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/flows?follow=1&verdict=DROPPED&last=5", nil)
	req.Header.Set("Last-Event-ID", resumeAt.Format(time.RFC3339Nano))
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	done := make(chan struct{})
	defer close(done)
	go func() { // new drops until one comes
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
				ev := meshEvents(time.Now())[7]
				m.c1.Record(ev.Event)
			}
		}
	}()
	events := bufio.NewScanner(r.Body)
	var id string
	for events.Scan() {
		if v, ok := strings.CutPrefix(events.Text(), "id: "); ok {
			id = v
		}
		if d, ok := strings.CutPrefix(events.Text(), "data: "); ok {
			resp := &observer.GetFlowsResponse{}
			if err := protojson.Unmarshal([]byte(d), resp); err != nil {
				t.Fatal(err)
			}
			at := resp.GetFlow().GetTime().AsTime()
			if !at.After(resumeAt) {
				t.Fatalf("resumed at %v, got a flow of %v again", resumeAt, at)
			}
			if id != at.Format(time.RFC3339Nano) {
				t.Errorf("event ID %q for a flow of %v", id, at)
			}
			return
		}
	}
	t.Fatalf("stream ended: %v", events.Err())
}
