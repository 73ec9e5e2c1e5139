// Package filter owns Hubble's flow filters as the node applies them: a
// request's allow and deny lists of FlowFilters compiled into a Set that
// decides each flow (Hubble's semantics: values of a field OR'd, fields of
// a filter AND'd, allow filters OR'd, any deny filter wins), refusing what
// it cannot apply, and FlowFilters read from their JSON form (config
// flags). The server, the exporter, the relay and the clients share it.
package filter

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	k8slabels "k8s.io/apimachinery/pkg/labels"

	"github.com/filament-net/filament/agent/hubble/pb/flow"
)

// ErrInvalid: a filter the server cannot apply (a field it does not
// implement, or a value that does not parse). The request is refused
// rather than answered with flows the filter would have excluded.
var ErrInvalid = errors.New("flow filter")

// match is one compiled FlowFilter: a flow passes when every field set in
// it matches (a field matches when any of its values does).
type match []func(*flow.Flow) bool

func (m match) ok(f *flow.Flow) bool {
	for _, fn := range m {
		if !fn(f) {
			return false
		}
	}
	return true
}

// Set is a request's allow and deny lists compiled: a flow passes when it
// matches an allow filter (or there is none) and no deny filter.
type Set struct{ allow, deny []match }

// Pass decides flow f.
func (fs Set) Pass(f *flow.Flow) bool {
	for _, m := range fs.deny {
		if m.ok(f) {
			return false
		}
	}
	if len(fs.allow) == 0 {
		return true
	}
	for _, m := range fs.allow {
		if m.ok(f) {
			return true
		}
	}
	return false
}

// Compile compiles allow and deny lists; a filter it cannot apply (a
// field not implemented, a value that does not parse, too many) is an
// error wrapping ErrInvalid naming it.
func Compile(allow, deny []*flow.FlowFilter) (fs Set, err error) {
	if len(allow)+len(deny) > MaxFilters {
		return fs, fmt.Errorf("%w: %d filters, at most %d", ErrInvalid, len(allow)+len(deny), MaxFilters)
	}
	for _, ff := range allow {
		m, err := compileFilter(ff)
		if err != nil {
			return fs, err
		}
		fs.allow = append(fs.allow, m)
	}
	for _, ff := range deny {
		m, err := compileFilter(ff)
		if err != nil {
			return fs, err
		}
		fs.deny = append(fs.deny, m)
	}
	return fs, nil
}

// MaxFilters and MaxValues bound what one request asks the server
// to evaluate on every flow.
const (
	MaxFilters = 64
	MaxValues  = 256
)

// compileFilter compiles the fields set in ff; a field this server does
// not implement is an error naming it.
func compileFilter(ff *flow.FlowFilter) (match, error) {
	var m match
	var err error
	add := func(fn func(*flow.Flow) bool, e error) {
		if e != nil && err == nil {
			err = e
		}
		m = append(m, fn)
	}
	ff.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.IsList() && v.List().Len() > MaxValues {
			err = fmt.Errorf("%w %s: %d values, at most %d", ErrInvalid, fd.Name(), v.List().Len(), MaxValues)
			return false
		}
		switch fd.Name() {
		case "source_ip":
			add(ipFilter(ff.SourceIp, func(f *flow.Flow) string { return f.GetIP().GetSource() }))
		case "destination_ip":
			add(ipFilter(ff.DestinationIp, func(f *flow.Flow) string { return f.GetIP().GetDestination() }))
		case "source_pod":
			add(podFilter(ff.SourcePod, (*flow.Flow).GetSource))
		case "destination_pod":
			add(podFilter(ff.DestinationPod, (*flow.Flow).GetDestination))
		case "source_label":
			add(labelFilter(ff.SourceLabel, (*flow.Flow).GetSource))
		case "destination_label":
			add(labelFilter(ff.DestinationLabel, (*flow.Flow).GetDestination))
		case "source_fqdn":
			add(fqdnFilter(ff.SourceFqdn, (*flow.Flow).GetSourceNames))
		case "destination_fqdn":
			add(fqdnFilter(ff.DestinationFqdn, (*flow.Flow).GetDestinationNames))
		case "source_cluster_name":
			add(in(ff.SourceClusterName, func(f *flow.Flow) string { return f.GetSource().GetClusterName() }), nil)
		case "destination_cluster_name":
			add(in(ff.DestinationClusterName, func(f *flow.Flow) string { return f.GetDestination().GetClusterName() }), nil)
		case "source_identity":
			add(in(ff.SourceIdentity, func(f *flow.Flow) uint32 { return f.GetSource().GetIdentity() }), nil)
		case "destination_identity":
			add(in(ff.DestinationIdentity, func(f *flow.Flow) uint32 { return f.GetDestination().GetIdentity() }), nil)
		case "verdict":
			add(in(ff.Verdict, (*flow.Flow).GetVerdict), nil)
		case "drop_reason_desc":
			add(in(ff.DropReasonDesc, (*flow.Flow).GetDropReasonDesc), nil)
		case "traffic_direction":
			add(in(ff.TrafficDirection, (*flow.Flow).GetTrafficDirection), nil)
		case "ip_version":
			add(in(ff.IpVersion, func(f *flow.Flow) flow.IPVersion { return f.GetIP().GetIpVersion() }), nil)
		case "reply":
			add(in(ff.Reply, func(f *flow.Flow) bool { return f.GetIsReply().GetValue() }), nil)
		case "event_type":
			add(eventFilter(ff.EventType), nil)
		case "protocol":
			add(protocolFilter(ff.Protocol))
		case "source_port":
			add(portFilter(ff.SourcePort, true))
		case "destination_port":
			add(portFilter(ff.DestinationPort, false))
		case "node_name":
			add(nodeFilter(ff.NodeName))
		case "http_method":
			add(func(f *flow.Flow) bool {
				h := f.GetL7().GetHttp()
				return h != nil && slices.ContainsFunc(ff.HttpMethod, func(m string) bool { return strings.EqualFold(m, h.Method) })
			}, nil)
		case "http_path":
			add(httpPathFilter(ff.HttpPath))
		case "http_status_code":
			add(statusFilter(ff.HttpStatusCode))
		case "dns_query":
			add(dnsQueryFilter(ff.DnsQuery))
		case "tcp_flags":
			add(tcpFlagsFilter(ff.TcpFlags), nil)
		default:
			err = fmt.Errorf("%w %s: not supported by this server", ErrInvalid, fd.Name())
			return false
		}
		return err == nil
	})
	return m, err
}

func in[T comparable](vals []T, get func(*flow.Flow) T) func(*flow.Flow) bool {
	return func(f *flow.Flow) bool { return slices.Contains(vals, get(f)) }
}

func ipFilter(vals []string, get func(*flow.Flow) string) (func(*flow.Flow) bool, error) {
	var ps []netip.Prefix
	for _, v := range vals {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil {
				return nil, fmt.Errorf("%w ip %q: not an address or CIDR", ErrInvalid, v)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		ps = append(ps, p)
	}
	return func(f *flow.Flow) bool {
		a, err := netip.ParseAddr(get(f))
		return err == nil && slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
	}, nil
}

// podFilter: "namespace/" matches the namespace's pods, "namespace/name"
// pods whose name starts with name, "name" alone the default namespace's,
// "/name" any namespace's (Hubble's semantics).
func podFilter(vals []string, get func(*flow.Flow) *flow.Endpoint) (func(*flow.Flow) bool, error) {
	type pod struct{ ns, prefix string }
	var ps []pod
	for _, v := range vals {
		ns, name, ok := strings.Cut(v, "/")
		if !ok {
			ns, name = "default", v
		}
		if ns == "" && name == "" {
			return nil, fmt.Errorf("%w pod %q: want namespace/name", ErrInvalid, v)
		}
		ps = append(ps, pod{ns, name})
	}
	return func(f *flow.Flow) bool {
		e := get(f)
		return e != nil && slices.ContainsFunc(ps, func(p pod) bool {
			return (p.ns == "" || e.Namespace == p.ns) && (p.prefix == "" || e.PodName != "" && strings.HasPrefix(e.PodName, p.prefix))
		})
	}, nil
}

// labelFilter: Kubernetes label selectors; a key may name the label's
// source ("k8s:app") or not ("app" or "any:app": any source). A source's
// colon becomes a dot for the selector parser (label values have none).
func labelFilter(vals []string, get func(*flow.Flow) *flow.Endpoint) (func(*flow.Flow) bool, error) {
	var sels []k8slabels.Selector
	for _, v := range vals {
		s, err := k8slabels.Parse(strings.ReplaceAll(strings.ReplaceAll(v, "any:", ""), ":", "."))
		if err != nil {
			return nil, fmt.Errorf("%w label %q: %w", ErrInvalid, v, err)
		}
		sels = append(sels, s)
	}
	return func(f *flow.Flow) bool {
		e := get(f)
		if e == nil {
			return false
		}
		set := k8slabels.Set{}
		for _, l := range e.Labels {
			k, v, _ := strings.Cut(l, "=")
			if src, bare, ok := strings.Cut(k, ":"); ok {
				set[src+"."+bare] = v
				k = bare
			}
			set[k] = v
		}
		return slices.ContainsFunc(sels, func(s k8slabels.Selector) bool { return s.Matches(set) })
	}, nil
}

// namePatterns compiles name patterns, * standing for any run of the
// characters in class (case-insensitive, a trailing dot ignored).
func namePatterns(field string, vals []string, class string) ([]*regexp.Regexp, error) {
	res := make([]*regexp.Regexp, 0, len(vals))
	for _, v := range vals {
		if v == "" {
			return nil, fmt.Errorf("%w %s: an empty pattern", ErrInvalid, field)
		}
		re, err := regexp.Compile("(?i)^" + strings.ReplaceAll(regexp.QuoteMeta(strings.TrimSuffix(v, ".")), `\*`, class+"*") + "$")
		if err != nil {
			return nil, fmt.Errorf("%w %s %q: %w", ErrInvalid, field, v, err)
		}
		res = append(res, re)
	}
	return res, nil
}

// fqdnFilter: DNS name patterns, * any run of name characters, dots
// included (Hubble's).
func fqdnFilter(vals []string, get func(*flow.Flow) []string) (func(*flow.Flow) bool, error) {
	res, err := namePatterns("fqdn", vals, `[-.0-9a-z_]`)
	if err != nil {
		return nil, err
	}
	return func(f *flow.Flow) bool {
		for _, n := range get(f) {
			if slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(strings.TrimSuffix(n, ".")) }) {
				return true
			}
		}
		return false
	}, nil
}

// nodeFilter: "cluster/node" patterns, * any run within a part; a pattern
// without a cluster part matches the node in any cluster (Hubble's).
func nodeFilter(vals []string) (func(*flow.Flow) bool, error) {
	full := make([]string, len(vals))
	for i, v := range vals {
		if full[i] = v; !strings.Contains(v, "/") {
			full[i] = "*/" + v
		}
	}
	res, err := namePatterns("node_name", full, `[^/]`)
	if err != nil {
		return nil, err
	}
	return func(f *flow.Flow) bool {
		n := f.GetNodeName()
		if !strings.Contains(n, "/") {
			n = "/" + n // a node named without its cluster
		}
		return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(n) })
	}, nil
}

func eventFilter(vals []*flow.EventTypeFilter) func(*flow.Flow) bool {
	return func(f *flow.Flow) bool {
		t := f.GetEventType()
		return slices.ContainsFunc(vals, func(e *flow.EventTypeFilter) bool {
			return t.GetType() == e.GetType() && (!e.GetMatchSubType() || t.GetSubType() == e.GetSubType())
		})
	}
}

// tcpFlagsFilter: a flow with TCP flags matches a value when it has every
// flag the value sets (others may be set too); the values are OR'd
// (Hubble's: --tcp-flags SYN matches a SYN and a SYN-ACK).
func tcpFlagsFilter(vals []*flow.TCPFlags) func(*flow.Flow) bool {
	return func(f *flow.Flow) bool {
		have := f.GetL4().GetTCP().GetFlags()
		if have == nil {
			return false
		}
		return slices.ContainsFunc(vals, func(w *flow.TCPFlags) bool {
			return (!w.GetFIN() || have.FIN) && (!w.GetSYN() || have.SYN) && (!w.GetRST() || have.RST) &&
				(!w.GetPSH() || have.PSH) && (!w.GetACK() || have.ACK) && (!w.GetURG() || have.URG) &&
				(!w.GetECE() || have.ECE) && (!w.GetCWR() || have.CWR) && (!w.GetNS() || have.NS)
		})
	}
}

func protocolFilter(vals []string) (func(*flow.Flow) bool, error) {
	for _, v := range vals {
		switch strings.ToLower(v) {
		case "tcp", "udp", "icmp", "icmpv4", "http", "dns", "kafka":
		default:
			return nil, fmt.Errorf("%w protocol %q: not supported by this server", ErrInvalid, v)
		}
	}
	return func(f *flow.Flow) bool {
		return slices.ContainsFunc(vals, func(v string) bool {
			switch strings.ToLower(v) {
			case "tcp":
				return f.GetL4().GetTCP() != nil
			case "udp":
				return f.GetL4().GetUDP() != nil
			case "icmp", "icmpv4":
				return f.GetL4().GetICMPv4() != nil
			case "http":
				return f.GetL7().GetHttp() != nil
			case "dns":
				return f.GetL7().GetDns() != nil
			case "kafka":
				return f.GetL7().GetKafka() != nil
			}
			return false
		})
	}, nil
}

func portFilter(vals []string, source bool) (func(*flow.Flow) bool, error) {
	var ports []uint32
	for _, v := range vals {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("%w port %q: not a port number", ErrInvalid, v)
		}
		ports = append(ports, uint32(p))
	}
	return func(f *flow.Flow) bool {
		var sp, dp uint32
		switch {
		case f.GetL4().GetTCP() != nil:
			sp, dp = f.GetL4().GetTCP().SourcePort, f.GetL4().GetTCP().DestinationPort
		case f.GetL4().GetUDP() != nil:
			sp, dp = f.GetL4().GetUDP().SourcePort, f.GetL4().GetUDP().DestinationPort
		default:
			return false
		}
		if source {
			return slices.Contains(ports, sp)
		}
		return slices.Contains(ports, dp)
	}, nil
}

// httpPathFilter: regular expressions (RE2) matched against the URL's path.
func httpPathFilter(vals []string) (func(*flow.Flow) bool, error) {
	res, err := regexps("http_path", vals)
	if err != nil {
		return nil, err
	}
	return func(f *flow.Flow) bool {
		h := f.GetL7().GetHttp()
		if h == nil {
			return false
		}
		u, err := url.Parse(h.Url)
		if err != nil {
			return false
		}
		return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(u.Path) })
	}, nil
}

// statusFilter: "404" exactly, or "4+" any code starting with 4.
func statusFilter(vals []string) (func(*flow.Flow) bool, error) {
	for _, v := range vals {
		d := strings.TrimSuffix(v, "+")
		if _, err := strconv.ParseUint(d, 10, 16); err != nil || d == "" || len(d) > 3 {
			return nil, fmt.Errorf("%w http_status_code %q: want a code or a prefix with +", ErrInvalid, v)
		}
	}
	return func(f *flow.Flow) bool {
		h := f.GetL7().GetHttp()
		if h == nil {
			return false
		}
		code := strconv.FormatUint(uint64(h.Code), 10)
		return slices.ContainsFunc(vals, func(v string) bool {
			if p, ok := strings.CutSuffix(v, "+"); ok {
				return strings.HasPrefix(code, p)
			}
			return code == v
		})
	}, nil
}

func dnsQueryFilter(vals []string) (func(*flow.Flow) bool, error) {
	res, err := regexps("dns_query", vals)
	if err != nil {
		return nil, err
	}
	return func(f *flow.Flow) bool {
		d := f.GetL7().GetDns()
		return d != nil && slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(d.Query) })
	}, nil
}

// regexps compiles a filter field's regular expressions (RE2).
func regexps(field string, vals []string) ([]*regexp.Regexp, error) {
	res := make([]*regexp.Regexp, 0, len(vals))
	for _, v := range vals {
		re, err := regexp.Compile(v)
		if err != nil {
			return nil, fmt.Errorf("%w %s %q: %w", ErrInvalid, field, v, err)
		}
		res = append(res, re)
	}
	return res, nil
}

// Parse reads FlowFilters written in Hubble's JSON form (its proto
// field names or their JSON names), one or more objects separated by
// commas or spaces, or a JSON array of them: `{"verdict":["DROPPED"]}
// {"source_pod":["default/"]}`. Empty is none.
func Parse(s string) ([]*flow.FlowFilter, error) {
	var raws []json.RawMessage
	if s = strings.TrimSpace(s); strings.HasPrefix(s, "[") {
		if err := json.Unmarshal([]byte(s), &raws); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		s = ""
	}
	for s = strings.TrimLeft(s, " \t\r\n,"); s != ""; s = strings.TrimLeft(s, " \t\r\n,") {
		dec := json.NewDecoder(strings.NewReader(s))
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		raws = append(raws, raw)
		s = s[dec.InputOffset():]
	}
	out := make([]*flow.FlowFilter, 0, len(raws))
	for _, raw := range raws {
		ff := &flow.FlowFilter{}
		if err := protojson.Unmarshal(raw, ff); err != nil {
			return nil, fmt.Errorf("%w %s: %v", ErrInvalid, raw, err)
		}
		out = append(out, ff)
	}
	return out, nil
}

// InWindow tells whether t lies within a request's since and until (both
// ends included; either nil or the zero time: unbounded on that side).
// A node's server and the relay select flows by it alike.
func InWindow(t time.Time, since, until *timestamppb.Timestamp) bool {
	if since != nil {
		if s := since.AsTime(); !s.IsZero() && t.Before(s) {
			return false
		}
	}
	if until != nil {
		if u := until.AsTime(); !u.IsZero() && t.After(u) {
			return false
		}
	}
	return true
}
