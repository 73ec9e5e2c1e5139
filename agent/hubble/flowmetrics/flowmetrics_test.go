package flowmetrics

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/hubble"
	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/twmb/franz-go/pkg/kmsg"
)

var (
	client = netip.MustParseAddrPort("10.0.0.2:40000")
	web    = netip.MustParseAddrPort("10.0.0.3:80")
)

// flowOf is the Hubble flow the node makes of ev.
func flowOf(ev monitor.Event) *flowpb.Flow { return hubble.Meta{NodeName: "n1"}.Flow(ev) }

func l7(proto, method, host, path string, status int, latency time.Duration, verdict string) *flowpb.Flow {
	return flowOf(monitor.Event{Type: "l7", Direction: "ingress", Src: client, Dst: web, Protocol: "TCP",
		L7: &monitor.L7{Protocol: proto, Method: method, Host: host, Path: path, Status: status, Latency: latency, Verdict: verdict}})
}

// sampleFlows are one flow of every kind the node makes.
func sampleFlows() []*flowpb.Flow {
	dns := monitor.Event{Type: "l7", Direction: "egress", Src: client, Dst: netip.MustParseAddrPort("10.0.0.9:53"), Protocol: "UDP",
		L7: &monitor.L7{Protocol: "DNS/UDP", Method: "A", Host: "example.com.", Status: 3, Latency: time.Millisecond, Verdict: "forwarded"}}
	dnsOK := dns
	dnsOK.L7 = &monitor.L7{Protocol: "DNS/UDP", Method: "A", Host: "example.com.", Verdict: "forwarded",
		DNSAnswers: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}}
	return []*flowpb.Flow{
		flowOf(monitor.Event{Type: "drop", ReasonCode: datapath.ReasonPolicyDenied, Direction: "ingress", Src: client, Dst: web, Protocol: "TCP"}),
		flowOf(monitor.Event{Type: "drop", ReasonCode: datapath.ReasonCTMissing, Direction: "egress", Src: client, Dst: web, Protocol: "UDP"}),
		flowOf(monitor.Event{Type: "policy-verdict", Direction: "ingress", Src: client, Dst: web, Protocol: "TCP"}),
		l7("HTTP/1.1", "GET", "web", "/public/a", 200, 3*time.Millisecond, "forwarded"),
		l7("HTTP/1.1", "POST", "web", "/private", 403, time.Millisecond, "denied"),
		flowOf(dns), flowOf(dnsOK),
		flowOf(monitor.Event{Type: "l7", Direction: "egress", Src: client, Dst: netip.MustParseAddrPort("10.0.0.4:9092"), Protocol: "TCP",
			L7: &monitor.L7{Protocol: "Kafka", Method: "Produce", Path: "orders", Status: 0, Latency: 2 * time.Millisecond, Verdict: "forwarded"}}),
	}
}

// series maps each family of reg to its series, each written
// `label=value,...` (sorted by label, as gathered) with its value.
func series(t *testing.T, reg *prometheus.Registry) map[string]map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]float64{}
	for _, mf := range mfs {
		out[mf.GetName()] = map[string]float64{}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, lp.GetName()+"="+lp.GetValue())
			}
			out[mf.GetName()][strings.Join(ls, ",")] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	if m.GetHistogram() != nil {
		return float64(m.GetHistogram().GetSampleCount())
	}
	return m.GetCounter().GetValue()
}

func TestObserve(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	for _, f := range sampleFlows() {
		m.Observe(f)
	}
	m.Observe(nil)
	got := series(t, reg)
	want := map[string]map[string]float64{
		"hubble_flows_processed_total": {
			"subtype=,type=Drop,verdict=DROPPED":            2,
			"subtype=,type=PolicyVerdict,verdict=FORWARDED": 1,
			"subtype=HTTP,type=L7,verdict=FORWARDED":        1,
			"subtype=HTTP,type=L7,verdict=DROPPED":          1,
			"subtype=DNS,type=L7,verdict=FORWARDED":         2,
			"subtype=Kafka,type=L7,verdict=FORWARDED":       1,
		},
		"hubble_drop_total": {
			"protocol=TCP,reason=POLICY_DENIED":           2, // the datapath's and the proxy's (the denied POST)
			"protocol=UDP,reason=CT_MISSING_TCP_ACK_FLAG": 1,
		},
		"hubble_http_requests_total": {"method=GET,protocol=HTTP/1.1": 1, "method=POST,protocol=HTTP/1.1": 1},
		"hubble_http_responses_total": {
			"method=GET,protocol=HTTP/1.1,status=200":  1,
			"method=POST,protocol=HTTP/1.1,status=403": 1,
		},
		"hubble_http_request_duration_seconds": {"method=GET": 1, "method=POST": 1},
		"hubble_dns_queries_total": {
			"ips_returned=0,qtypes=A,rcode=Non-Existent Domain": 1,
			"ips_returned=2,qtypes=A,rcode=No Error":            1,
		},
		"hubble_dns_responses_total":            {"rcode=Non-Existent Domain": 1, "rcode=No Error": 1},
		"hubble_kafka_requests_total":           {"api_key=Produce,error_code=0,topic=orders": 1},
		"hubble_kafka_request_duration_seconds": {"api_key=Produce": 1},
	}
	for name, w := range want {
		if fmt.Sprint(got[name]) != fmt.Sprint(w) {
			t.Errorf("%s:\n got %v\nwant %v", name, got[name], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("families %d, want %d: %v", len(got), len(want), got)
	}
	// The GET's latency (3 ms) is in its bucket.
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "hubble_http_request_duration_seconds" {
			for _, mm := range mf.GetMetric() {
				if mm.GetLabel()[0].GetValue() == "GET" && mm.GetHistogram().GetSampleSum() != 0.003 {
					t.Errorf("GET latency sum %v, want 0.003", mm.GetHistogram().GetSampleSum())
				}
			}
		}
	}
}

// A flood of distinct hostile values (methods, protocols, status codes,
// query types, rcodes, Kafka topics, APIs and errors) does not grow the
// series past each label's bound.
func TestHostileLabelsBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	const n = 5000
	for i := range n {
		v := fmt.Sprintf("X%d", i)
		m.Observe(l7("HTTP/"+v, "M"+v, "web", "/"+v, 1000+i, time.Millisecond, "forwarded"))
		m.Observe(l7("HTTP/1.1", "GET\r\n"+v, "web", "/", 600+i, time.Millisecond, "forwarded"))
		m.Observe(flowOf(monitor.Event{Type: "l7", Direction: "egress", Src: client, Dst: web, Protocol: "UDP",
			L7: &monitor.L7{Protocol: "DNS/UDP", Method: "TYPE" + v, Host: v + ".example.", Status: 16 + i, Verdict: "forwarded",
				DNSAnswers: make([]netip.Addr, i%50)}}))
		m.Observe(flowOf(monitor.Event{Type: "l7", Direction: "egress", Src: client, Dst: web, Protocol: "TCP",
			L7: &monitor.L7{Protocol: "Kafka", Method: "api" + v, Path: "topic-" + v, Status: 200 + i, Verdict: "forwarded"}}))
		m.Observe(flowOf(monitor.Event{Type: "l7", Direction: "egress", Src: client, Dst: web, Protocol: "TCP",
			L7: &monitor.L7{Protocol: "Kafka", Method: "Fetch", Path: "bad/topic\x00" + v, Status: -2 - i, Verdict: "forwarded"}}))
		f := flowOf(monitor.Event{Type: "drop", ReasonCode: uint8(i), Direction: "ingress", Src: client, Dst: web, Protocol: "TCP"})
		f.DropReasonDesc = flowpb.DropReason(5000 + i)
		m.Observe(f)
		f = flowOf(monitor.Event{Type: "drop", ReasonCode: uint8(i), Direction: "ingress", Src: client, Dst: web, Protocol: "TCP"})
		m.Observe(f)
		f.Verdict, f.EventType.Type = flowpb.Verdict(1000+i), int32(1000+i)
		m.Observe(f)
	}
	got := series(t, reg)
	bounds := map[string]int{
		"hubble_flows_processed_total":          5,                   // Drop DROPPED, Unknown other, L7 FORWARDED x HTTP, DNS, Kafka
		"hubble_http_requests_total":            2,                   // other x other, other x HTTP/1.1
		"hubble_http_responses_total":           2,                   // statuses >= 600 are other
		"hubble_http_request_duration_seconds":  1,                   // other
		"hubble_dns_queries_total":              11,                  // other qtype, other rcode, 0-9 and 10+ addresses
		"hubble_dns_responses_total":            1,                   // other
		"hubble_kafka_requests_total":           MaxKafkaTopics + 2,  // the first topics, then other; bad topics are other
		"hubble_kafka_request_duration_seconds": MaxKafkaAPIKeys + 1, // the first APIs, then other
	}
	for name, b := range bounds {
		if len(got[name]) > b {
			t.Errorf("%s: %d series, bound %d", name, len(got[name]), b)
		}
		if len(got[name]) == 0 {
			t.Errorf("%s: no series", name)
		}
	}
	// Every drop reason the node does not name, and every datapath reason
	// it does (several map to one Hubble reason), stays within the enum.
	if d := len(got["hubble_drop_total"]); d > len(flowpb.DropReason_name)+1 || got["hubble_drop_total"]["protocol=TCP,reason=other"] != n {
		t.Errorf("hubble_drop_total: %d series: %v", d, got["hubble_drop_total"])
	}
	for s := range got["hubble_kafka_requests_total"] {
		if strings.Contains(s, "bad/topic") || strings.Contains(s, "\x00") {
			t.Errorf("a topic that is not a Kafka name has its series: %q", s)
		}
	}
	if got["hubble_kafka_requests_total"]["api_key=other,error_code=other,topic=other"] == 0 {
		t.Errorf("no other series: %v", got["hubble_kafka_requests_total"])
	}
}

// A pod's denied Kafka requests, naming topics of its choice, took the
// topic label's slots (the first MaxKafkaTopics names, kept for good):
// every real topic was "other" after. Only requests the proxy let
// through take a slot.
func TestDeniedKafkaTopicsTakeNoSlot(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	kafka := func(topic, verdict string) *flowpb.Flow {
		return flowOf(monitor.Event{Type: "l7", Direction: "ingress", Src: client, Dst: web, Protocol: "TCP",
			L7: &monitor.L7{Protocol: "Kafka", Method: "Produce", Path: topic, Status: 29, Verdict: verdict}})
	}
	for i := range MaxKafkaTopics * 2 {
		m.Observe(kafka(fmt.Sprintf("junk-%d", i), "denied"))
	}
	m.Observe(kafka("orders", "forwarded"))
	m.Observe(kafka("orders", "denied")) // a known topic keeps its name
	got := series(t, reg)["hubble_kafka_requests_total"]
	if got["api_key=Produce,error_code=29,topic=orders"] != 2 {
		t.Errorf("hubble_kafka_requests_total: %v, want topic=orders counted twice", got)
	}
	for s := range got {
		if strings.Contains(s, "junk") {
			t.Errorf("a denied request's topic has a series: %s", s)
		}
	}
}

// The Kafka API label took the first 64 API names seen, a pod's denied
// requests among them: one request per API key (93 names of kmsg's) after
// a restart, and Produce and Fetch counted as "other" from then on (found
// 2026-12-06 by a review). Every name of kmsg's table now has its series,
// and no other value takes one.
func TestKafkaAPILabelKeepsRealAPIs(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	denied := func(api string) {
		m.Observe(flowOf(monitor.Event{Type: "l7", Direction: "egress", Src: client, Dst: web, Protocol: "TCP",
			L7: &monitor.L7{Protocol: "Kafka", Method: api, Path: "t", Status: 29, Verdict: "denied"}}))
	}
	for k := range int16(1000) {
		if kmsg.RequestForKey(k) != nil && k != 0 {
			denied(kmsg.NameForKey(k))
		}
	}
	denied("Invented")
	denied("Produce")
	got := series(t, reg)["hubble_kafka_request_duration_seconds"]
	if _, ok := got["api_key=Produce"]; !ok {
		t.Errorf("Produce has no series of its own after a pod's requests of every other API: %d series", len(got))
	}
	if _, ok := got["api_key=Invented"]; ok {
		t.Error("a name kmsg does not know took a series")
	}
}
