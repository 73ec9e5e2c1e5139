// Package query turns user-facing flow filter options (the flags of
// `hubble observe` and `filament observe`, or the same options in a URL
// query) into a Hubble GetFlowsRequest, with the hubble CLI's semantics:
// an option's values combine with OR, different options with AND, and an
// option naming either end of a flow (--pod, --label, --ip, --port, ...)
// becomes two filters, one for the source and one for the destination.
package query

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	k8slabels "k8s.io/apimachinery/pkg/labels"

	"github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/agent/identity"
)

// ErrOption: an option's value does not parse, options that cannot be
// combined, or an unknown option in a URL query.
var ErrOption = errors.New("flow query")

// DefaultLast is how many of the last flows a request without --last,
// --first, --all, --follow, --since or --until asks for (hubble's 20).
const DefaultLast = 20

// maxValues bounds the values of one field of a filter (the server's
// bound: a request beyond it is refused).
const maxValues = 256

// Options select flows. Each list's values combine with OR; the options
// set combine with AND. A pod is "namespace/name" (a name prefix), "name"
// (of --namespace, else of the default namespace) or "namespace/".
type Options struct {
	Pod, FromPod, ToPod                   []string
	Label, FromLabel, ToLabel             []string
	Namespace, FromNamespace, ToNamespace []string
	IP, FromIP, ToIP                      []string
	FQDN, FromFQDN, ToFQDN                []string
	Port, FromPort, ToPort                []string
	Identity, FromIdentity, ToIdentity    []string
	Verdict, Protocol, Type               []string
	TCPFlags                              []string
	HTTPMethod, HTTPPath, HTTPStatus      []string
	NodeName                              []string

	Since, Until string // RFC 3339 (or a shorter date), or a duration ago (5m)
	Last, First  uint64 // the last or the first N flows held
	Follow, All  bool   // then the new flows as they come; all flows held
}

// ends says which end of a flow an option names.
type ends int

const (
	either ends = iota // the source or the destination: two filters
	source
	destination
	neither // the flow's own fields (verdict, protocol, ...)
	space   // a namespace, applied to the pods
)

// Filter is one filter option: its name (a flag of `filament observe`,
// the same as `hubble observe`'s, and a key of a URL query), shorthand,
// help and values.
type Filter struct {
	Name, Short, Usage string
	Values             *[]string

	ends ends
	// add appends v to ff's source field (src) or destination field, or
	// says what it wants instead.
	add func(ff *flow.FlowFilter, src bool, v string) error
}

// Filters are o's filter options, in the order the request applies them.
func (o *Options) Filters() []Filter {
	return []Filter{
		{"pod", "", "flows from or to a pod: [namespace/]name", &o.Pod, either, addPod},
		{"from-pod", "", "flows from a pod: [namespace/]name", &o.FromPod, source, addPod},
		{"to-pod", "", "flows to a pod: [namespace/]name", &o.ToPod, destination, addPod},
		{"namespace", "n", "flows from or to a namespace's pods", &o.Namespace, space, nil},
		{"from-namespace", "", "flows from a namespace's pods", &o.FromNamespace, space, nil},
		{"to-namespace", "", "flows to a namespace's pods", &o.ToNamespace, space, nil},
		{"label", "l", "flows from or to endpoints with labels (a selector: key=value, k8s:app in (a,b))", &o.Label, either, addLabel},
		{"from-label", "", "flows from endpoints with labels", &o.FromLabel, source, addLabel},
		{"to-label", "", "flows to endpoints with labels", &o.ToLabel, destination, addLabel},
		{"ip", "", "flows from or to an IP address or CIDR", &o.IP, either, addIP},
		{"from-ip", "", "flows from an IP address or CIDR", &o.FromIP, source, addIP},
		{"to-ip", "", "flows to an IP address or CIDR", &o.ToIP, destination, addIP},
		{"fqdn", "", "flows from or to a DNS name (* any run of name characters)", &o.FQDN, either, addFQDN},
		{"from-fqdn", "", "flows from a DNS name", &o.FromFQDN, source, addFQDN},
		{"to-fqdn", "", "flows to a DNS name", &o.ToFQDN, destination, addFQDN},
		{"port", "", "flows from or to a port", &o.Port, either, addPort},
		{"from-port", "", "flows from a port", &o.FromPort, source, addPort},
		{"to-port", "", "flows to a port", &o.ToPort, destination, addPort},
		{"identity", "", "flows from or to a security identity (a number or a reserved name: world, host, ...)", &o.Identity, either, addIdentity},
		{"from-identity", "", "flows from a security identity", &o.FromIdentity, source, addIdentity},
		{"to-identity", "", "flows to a security identity", &o.ToIdentity, destination, addIdentity},
		{"verdict", "", "flows with a verdict: FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRANSLATED", &o.Verdict, neither, addVerdict},
		{"protocol", "", "flows of a protocol: tcp, udp, icmp, http, dns, kafka", &o.Protocol, neither, addProtocol},
		{"type", "t", "flows of an event type: drop, trace, l7, policy-verdict (or a number), optionally :SUBTYPE (a number)", &o.Type, neither, addType},
		{"tcp-flags", "", "TCP flows with every flag of a value: comma-separated names (SYN,ACK) of FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, NS; values OR'd", &o.TCPFlags, neither, addTCPFlags},
		{"http-method", "", "HTTP requests with a method", &o.HTTPMethod, neither, addNonEmpty(func(ff *flow.FlowFilter) *[]string { return &ff.HttpMethod }, "want a method")},
		{"http-path", "", "HTTP requests whose path matches a regular expression", &o.HTTPPath, neither, addHTTPPath},
		{"http-status", "", "HTTP responses with a status code (404) or a code prefix (4+)", &o.HTTPStatus, neither, addHTTPStatus},
		{"node-name", "", "flows of a node: [cluster/]node (* any run within a part)", &o.NodeName, neither, addNonEmpty(func(ff *flow.FlowFilter) *[]string { return &ff.NodeName }, "want [cluster/]node")},
	}
}

// conflicts are the options that cannot be combined (hubble's).
var conflicts = [][]string{
	{"from-fqdn", "from-ip", "ip", "fqdn", "from-namespace", "namespace"},
	{"from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"},
	{"to-fqdn", "to-ip", "ip", "fqdn", "to-namespace", "namespace"},
	{"to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"},
	{"to-pod", "namespace"},
	{"from-pod", "namespace"},
	{"label", "from-label"},
	{"label", "to-label"},
	{"port", "to-port"},
	{"port", "from-port"},
	{"identity", "to-identity"},
	{"identity", "from-identity"},
}

func invalid(name, v, want string) error {
	return fmt.Errorf("%w: --%s %q: %s", ErrOption, name, v, want)
}

// Request builds the GetFlowsRequest o describes.
func Request(o Options) (*observer.GetFlowsRequest, error) {
	req := &observer.GetFlowsRequest{Follow: o.Follow, First: o.First > 0}
	switch {
	case o.First > 0 && o.Last > 0:
		return nil, fmt.Errorf("%w: --first and --last cannot be combined", ErrOption)
	case o.First > 0 && o.All:
		return nil, fmt.Errorf("%w: --first and --all cannot be combined", ErrOption)
	case o.First > 0 && o.Follow:
		return nil, fmt.Errorf("%w: --first and --follow cannot be combined", ErrOption)
	case o.Last > 0 && o.All:
		return nil, fmt.Errorf("%w: --last and --all cannot be combined", ErrOption)
	}
	var err error
	if req.Since, err = parseTime("since", o.Since); err != nil {
		return nil, err
	}
	if !o.Follow { // a follow runs until the client ends it (hubble's)
		if req.Until, err = parseTime("until", o.Until); err != nil {
			return nil, err
		}
	}
	switch {
	case o.First > 0:
		req.Number = o.First
	case o.Last > 0:
		req.Number = o.Last
	case req.Since != nil || req.Until != nil:
	case o.All:
		req.Number = math.MaxUint64 // hubble's "all"
	case !o.Follow:
		req.Number = DefaultLast
	}
	req.Whitelist, err = filters(&o)
	if err != nil {
		return nil, err
	}
	return req, nil
}

// filters builds the whitelist: one filter, or two when an option names
// either end (left its source, right its destination).
func filters(o *Options) ([]*flow.FlowFilter, error) {
	var set []string
	left, right := &flow.FlowFilter{}, &flow.FlowFilter{}
	for _, f := range o.Filters() {
		vals := *f.Values
		if len(vals) == 0 {
			continue
		}
		if len(vals) > maxValues {
			return nil, fmt.Errorf("%w: --%s: %d values, at most %d", ErrOption, f.Name, len(vals), maxValues)
		}
		set = append(set, f.Name)
		for _, v := range vals {
			var err error
			switch {
			case !utf8.ValidString(v): // a protobuf string is UTF-8
				err = errors.New("not valid UTF-8")
			case f.ends == space:
				if v == "" || strings.Contains(v, "/") {
					err = errors.New("want a namespace")
				}
			case f.ends == either:
				if err = f.add(left, true, v); err == nil {
					err = f.add(right, false, v)
				}
			default:
				if err = f.add(left, f.ends == source, v); err == nil {
					err = f.add(right, f.ends == source, v)
				}
			}
			if err != nil {
				return nil, invalid(f.Name, v, err.Error())
			}
		}
	}
	if len(set) == 0 {
		return nil, nil
	}
	for _, group := range conflicts {
		if in := slices.DeleteFunc(slices.Clone(group), func(n string) bool { return !slices.Contains(set, n) }); len(in) > 1 {
			return nil, fmt.Errorf("%w: --%s and --%s cannot be combined", ErrOption, in[0], in[1])
		}
	}
	if err := namespaces(o, left, right); err != nil {
		return nil, err
	}
	for _, ff := range []*flow.FlowFilter{left, right} {
		if err := bounded(ff); err != nil {
			return nil, err
		}
	}
	if proto.Equal(left, right) {
		return []*flow.FlowFilter{left}, nil
	}
	return []*flow.FlowFilter{left, right}, nil
}

// namespaces applies the namespace options to the pods: a pod without a
// namespace gets each of them, and with no pod the namespace's pods are
// selected. --namespace applies to the left filter's source and the
// right's destination; a pod naming another namespace is an error.
func namespaces(o *Options, left, right *flow.FlowFilter) error {
	type apply struct {
		name string
		ns   []string
		pods []*[]string
	}
	for _, a := range []apply{
		{"to-namespace", o.ToNamespace, []*[]string{&left.DestinationPod, &right.DestinationPod}},
		{"from-namespace", o.FromNamespace, []*[]string{&left.SourcePod, &right.SourcePod}},
		{"namespace", o.Namespace, []*[]string{&left.SourcePod, &right.DestinationPod}},
	} {
		if len(a.ns) == 0 {
			continue
		}
		for _, pods := range a.pods {
			if len(*pods) == 0 {
				*pods = []string{""}
			}
			if len(*pods)*len(a.ns) > maxValues {
				return fmt.Errorf("%w: --%s: %d pods in %d namespaces, at most %d", ErrOption, a.name, len(*pods), len(a.ns), maxValues)
			}
			var out []string
			for _, p := range *pods {
				if ns, _, ok := strings.Cut(p, "/"); ok {
					for _, n := range a.ns {
						if n != ns {
							return fmt.Errorf("%w: --%s %q does not contain pod %q", ErrOption, a.name, n, p)
						}
					}
					out = append(out, p)
					continue
				}
				for _, n := range a.ns {
					out = append(out, n+"/"+p)
				}
			}
			*pods = out
		}
	}
	return nil
}

// bounded refuses a filter with a field of more values than a server takes.
func bounded(ff *flow.FlowFilter) (err error) {
	ff.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.IsList() && v.List().Len() > maxValues {
			err = fmt.Errorf("%w: %s: %d values, at most %d", ErrOption, fd.Name(), v.List().Len(), maxValues)
		}
		return err == nil
	})
	return err
}

// timeLayouts are the times --since and --until take besides a duration
// ago (hubble's).
var timeLayouts = []string{
	"2006-01-02",
	"2006-01-02T15Z07:00",
	"2006-01-02T15:04Z07:00",
	time.RFC3339Nano,
	time.RFC1123Z,
}

// now is the clock durations count back from (tests set it).
var now = time.Now

func parseTime(name, v string) (*timestamppb.Timestamp, error) {
	if v == "" {
		return nil, nil
	}
	var t time.Time
	if d, err := time.ParseDuration(v); err == nil {
		t = now().Add(-d)
	} else {
		i := slices.IndexFunc(timeLayouts, func(l string) bool {
			var perr error
			t, perr = time.Parse(l, v)
			return perr == nil
		})
		if i < 0 {
			return nil, invalid(name, v, "want RFC 3339 (2026-12-01T10:00:00Z), a date (2026-12-01) or a duration ago (5m)")
		}
	}
	ts := timestamppb.New(t)
	if err := ts.CheckValid(); err != nil {
		return nil, invalid(name, v, "out of range")
	}
	return ts, nil
}

func addPod(ff *flow.FlowFilter, src bool, v string) error {
	if v == "/" {
		return errors.New("want namespace/name, namespace/ or name")
	}
	appendTo(pick(src, &ff.SourcePod, &ff.DestinationPod), v)
	return nil
}

func addLabel(ff *flow.FlowFilter, src bool, v string) error {
	// The server's label syntax: a key may name its source ("k8s:app"),
	// "any:" none; the source's colon is a dot for the selector parser.
	if _, err := k8slabels.Parse(strings.ReplaceAll(strings.ReplaceAll(v, "any:", ""), ":", ".")); err != nil {
		return errors.New("not a label selector: " + err.Error())
	}
	appendTo(pick(src, &ff.SourceLabel, &ff.DestinationLabel), v)
	return nil
}

func addIP(ff *flow.FlowFilter, src bool, v string) error {
	if _, err := netip.ParsePrefix(v); err != nil {
		if _, err := netip.ParseAddr(v); err != nil {
			return errors.New("not an IP address or CIDR")
		}
	}
	appendTo(pick(src, &ff.SourceIp, &ff.DestinationIp), v)
	return nil
}

func addFQDN(ff *flow.FlowFilter, src bool, v string) error {
	if v == "" || v == "." {
		return errors.New("want a DNS name")
	}
	appendTo(pick(src, &ff.SourceFqdn, &ff.DestinationFqdn), v)
	return nil
}

func addPort(ff *flow.FlowFilter, src bool, v string) error {
	p, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return errors.New("want a port number, 0-65535")
	}
	appendTo(pick(src, &ff.SourcePort, &ff.DestinationPort), strconv.FormatUint(p, 10))
	return nil
}

// reservedIdentities are the reserved identities by name.
var reservedIdentities = func() map[string]uint32 {
	m := map[string]uint32{}
	for _, r := range identity.Reserved() {
		m[r.Labels[0].Key] = uint32(r.ID)
	}
	return m
}()

func addIdentity(ff *flow.FlowFilter, src bool, v string) error {
	id, ok := reservedIdentities[strings.TrimPrefix(v, "reserved:")]
	if !ok {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			names := make([]string, 0, len(reservedIdentities))
			for n := range reservedIdentities {
				names = append(names, n)
			}
			sort.Strings(names)
			return errors.New("want a number or one of " + strings.Join(names, ", "))
		}
		id = uint32(n)
	}
	appendTo(pick(src, &ff.SourceIdentity, &ff.DestinationIdentity), id)
	return nil
}

func addVerdict(ff *flow.FlowFilter, _ bool, v string) error {
	n, ok := flow.Verdict_value[strings.ToUpper(v)]
	if !ok {
		return errors.New("want FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED or TRANSLATED")
	}
	ff.Verdict = append(ff.Verdict, flow.Verdict(n))
	return nil
}

// tcpFlagNames set each TCP flag a --tcp-flags value can name.
var tcpFlagNames = map[string]func(*flow.TCPFlags){
	"FIN": func(f *flow.TCPFlags) { f.FIN = true },
	"SYN": func(f *flow.TCPFlags) { f.SYN = true },
	"RST": func(f *flow.TCPFlags) { f.RST = true },
	"PSH": func(f *flow.TCPFlags) { f.PSH = true },
	"ACK": func(f *flow.TCPFlags) { f.ACK = true },
	"URG": func(f *flow.TCPFlags) { f.URG = true },
	"ECE": func(f *flow.TCPFlags) { f.ECE = true },
	"CWR": func(f *flow.TCPFlags) { f.CWR = true },
	"NS":  func(f *flow.TCPFlags) { f.NS = true },
}

// addTCPFlags adds one value of --tcp-flags: flag names separated by
// commas (hubble's syntax, any case), all of which a flow must have.
func addTCPFlags(ff *flow.FlowFilter, _ bool, v string) error {
	want := &flow.TCPFlags{}
	for name := range strings.SplitSeq(v, ",") {
		set, ok := tcpFlagNames[strings.ToUpper(strings.TrimSpace(name))]
		if !ok {
			return errors.New("want TCP flag names separated by commas: FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, NS")
		}
		set(want)
	}
	ff.TcpFlags = append(ff.TcpFlags, want)
	return nil
}

// protocols are the protocols a filter can name.
var protocols = []string{"tcp", "udp", "icmp", "icmpv4", "http", "dns", "kafka"}

func addProtocol(ff *flow.FlowFilter, _ bool, v string) error {
	p := strings.ToLower(v)
	if !slices.Contains(protocols, p) {
		return errors.New("want one of " + strings.Join(protocols, ", "))
	}
	ff.Protocol = append(ff.Protocol, p)
	return nil
}

// eventTypes are Hubble's event type names (the monitor's message types).
var eventTypes = map[string]int32{
	"drop": 1, "debug": 2, "capture": 3, "trace": 4, "policy-verdict": 5,
	"trace-sock": 7, "l7": 129, "agent": 130,
}

func addType(ff *flow.FlowFilter, _ bool, v string) error {
	name, sub, hasSub := strings.Cut(v, ":")
	t, ok := eventTypes[name]
	if !ok {
		n, err := strconv.ParseUint(name, 10, 8)
		if err != nil {
			return errors.New("want drop, trace, l7, policy-verdict, debug, capture, trace-sock, agent or a number 0-255")
		}
		t = int32(n)
	}
	e := &flow.EventTypeFilter{Type: t}
	if hasSub {
		n, err := strconv.ParseUint(sub, 10, 8)
		if err != nil {
			return errors.New("want a sub-type number 0-255 after the colon")
		}
		e.MatchSubType, e.SubType = true, int32(n)
	}
	ff.EventType = append(ff.EventType, e)
	return nil
}

// addNonEmpty adds any value but "" to a field of the flow's own.
func addNonEmpty(field func(*flow.FlowFilter) *[]string, want string) func(*flow.FlowFilter, bool, string) error {
	return func(ff *flow.FlowFilter, _ bool, v string) error {
		if v == "" {
			return errors.New(want)
		}
		appendTo(field(ff), v)
		return nil
	}
}

func addHTTPPath(ff *flow.FlowFilter, _ bool, v string) error {
	if _, err := regexp.Compile(v); err != nil {
		return errors.New("not a regular expression: " + err.Error())
	}
	ff.HttpPath = append(ff.HttpPath, v)
	return nil
}

var statusCode = regexp.MustCompile(`^[0-9]{1,3}\+?$`)

func addHTTPStatus(ff *flow.FlowFilter, _ bool, v string) error {
	if !statusCode.MatchString(v) {
		return errors.New("want a code (404) or a code prefix (4+)")
	}
	ff.HttpStatusCode = append(ff.HttpStatusCode, v)
	return nil
}

func pick[T any](src bool, s, d T) T {
	if src {
		return s
	}
	return d
}

func appendTo[T any](s *[]T, v T) { *s = append(*s, v) }

// FromURL reads Options from a URL query: the filter options by their
// names, repeated for more values (?pod=a&pod=b), and since, until, last,
// first, follow and all. An unknown key is an error.
func FromURL(q url.Values) (Options, error) {
	var o Options
	byName := map[string]*[]string{}
	for _, f := range o.Filters() {
		byName[f.Name] = f.Values
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		vals := q[k]
		if p, ok := byName[k]; ok {
			*p = append(*p, vals...)
			continue
		}
		if len(vals) != 1 {
			return o, fmt.Errorf("%w: %s: %d values, want one", ErrOption, k, len(vals))
		}
		v := vals[0]
		var err error
		switch k {
		case "since":
			o.Since = v
		case "until":
			o.Until = v
		case "last", "first":
			var n uint64
			if n, err = strconv.ParseUint(v, 10, 64); err != nil {
				err = invalid(k, v, "want a number")
			}
			*pick(k == "last", &o.Last, &o.First) = n
		case "follow", "all":
			b := true
			if v != "" {
				if b, err = strconv.ParseBool(v); err != nil {
					err = invalid(k, v, "want true or false")
				}
			}
			*pick(k == "follow", &o.Follow, &o.All) = b
		default:
			err = fmt.Errorf("%w: unknown option %q", ErrOption, k)
		}
		if err != nil {
			return o, err
		}
	}
	return o, nil
}
