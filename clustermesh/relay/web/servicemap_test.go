package web

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/wrapperspb"

	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
)

func meshFlows() []*flowpb.Flow {
	var out []*flowpb.Flow
	for _, ev := range meshEvents(time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)) {
		out = append(out, meta(ev.cluster).Flow(ev.Event))
	}
	return out
}

func buildMap(flows []*flowpb.Flow) *Map {
	b := newMapBuilder()
	for _, f := range flows {
		b.Add(f)
	}
	return b.Map()
}

// names lists a map's workloads as cluster/namespace/name by ID.
func names(m *Map) map[string]string {
	out := map[string]string{}
	for _, c := range m.Clusters {
		for _, ns := range c.Namespaces {
			for _, w := range ns.Workloads {
				out[w.ID] = c.Name + "/" + ns.Name + "/" + w.Name
			}
		}
	}
	return out
}

// edgeStrings: "src -> dst verdicts ports l7" per edge, by names.
func edgeStrings(m *Map) []string {
	n := names(m)
	var out []string
	for _, e := range m.Edges {
		var l7 []string
		for _, s := range e.L7 {
			l7 = append(l7, fmt.Sprintf("%s x%d", s.Text, s.Count))
		}
		out = append(out, fmt.Sprintf("%s -> %s %v %v %v", n[e.Source], n[e.Destination], e.Verdicts, e.Ports, l7))
	}
	return out
}

// The mesh's flows: workloads of both clusters grouped by namespace
// (reserved ones apart), frontend of c1 in c1 even in c2's flows, edges
// with their verdicts, ports and L7 requests.
func TestMapOfMesh(t *testing.T) {
	m := buildMap(meshFlows())
	if m.Flows != 10 || m.Omitted != 0 {
		t.Errorf("flows %d, omitted %d; want 10, 0", m.Flows, m.Omitted)
	}
	var groups []string
	for _, c := range m.Clusters {
		for _, ns := range c.Namespaces {
			for _, w := range ns.Workloads {
				groups = append(groups, fmt.Sprintf("%s/%s/%s %s reserved=%v pods=%v flows=%d", c.Name, ns.Name, w.Name, w.ID, w.Reserved, w.Pods, w.Flows))
			}
		}
	}
	want := []string{
		"c1//world n0 reserved=true pods=[] flows=1",
		"c1/default/" + hostileApp + " n1 reserved=false pods=[" + hostilePod + "] flows=1",
		"c1/kube-system/coredns n2 reserved=false pods=[] flows=1",
		"c1/shop/cart n3 reserved=false pods=[cart-0] flows=4",
		"c1/shop/frontend n4 reserved=false pods=[frontend-7d4b9c6f5d-x2kqz] flows=7",
		"c2/billing/ledger n5 reserved=false pods=[ledger-1] flows=2",
		"c2/billing/payments n6 reserved=false pods=[payments-6c9f8d7b5-q7w2p] flows=4",
	}
	if !reflect.DeepEqual(groups, want) {
		t.Errorf("workloads:\n%s\nwant:\n%s", strings.Join(groups, "\n"), strings.Join(want, "\n"))
	}
	edges := edgeStrings(m)
	wantEdges := []string{
		"c1/default/" + hostileApp + " -> c1/shop/cart map[FORWARDED:1] [TCP/8080] [GET /%3Cscript%3Ewindow.__pwned=3%3C/script%3E 404 x1]",
		"c1/shop/frontend -> c1//world map[FORWARDED:1] [TCP/443] []",
		"c1/shop/frontend -> c1/kube-system/coredns map[FORWARDED:1] [UDP/53] [DNS shop.example.com A x1]",
		"c1/shop/frontend -> c1/shop/cart map[FORWARDED:3] [TCP/8080] [GET /api/items 200 x2]",
		"c1/shop/frontend -> c2/billing/payments map[DROPPED:2] [TCP/9000] []",
		"c2/billing/ledger -> c2/billing/payments map[FORWARDED:2] [TCP/9092] [Kafka produce payments x1]",
	}
	if !reflect.DeepEqual(edges, wantEdges) {
		t.Errorf("edges:\n%s\nwant:\n%s", strings.Join(edges, "\n"), strings.Join(wantEdges, "\n"))
	}
	// The same flows make the same map, byte for byte.
	a, _ := json.Marshal(m)
	b, _ := json.Marshal(buildMap(meshFlows()))
	if string(a) != string(b) {
		t.Errorf("two maps of the same flows differ:\n%s\n%s", a, b)
	}
}

func TestPodWorkload(t *testing.T) {
	for pod, want := range map[string]string{
		"frontend-7d4b9c6f5d-x2kqz": "frontend",      // Deployment
		"node-exporter-x2kqz":       "node-exporter", // DaemonSet
		"db-0":                      "db",            // StatefulSet
		"web-server":                "web-server",
		"my-app-abcde":              "my-app-abcde", // vowels: not generated
		"x2kqz":                     "x2kqz",        // nothing would be left
		"api-7d4b9c6f5d":            "api-7d4b9c6f5d",
		"":                          "",
	} {
		if got := podWorkload(pod); got != want {
			t.Errorf("podWorkload(%q) = %q, want %q", pod, got, want)
		}
	}
}

func TestWorkloadOf(t *testing.T) {
	for _, tc := range []struct {
		ep          *flowpb.Endpoint
		nodeCluster string
		want        workloadKey
	}{
		{&flowpb.Endpoint{Identity: 6}, "c1", workloadKey{"c1", "", "remote-node", true}},
		{&flowpb.Endpoint{Identity: 99, ClusterName: "c2"}, "c1", workloadKey{"c2", "", "reserved-99", true}},
		{&flowpb.Endpoint{Identity: 1, Labels: []string{"reserved:host"}, Namespace: "x"}, "", workloadKey{"", "", "host", true}},
		{&flowpb.Endpoint{Identity: 70000, Namespace: "a", PodName: "web-1",
			Labels: []string{"k8s:app=w", "k8s:app.kubernetes.io/name=named"}}, "c1", workloadKey{"c1", "a", "named", false}},
		{&flowpb.Endpoint{Identity: 70000, Labels: []string{"k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system",
			"k8s:io.cilium.k8s.policy.cluster=c3"}, ClusterName: "c1"}, "c1", workloadKey{"c3", "kube-system", "kube-dns", false}},
		{&flowpb.Endpoint{Identity: 70000, Namespace: "a", PodName: "db-2"}, "", workloadKey{"", "a", "db", false}},
		{&flowpb.Endpoint{Identity: 70000}, "c1", workloadKey{"c1", "", "identity 70000", false}},
	} {
		if got := workloadOf(tc.ep, tc.nodeCluster); got != tc.want {
			t.Errorf("workloadOf(%v, %q) = %+v, want %+v", tc.ep, tc.nodeCluster, got, tc.want)
		}
	}
}

func endpoint(ns, app string) *flowpb.Endpoint {
	return &flowpb.Endpoint{Identity: 70000, Namespace: ns, Labels: []string{"k8s:app=" + app}}
}

// A reply is drawn as its request's edge; a flow without endpoints is
// left out, counted.
func TestMapReplyAndOmitted(t *testing.T) {
	m := buildMap([]*flowpb.Flow{
		{Source: endpoint("a", "client"), Destination: endpoint("a", "server"), Verdict: flowpb.Verdict_FORWARDED},
		{Source: endpoint("a", "server"), Destination: endpoint("a", "client"), Verdict: flowpb.Verdict_FORWARDED, IsReply: wrapperspb.Bool(true)},
		{Source: endpoint("a", "client")},
	})
	if got := edgeStrings(m); len(got) != 1 || got[0] != "/a/client -> /a/server map[FORWARDED:2] [] []" || m.Omitted != 1 {
		t.Errorf("edges %v, omitted %d", got, m.Omitted)
	}
}

// Whatever the flows hold, the map stays within its bounds.
func TestMapBounds(t *testing.T) {
	var flows []*flowpb.Flow
	for i := range maxWorkloads + 50 {
		flows = append(flows, &flowpb.Flow{Source: endpoint("a", "client"), Destination: endpoint("a", fmt.Sprint("server", i)), Verdict: flowpb.Verdict_DROPPED})
	}
	for i := range maxL7Kinds + 10 {
		flows = append(flows, &flowpb.Flow{Source: endpoint("a", "client"), Destination: endpoint("a", "server0"), Verdict: flowpb.Verdict_FORWARDED,
			L7: &flowpb.Layer7{Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{Method: "GET", Url: fmt.Sprintf("http://s/p%d", i), Code: 200}}}})
	}
	long := strings.Repeat("é", 3*maxText) + "\xff"
	flows = append(flows, &flowpb.Flow{Source: endpoint("a", "client"), Destination: endpoint("a", "server1"),
		L7: &flowpb.Layer7{Record: &flowpb.Layer7_Dns{Dns: &flowpb.DNS{Query: long}}}})
	m := buildMap(flows)
	n := 0
	for _, c := range m.Clusters {
		for _, ns := range c.Namespaces {
			n += len(ns.Workloads)
		}
	}
	if n != maxWorkloads || m.Omitted != 51 || m.Flows != len(flows)-51 {
		t.Errorf("%d workloads, %d flows, %d omitted; want %d, %d, 51", n, m.Flows, m.Omitted, maxWorkloads, len(flows)-51)
	}
	for _, e := range m.Edges {
		if len(e.L7) > maxL7Shown {
			t.Errorf("%d L7 summaries on an edge", len(e.L7))
		}
		for _, s := range e.L7 {
			if utf8.RuneCountInString(s.Text) > maxText || !utf8.ValidString(s.Text) {
				t.Errorf("summary of %d runes (valid UTF-8: %v)", utf8.RuneCountInString(s.Text), utf8.ValidString(s.Text))
			}
		}
	}
	e := m.Edges[0] // client -> server0: 74 kinds of GET: 64 counted, 10 as "other"
	if e.L7[0] != (Summary{"other", 10}) || e.Verdicts["FORWARDED"] != maxL7Kinds+10 {
		t.Errorf("client -> server0: %+v", e)
	}
	if e := m.Edges[1]; len(e.L7) != 1 || !strings.HasPrefix(e.L7[0].Text, "DNS éé") || !strings.HasSuffix(e.L7[0].Text, "…") {
		t.Errorf("client -> server1: %+v", e)
	}
}
