// Package hubble serves the node's flows over Hubble's gRPC API (the
// Observer and Peer services of agent/hubble/pb), so that the real
// `hubble` CLI works against a Filament node: it turns the monitor's
// events (drops, policy verdicts, service translations, L7 records)
// into Hubble flows, keeps
// them in the node's flow ring (agent/flow) and answers GetFlows with
// Hubble's filter semantics.
package hubble

import (
	"net/netip"
	"net/url"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/monitor"
)

// Hubble's event types (CiliumEventType.type) of the flows made here.
const (
	eventDrop          = 1
	eventTrace         = 4 // a NodePort translation (tc, from the network)
	eventPolicyVerdict = 5
	eventTraceSock     = 7   // a socket translation (cgroup connect/sendmsg)
	eventAccessLog     = 129 // an L7 record
)

// Meta is what events do not carry and flows need.
type Meta struct {
	NodeName    string
	ClusterName string
	// Pod names a local endpoint's namespace and pod ("" when it has
	// none, as outside Kubernetes).
	Pod func(endpoint uint16) (namespace, pod string)
	// PodAt names the pod at another node's address (of this cluster or
	// a connected one: its ipcache entry), "" when unknown.
	PodAt func(ip netip.Addr) (namespace, pod string)
	// Names are the DNS names the node's DNS proxy saw ip answered for,
	// to endpoint ep (any endpoint when ep is 0); nil: none.
	Names func(ip netip.Addr, ep uint16) []string
	// Service names the service whose frontend (a ClusterIP or NodePort
	// address and port, protocol TCP or UDP) this node load-balances,
	// "" when none (nil: never named).
	Service func(frontend netip.AddrPort, protocol string) (namespace, name string)
}

// dropReasons maps the datapath's drop reasons to Hubble's.
var dropReasons = map[uint8]flow.DropReason{
	datapath.ReasonPolicyDenied:   flow.DropReason_POLICY_DENIED,
	datapath.ReasonPolicyDenyRule: flow.DropReason_POLICY_DENY,
	datapath.ReasonCTMissing:      flow.DropReason_CT_MISSING_TCP_ACK_FLAG,
	datapath.ReasonInvalid:        flow.DropReason_INVALID_PACKET_DROPPED,
	datapath.ReasonFragment:       flow.DropReason_IP_FRAGMENTATION_NOT_SUPPORTED,
	datapath.ReasonUnsupportedL3:  flow.DropReason_UNSUPPORTED_L3_PROTOCOL,
	datapath.ReasonBadSource:      flow.DropReason_INVALID_SOURCE_IP,
	datapath.ReasonTunnelSource:   flow.DropReason_UNKNOWN_SENDER,
	datapath.ReasonNoBackend:      flow.DropReason_SERVICE_BACKEND_NOT_FOUND,
	datapath.ReasonNoEncryptPeer:  flow.DropReason_UNENCRYPTED_TRAFFIC,
	datapath.ReasonControlPort:    flow.DropReason_POLICY_DENIED,
	datapath.ReasonProxyBypass:    flow.DropReason_POLICY_DENIED,
	datapath.ReasonForgedSource:   flow.DropReason_INVALID_SOURCE_IP,
	datapath.ReasonFragNeeded:     flow.DropReason_FIB_LOOKUP_FAILED,
	datapath.ReasonNoRoute:        flow.DropReason_FIB_LOOKUP_FAILED,
	datapath.ReasonForeignVNI:     flow.DropReason_INVALID_IDENTITY,
}

// Flow turns a monitor event into a Hubble flow.
func (m Meta) Flow(ev monitor.Event) *flow.Flow {
	ev.L7 = validL7(ev.L7)
	f := &flow.Flow{
		Time:     timestamppb.New(ev.Time),
		NodeName: m.node(),
		IP:       &flow.IP{Source: ev.Src.Addr().String(), Destination: ev.Dst.Addr().String(), IpVersion: flow.IPVersion_IPv4},
		L4:       l4(ev),
		IsReply:  wrapperspb.Bool(ev.IsReply),
		Type:     flow.FlowType_L3_L4,
	}
	// The deciding endpoint is the destination on ingress, the source on
	// egress; the other side is a local endpoint when PeerEP says so.
	srcEP, dstEP := ev.Endpoint, ev.PeerEP
	f.TrafficDirection = flow.TrafficDirection_EGRESS
	if ev.Direction == "ingress" {
		srcEP, dstEP = ev.PeerEP, ev.Endpoint
		f.TrafficDirection = flow.TrafficDirection_INGRESS
	}
	f.Source = m.endpoint(srcEP, ev.Src.Addr(), uint32(ev.SrcIdentity), ev.SrcLabels)
	f.Destination = m.endpoint(dstEP, ev.Dst.Addr(), uint32(ev.DstIdentity), ev.DstLabels)
	if m.Names != nil {
		// What each side was looked up as by the other (a local endpoint
		// asking), else by any endpoint of the node.
		f.SourceNames = m.Names(ev.Src.Addr(), dstEP)
		f.DestinationNames = m.Names(ev.Dst.Addr(), srcEP)
	}
	switch ev.Type {
	case "drop":
		f.Verdict = flow.Verdict_DROPPED
		f.EventType = &flow.CiliumEventType{Type: eventDrop, SubType: int32(ev.ReasonCode)}
		f.DropReasonDesc = dropReasons[ev.ReasonCode]
		f.DropReason = uint32(f.DropReasonDesc)
	case "policy-verdict":
		f.Verdict = flow.Verdict_FORWARDED
		if ev.Redirected {
			f.Verdict = flow.Verdict_REDIRECTED // to the node's L7 proxy
		}
		f.EventType = &flow.CiliumEventType{Type: eventPolicyVerdict}
		if ev.Audit {
			// Policy audit mode: let through, with what it would
			// have been dropped for.
			f.Verdict = flow.Verdict_AUDIT
			f.DropReasonDesc = dropReasons[ev.ReasonCode]
			f.DropReason = uint32(f.DropReasonDesc)
		}
	case "translated":
		// The client to the backend chosen for the service's frontend:
		// at a socket of the node (its pod's egress) as Cilium's socket
		// LB reports it (after translation), or NodePort traffic from
		// the network (at the backend's ingress).
		f.Verdict = flow.Verdict_TRANSLATED
		if ev.Src.Addr().IsUnspecified() {
			f.IP.Source = "" // a socket of the node's own: its address is not known yet
		}
		if f.TrafficDirection == flow.TrafficDirection_EGRESS {
			f.Type = flow.FlowType_SOCK
			f.EventType = &flow.CiliumEventType{Type: eventTraceSock}
			f.SockXlatePoint = flow.SocketTranslationPoint_SOCK_XLATE_POINT_POST_DIRECTION_FWD
		} else {
			f.EventType = &flow.CiliumEventType{Type: eventTrace}
			f.TraceObservationPoint = flow.TraceObservationPoint_FROM_NETWORK
		}
		if m.Service != nil && ev.Service.IsValid() {
			if ns, name := m.Service(ev.Service, ev.Protocol); name != "" {
				f.DestinationService = &flow.Service{Name: name, Namespace: ns}
			}
		}
	case "l7":
		f.Type = flow.FlowType_L7
		f.EventType = &flow.CiliumEventType{Type: eventAccessLog}
		f.Verdict = flow.Verdict_FORWARDED
		switch {
		case ev.L7 == nil || ev.L7.Verdict == "forwarded":
		case ev.L7.Verdict == "error": // allowed, the upstream unreachable
			f.Verdict = flow.Verdict_ERROR
		default:
			f.Verdict = flow.Verdict_DROPPED
			f.DropReasonDesc = flow.DropReason_POLICY_DENIED
		}
		f.L7 = layer7(ev)
		if ev.L7 != nil && strings.HasPrefix(ev.L7.Protocol, "DNS") && ev.L7.Host != "" {
			f.DestinationNames = []string{strings.TrimSuffix(ev.L7.Host, ".")}
		}
	}
	return f
}

func (m Meta) node() string {
	if m.ClusterName == "" {
		return m.NodeName
	}
	return m.ClusterName + "/" + m.NodeName
}

// endpoint describes one side of a flow: a local endpoint (ep) by its
// pod, another by the ipcache entry of its address; its cluster is its
// identity's (the cluster label the agents set), else this one.
func (m Meta) endpoint(ep uint16, ip netip.Addr, id uint32, labels []string) *flow.Endpoint {
	e := &flow.Endpoint{ID: uint32(ep), Identity: id, ClusterName: m.ClusterName, Labels: labels}
	for _, l := range labels {
		if ns, ok := strings.CutPrefix(l, "k8s:io.kubernetes.pod.namespace="); ok {
			e.Namespace = ns
		}
		if c, ok := strings.CutPrefix(l, clusterLabel); ok {
			e.ClusterName = c
		}
	}
	var ns, pod string
	switch {
	case ep != 0 && m.Pod != nil:
		ns, pod = m.Pod(ep)
	case ep == 0 && m.PodAt != nil && ip.IsValid():
		ns, pod = m.PodAt(ip)
	}
	if pod != "" {
		e.Namespace, e.PodName = ns, pod
	}
	return e
}

// clusterLabel prefixes an identity's cluster label.
const clusterLabel = "k8s:" + labels.KeyCluster + "="

func l4(ev monitor.Event) *flow.Layer4 {
	sp, dp := uint32(ev.Src.Port()), uint32(ev.Dst.Port())
	switch strings.ToUpper(ev.Protocol) {
	case "TCP":
		return &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{SourcePort: sp, DestinationPort: dp, Flags: tcpFlags(ev)}}}
	case "UDP":
		return &flow.Layer4{Protocol: &flow.Layer4_UDP{UDP: &flow.UDP{SourcePort: sp, DestinationPort: dp}}}
	case "ICMP":
		return &flow.Layer4{Protocol: &flow.Layer4_ICMPv4{ICMPv4: &flow.ICMPv4{}}}
	}
	return nil
}

// tcpFlags are a TCP packet event's flags (none for an L7 record, which
// stands for a request rather than a packet, nor for a translation, which
// a socket's connect or the first packet's NAT stands for).
func tcpFlags(ev monitor.Event) *flow.TCPFlags {
	if ev.L7 != nil || ev.Type == "translated" {
		return nil
	}
	b := ev.TCPFlags
	return &flow.TCPFlags{
		FIN: b&monitor.TCPFlagFIN != 0, SYN: b&monitor.TCPFlagSYN != 0, RST: b&monitor.TCPFlagRST != 0,
		PSH: b&monitor.TCPFlagPSH != 0, ACK: b&monitor.TCPFlagACK != 0, URG: b&monitor.TCPFlagURG != 0,
		ECE: b&monitor.TCPFlagECE != 0, CWR: b&monitor.TCPFlagCWR != 0,
	}
}

// Bounds of a flow's L7 strings, escaped (escaping can make a string
// four times longer): a request's strings reach 16 KiB each in its
// record, and the flow ring holds thousands of flows.
const (
	maxFlowWord = 64      // protocol, method, verdict, DNS rcode
	maxFlowHost = 512     // an HTTP host, a DNS name (253 bytes at most)
	maxFlowPath = 2 << 10 // an HTTP path and query, Kafka topics
)

// validL7 is r with its strings made printable (monitor.PrintableCut:
// bytes that are not UTF-8 escaped as \xNN, characters that are neither
// graphic nor the space as \xNN or \uNNNN) and cut to the bounds above:
// they are a workload's (a Kafka topic, a query string, an HTTP/2
// method). proto3 strings must be UTF-8, so until 2026-12-04 one such
// flow failed every GetFlows (and the relay's, and the web page's) whose
// window held it; until 2026-12-06 control and format characters went on
// as they came, to `hubble observe -o json` (U+009B is a terminal's CSI)
// and to the web page, whose service map showed a topic's "\nFORWARDED
// ×4200" as a line of its own (TestControlCharactersFromWorkloadsEscaped);
// and until 2026-12-07 a flow kept them whole, so a pod's 4,095 requests
// of 16 KiB query strings of 0xff bytes held over 300 MiB in the ring
// (TestHostileL7FlowsBounded). Notes are left out: flows do not show
// them.
func validL7(r *monitor.L7) *monitor.L7 {
	if r == nil {
		return nil
	}
	cut := monitor.PrintableCut
	out := *r
	out.Protocol, out.Method, out.Verdict, out.DNSRcode = cut(r.Protocol, maxFlowWord), cut(r.Method, maxFlowWord), cut(r.Verdict, maxFlowWord), cut(r.DNSRcode, maxFlowWord)
	out.Host, out.Path = cut(r.Host, maxFlowHost), cut(r.Path, maxFlowPath)
	out.Notes = nil
	return &out
}

func layer7(ev monitor.Event) *flow.Layer7 {
	r := ev.L7
	if r == nil {
		return nil
	}
	l := &flow.Layer7{Type: flow.L7FlowType_RESPONSE, LatencyNs: uint64(r.Latency)}
	switch {
	case strings.HasPrefix(r.Protocol, "DNS"):
		d := &flow.DNS{Query: r.Host, Ttl: r.DNSTTL, Rcode: uint32(r.Status), Qtypes: []string{r.Method}, ObservationSource: "proxy"}
		for _, a := range r.DNSAnswers {
			d.Ips = append(d.Ips, a.String())
		}
		l.Record = &flow.Layer7_Dns{Dns: d}
	case r.Protocol == "Kafka":
		l.Record = &flow.Layer7_Kafka{Kafka: &flow.Kafka{ApiKey: r.Method, Topic: r.Path, ErrorCode: int32(r.Status)}}
	default: // HTTP/1.x, HTTP/2, gRPC
		// The host as a URL escapes it (a client's Host may hold what a
		// URL may not: unescaped, the URL would not parse, and its path
		// would escape --http-path).
		u := (&url.URL{Scheme: "http", Host: r.Host}).String() + r.Path
		l.Record = &flow.Layer7_Http{Http: &flow.HTTP{Code: uint32(r.Status), Method: r.Method, Url: u, Protocol: r.Protocol}}
	}
	return l
}
