package proxy

import (
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Verdicts of a Record: forwarded (allowed and answered by the
// upstream), denied (by policy), error (allowed, but the upstream could
// not be reached: the proxy answered it).
const (
	Forwarded = "forwarded"
	Denied    = "denied"
	Error     = "error"
)

// Record is one request the proxy handled, for one side whose policy
// applied (a request between two local endpoints with L7 policy on both
// sides gives an egress and an ingress record).
type Record struct {
	Time        time.Time     `json:"time"`
	Direction   string        `json:"direction,omitempty"` // "" when no policy applied
	Endpoint    netip.Addr    `json:"endpoint,omitzero"`
	SrcIP       netip.Addr    `json:"srcIP"`
	SrcPort     uint16        `json:"srcPort"`
	DstIP       netip.Addr    `json:"dstIP"`
	DstPort     uint16        `json:"dstPort"`
	SrcIdentity uint32        `json:"srcIdentity"`
	DstIdentity uint32        `json:"dstIdentity"`
	Protocol    string        `json:"protocol"` // HTTP/1.1, HTTP/2, gRPC, DNS/UDP, DNS/TCP, Kafka
	Method      string        `json:"method"`   // DNS: the query type; Kafka: the API (Produce, Fetch...)
	Host        string        `json:"host"`     // DNS: the name asked
	Path        string        `json:"path"`     // Kafka: the topics named, comma-separated
	Status      int           `json:"status"`   // DNS: the rcode; Kafka: a denial's error code
	DNSRcode    string        `json:"dnsRcode,omitempty"`
	DNSAnswers  []netip.Addr  `json:"dnsAnswers,omitempty"` // IPv4 addresses of the name (and its CNAMEs)
	DNSTTL      uint32        `json:"dnsTTL,omitempty"`
	DNSHeld     time.Duration `json:"dnsHeld,omitempty"` // ns the answer waited for the agent
	Latency     time.Duration `json:"latency"`           // ns, request received to response done
	Verdict     string        `json:"verdict"`
	Reason      string        `json:"reason,omitempty"`
	Notes       []string      `json:"notes,omitempty"`
}

// Bounds of a published record: a request can name more than a record
// should carry (a Kafka request's topics, a long path), and a record
// longer than a reader's bound (maxRecordBytes) would be lost whole. A
// longer string is cut and ends in "…"; notes and DNS answers past their
// bound are left out.
const (
	maxRecordString  = 16 << 10
	maxRecordNotes   = 16
	maxRecordAnswers = 256
)

// bounded is r within the bounds above (r's slices are not changed).
func (r Record) bounded() Record {
	cut := func(s string) string {
		if len(s) <= maxRecordString {
			return s
		}
		return s[:maxRecordString] + "…"
	}
	r.Method, r.Host, r.Path, r.Reason = cut(r.Method), cut(r.Host), cut(r.Path), cut(r.Reason)
	if len(r.DNSAnswers) > maxRecordAnswers {
		r.DNSAnswers = r.DNSAnswers[:maxRecordAnswers:maxRecordAnswers]
	}
	long := len(r.Notes) > maxRecordNotes
	for _, n := range r.Notes {
		long = long || len(n) > maxRecordString
	}
	if long {
		notes := make([]string, 0, maxRecordNotes)
		for _, n := range r.Notes[:min(len(r.Notes), maxRecordNotes)] {
			notes = append(notes, cut(n))
		}
		r.Notes = notes
	}
	return r
}

// subscriberBuffer is how many records a subscriber may lag behind before
// records are dropped for it.
const subscriberBuffer = 1024

// hub fans records out to subscribers without ever blocking the proxy.
type hub struct {
	mu      sync.Mutex
	subs    map[chan Record]struct{}
	dropped prometheus.Counter
}

// Subscribe returns a channel of the records from now on and a function
// that ends the subscription (and closes the channel). A subscriber that
// does not keep up loses records; they are counted in
// filament_proxy_records_dropped_total.
func (p *Proxy) Subscribe() (<-chan Record, func()) {
	h := &p.hub
	ch := make(chan Record, subscriberBuffer)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs, ch)
			h.mu.Unlock()
			close(ch)
		})
	}
}

func (h *hub) publish(r Record) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) > 0 {
		r = r.bounded()
	}
	for ch := range h.subs {
		select {
		case ch <- r:
		default:
			h.dropped.Inc()
		}
	}
}

// metrics are the proxy's Prometheus metrics, in a registry of their own.
type metrics struct {
	registry *prometheus.Registry
	requests *prometheus.CounterVec
	duration prometheus.Histogram
	dropped  prometheus.Counter

	dnsQueries *prometheus.CounterVec
	dnsHold    prometheus.Histogram
	dnsShed    prometheus.Counter
	// dnsUnsteered: datagrams the datapath did not steer, dropped.
	dnsUnsteered prometheus.Counter
	// connsRefused counts the connections closed at accept because their
	// source held MaxConnsPerSource, or the proxy MaxConns.
	connsRefused prometheus.Counter
	// connsShed counts the connections closed because a source holding
	// less than its share of a full pool took their place (MaxConns).
	connsShed prometheus.Counter
	// streamsRefused counts the HTTP/2 requests answered 503 because
	// their source had MaxStreamsPerSource in flight.
	streamsRefused prometheus.Counter

	kafkaRequests *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "filament_proxy_http_requests_total",
			Help: "HTTP requests and gRPC calls the L7 proxy handled, by verdict, method and status code.",
		}, []string{"verdict", "method", "code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "filament_proxy_http_request_duration_seconds",
			Help:    "Time from a request's arrival at the L7 proxy to the end of its response.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10), // 100 µs … 26 s
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "filament_proxy_records_dropped_total",
			Help: "L7 records a slow subscriber did not take in time.",
		}),
	}
	m.dnsQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "filament_proxy_dns_queries_total",
		Help: "DNS queries the L7 proxy handled, by verdict and the answer's rcode.",
	}, []string{"verdict", "rcode"})
	m.dnsHold = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "filament_proxy_dns_hold_seconds",
		Help:    "Time an allowed DNS answer waited for the agent to put its addresses in the datapath.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 100 µs … 3.3 s
	})
	m.dnsShed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "filament_proxy_dns_shed_total",
		Help: "DNS datagrams dropped because too many queries were being answered at once.",
	})
	m.dnsUnsteered = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "filament_proxy_dns_unsteered_total",
		Help: "DNS datagrams that reached the proxy's port without the datapath steering them (sent to it directly), dropped.",
	})
	m.connsRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "filament_proxy_connections_refused_total",
		Help: "Connections the L7 proxy closed at once because their source (address and identity) held the most it may, or the proxy did.",
	})
	m.connsShed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "filament_proxy_connections_shed_total",
		Help: "Connections the L7 proxy closed because it held the most it may and a source holding less than its fair share took their place from the source holding the most.",
	})
	m.streamsRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "filament_proxy_http2_streams_refused_total",
		Help: "HTTP/2 requests the L7 proxy answered 503 (gRPC: UNAVAILABLE) because their source (address and identity) had the most in flight it may.",
	})
	m.kafkaRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "filament_proxy_kafka_requests_total",
		Help: "Kafka requests the L7 proxy handled, by verdict and API.",
	}, []string{"verdict", "api"})
	m.registry.MustRegister(m.requests, m.duration, m.dropped, m.dnsQueries, m.dnsHold, m.dnsShed, m.dnsUnsteered, m.connsRefused, m.connsShed, m.streamsRefused, m.kafkaRequests,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observe counts r in the metrics and hands it to the subscribers.
func (p *Proxy) observe(r Record) {
	p.metrics.requests.WithLabelValues(r.Verdict, methodLabel(r.Method), codeLabel(r.Status)).Inc()
	p.metrics.duration.Observe(r.Latency.Seconds())
	p.hub.publish(r)
}

// codeLabel keeps the label set bounded: an HTTP status is the upstream's,
// a server a pod may run, which may answer any three digits. HTTP's
// registered statuses and the proxy's 499 are kept, and the small codes
// of DNS (rcodes) and Kafka (-1..127) records; others are "other".
func codeLabel(s int) string {
	if s >= -1 && s < 128 || s == statusClientGone || http.StatusText(s) != "" {
		return strconv.Itoa(s)
	}
	return "other"
}

// methodLabel keeps the label set bounded: clients choose methods.
func methodLabel(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH":
		return m
	}
	return "other"
}
