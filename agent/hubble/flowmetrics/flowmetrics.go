// Package flowmetrics derives Prometheus metrics from the node's Hubble
// flows, with names and labels close to Hubble's (hubble_flows_processed_total,
// hubble_drop_total, hubble_http_*, hubble_dns_*, hubble_kafka_*), so
// existing dashboards and alerts need little change.
//
// Label values come from flows a workload caused (an HTTP method, a Kafka
// topic, a DNS query type): each label takes its values from a fixed set
// or a capped one, anything else counting as "other", so no input can grow
// the number of series past a bound.
package flowmetrics

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kmsg"

	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
)

// Other is the label value of whatever is outside a label's bound.
const Other = "other"

// Caps on the distinct values of the labels that have no fixed set: the
// first values seen keep their own series, later ones count as Other.
const (
	MaxKafkaTopics = 100
	// MaxKafkaAPIKeys holds every API name of kmsg's table (kafkaAPINames,
	// about 96), the only values that take one.
	MaxKafkaAPIKeys = 128
)

// kafkaAPINames are the Kafka API names (kmsg's): the proxy names a
// request's API with them. Until 2026-12-06 any value took one of 64
// slots, and a pod's denied requests of as many APIs after a restart
// left Produce and Fetch counted as "other"
// (TestKafkaAPILabelKeepsRealAPIs).
var kafkaAPINames = func() map[string]bool {
	m := map[string]bool{}
	for k := range int16(1000) {
		if kmsg.RequestForKey(k) != nil {
			m[kmsg.NameForKey(k)] = true
		}
	}
	return m
}()

// Metrics are the flow metrics registered with one registry.
type Metrics struct {
	flows        *prometheus.CounterVec
	drops        *prometheus.CounterVec
	httpRequests *prometheus.CounterVec
	httpResps    *prometheus.CounterVec
	httpDuration *prometheus.HistogramVec
	dnsQueries   *prometheus.CounterVec
	dnsResps     *prometheus.CounterVec
	kafka        *prometheus.CounterVec
	kafkaDur     *prometheus.HistogramVec

	topics, apiKeys *capped
}

// New registers the flow metrics with reg.
func New(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "hubble", Name: name, Help: help}, labels)
		reg.MustRegister(c)
		return c
	}
	histogram := func(name, help string, labels ...string) *prometheus.HistogramVec {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "hubble", Name: name, Help: help,
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, labels)
		reg.MustRegister(h)
		return h
	}
	return &Metrics{
		flows:        counter("flows_processed_total", "Flows the node recorded, by event type, subtype (L7 protocol) and verdict.", "type", "subtype", "verdict"),
		drops:        counter("drop_total", "Dropped flows, by Hubble drop reason and L4 protocol.", "reason", "protocol"),
		httpRequests: counter("http_requests_total", "HTTP requests the L7 proxy saw, by method and protocol.", "method", "protocol"),
		httpResps:    counter("http_responses_total", "HTTP responses (the proxy's own for denied requests included), by method, protocol and status.", "method", "protocol", "status"),
		httpDuration: histogram("http_request_duration_seconds", "Time from an HTTP request to its response, through the L7 proxy.", "method"),
		dnsQueries:   counter("dns_queries_total", "DNS queries the L7 proxy saw, by the answer's rcode, the query types and the number of addresses returned.", "rcode", "qtypes", "ips_returned"),
		dnsResps:     counter("dns_responses_total", "DNS responses sent back to the client (the proxy's own for denied queries included), by rcode.", "rcode"),
		kafka:        counter("kafka_requests_total", "Kafka requests the L7 proxy saw, by topic, API and error code.", "topic", "api_key", "error_code"),
		kafkaDur:     histogram("kafka_request_duration_seconds", "Time the L7 proxy took over a Kafka request.", "api_key"),
		topics:       newCapped(MaxKafkaTopics),
		apiKeys:      newCapped(MaxKafkaAPIKeys),
	}
}

// Observe counts one flow.
func (m *Metrics) Observe(f *flowpb.Flow) {
	if f == nil {
		return
	}
	l7 := f.GetL7()
	m.flows.WithLabelValues(eventType(f), subtype(l7), enumName(flowpb.Verdict_name, int32(f.GetVerdict()))).Inc()
	if f.GetVerdict() == flowpb.Verdict_DROPPED {
		m.drops.WithLabelValues(enumName(flowpb.DropReason_name, int32(f.GetDropReasonDesc())), l4Protocol(f)).Inc()
	}
	if l7 == nil {
		return
	}
	latency := time.Duration(l7.GetLatencyNs()).Seconds()
	switch r := l7.GetRecord().(type) {
	case *flowpb.Layer7_Http:
		// The proxy records a request with its response: one flow counts
		// the request, and the response when it has one.
		method, proto := httpMethod(r.Http.GetMethod()), httpProtocol(r.Http.GetProtocol())
		m.httpRequests.WithLabelValues(method, proto).Inc()
		if l7.GetType() == flowpb.L7FlowType_RESPONSE {
			m.httpResps.WithLabelValues(method, proto, httpStatus(r.Http.GetCode())).Inc()
			m.httpDuration.WithLabelValues(method).Observe(latency)
		}
	case *flowpb.Layer7_Dns:
		// The proxy records a query with its answer: one flow counts both.
		rcode := dnsRcode(r.Dns.GetRcode())
		m.dnsQueries.WithLabelValues(rcode, dnsQtypes(r.Dns.GetQtypes()), ipsReturned(len(r.Dns.GetIps()))).Inc()
		if l7.GetType() == flowpb.L7FlowType_RESPONSE {
			m.dnsResps.WithLabelValues(rcode).Inc()
		}
	case *flowpb.Layer7_Kafka:
		api := m.apiKeys.value(r.Kafka.GetApiKey(), 64, kafkaAPINames[r.Kafka.GetApiKey()])
		// A denied request's topic is the pod's choice, not a topic the
		// policy let it use: it takes no slot (until 2026-12-04 a pod's
		// denied requests could take them all).
		topic := m.topics.value(r.Kafka.GetTopic(), 249, f.GetVerdict() != flowpb.Verdict_DROPPED)
		m.kafka.WithLabelValues(topic, api, kafkaError(r.Kafka.GetErrorCode())).Inc()
		m.kafkaDur.WithLabelValues(api).Observe(latency)
	}
}

// Hubble's names of the event types of the flows the node makes.
var eventTypes = map[int32]string{1: "Drop", 4: "Trace", 5: "PolicyVerdict", 7: "SockTrace", 129: "L7"}

func eventType(f *flowpb.Flow) string {
	if t, ok := eventTypes[f.GetEventType().GetType()]; ok {
		return t
	}
	if f.GetType() == flowpb.FlowType_L7 {
		return "L7"
	}
	return "Unknown"
}

func subtype(l7 *flowpb.Layer7) string {
	switch l7.GetRecord().(type) {
	case *flowpb.Layer7_Http:
		return "HTTP"
	case *flowpb.Layer7_Dns:
		return "DNS"
	case *flowpb.Layer7_Kafka:
		return "Kafka"
	}
	return ""
}

// enumName is a protobuf enum value's name, Other for a number the enum
// does not name.
func enumName(names map[int32]string, v int32) string {
	if n, ok := names[v]; ok {
		return n
	}
	return Other
}

func l4Protocol(f *flowpb.Flow) string {
	switch f.GetL4().GetProtocol().(type) {
	case *flowpb.Layer4_TCP:
		return "TCP"
	case *flowpb.Layer4_UDP:
		return "UDP"
	case *flowpb.Layer4_ICMPv4:
		return "ICMPv4"
	case *flowpb.Layer4_ICMPv6:
		return "ICMPv6"
	case *flowpb.Layer4_SCTP:
		return "SCTP"
	}
	return ""
}

// oneOf returns v when it is in set, else Other.
func oneOf(v string, set ...string) string {
	for _, s := range set {
		if v == s {
			return v
		}
	}
	return Other
}

func httpMethod(m string) string {
	return oneOf(m, http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace)
}

func httpProtocol(p string) string {
	return oneOf(p, "HTTP/1.0", "HTTP/1.1", "HTTP/2", "gRPC")
}

// httpStatus is a registered status code, else Other.
func httpStatus(code uint32) string {
	if code > 999 || http.StatusText(int(code)) == "" {
		return Other
	}
	return strconv.Itoa(int(code))
}

// dnsRcodes are the rcodes of RFC 1035 and 2136 by name, as Hubble's.
var dnsRcodes = []string{"No Error", "Format Error", "Server Failure", "Non-Existent Domain", "Not Implemented",
	"Query Refused", "Name Exists when it should not", "RR Set Exists when it should not",
	"RR Set that should exist does not", "Server Not Authoritative for zone", "Name not contained in zone"}

func dnsRcode(rc uint32) string {
	if rc < uint32(len(dnsRcodes)) {
		return dnsRcodes[rc]
	}
	return Other
}

var knownQtypes = []string{"A", "AAAA", "ANY", "CAA", "CNAME", "HTTPS", "MX", "NS", "PTR", "SOA", "SRV", "SVCB", "TXT"}

// dnsQtypes joins the query types (a query has one, in practice); a list
// of more than one, or an unknown type, is Other.
func dnsQtypes(qs []string) string {
	if len(qs) != 1 {
		return Other
	}
	return oneOf(qs[0], knownQtypes...)
}

// ipsReturned is the number of addresses of an answer, "10+" from ten.
func ipsReturned(n int) string {
	if n >= 10 {
		return "10+"
	}
	return strconv.Itoa(n)
}

// kafkaError is a Kafka error code (-1 to 127: the protocol's range with
// room to grow), else Other.
func kafkaError(code int32) string {
	if code < -1 || code > 127 {
		return Other
	}
	return strconv.Itoa(int(code))
}

// capped keeps the first max distinct values it is given to take; later
// ones, those not to take and not kept already, and values too long or
// not of Kafka's name characters, are Other ("" stays "": a request
// without a topic).
type capped struct {
	mu   sync.Mutex
	max  int
	seen map[string]struct{}
}

func newCapped(max int) *capped { return &capped{max: max, seen: map[string]struct{}{}} }

func (c *capped) value(v string, maxLen int, take bool) string {
	if v == "" {
		return ""
	}
	if len(v) > maxLen || strings.IndexFunc(v, notNameRune) >= 0 {
		return Other
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.seen[v]; ok {
		return v
	}
	if !take || len(c.seen) >= c.max {
		return Other
	}
	c.seen[v] = struct{}{}
	return v
}

// notNameRune: a Kafka topic (and an API's name) is of ASCII letters,
// digits, '.', '_' and '-'.
func notNameRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
}
