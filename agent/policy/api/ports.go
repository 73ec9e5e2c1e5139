package api

// Checks of toPorts (L4 ports and L7 rules) and icmps.

import (
	"cmp"
	"golang.org/x/net/http/httpguts"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

var protocols = []Protocol{ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMP, ProtoICMPv6, ProtoAny}

// ports checks the toPorts and icmps of an ingress or egress rule at p.
func (v *validator) ports(p fieldPath, prs []PortRule, icmps []ICMPRule, deny bool) {
	if len(prs) > 0 && len(icmps) > 0 {
		v.addf(p.child("icmps"), "cannot be combined with toPorts in one rule")
	}
	for i := range prs {
		v.portRule(p.child("toPorts").index(i), &prs[i], deny)
	}
	for i, r := range icmps {
		v.icmpRule(p.child("icmps").index(i), r)
	}
}

func (v *validator) portRule(p fieldPath, pr *PortRule, deny bool) {
	if len(pr.Ports) == 0 {
		v.addf(p.child("ports"), "at least one port is required")
	}
	for i, pp := range pr.Ports {
		v.portProtocol(p.child("ports").index(i), pp)
	}
	if deny {
		for i, pp := range pr.Ports {
			if _, numeric := PortNumber(pp.Port); v.strict && !numeric && pp.Port != "" {
				v.addf(p.child("ports").index(i).child("port"), "named port %q in a deny rule: named ports are not resolved yet, so it would deny nothing", pp.Port)
			}
		}
		if pr.Rules != nil {
			v.addf(p.child("rules"), "L7 rules are not allowed in a deny rule")
		}
		if len(pr.ServerNames) > 0 {
			v.addf(p.child("serverNames"), "not allowed in a deny rule")
		}
		return
	}
	for i, n := range pr.ServerNames {
		if !serverName.MatchString(n) || len(n) > 253 {
			v.addf(p.child("serverNames").index(i), "%q is not a DNS name (optionally starting with '*.')", n)
		}
	}
	if pr.Rules != nil {
		v.l7(p, pr)
	}
}

var serverName = regexp.MustCompile(`^(\*\.)?[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*$`)

// PortNumber reads a decimal port: numeric is false when s is not all
// digits, and n is -1 for a number above 65535.
func PortNumber(s string) (n int, numeric bool) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > 65535 {
		return -1, true
	}
	return n, true
}

func (v *validator) portProtocol(p fieldPath, pp PortProtocol) {
	proto := pp.Protocol
	if proto == "" {
		proto = ProtoAny
	}
	if !slices.Contains(protocols, proto) {
		v.addf(p.child("protocol"), "%q is not one of %s", pp.Protocol, join(protocols))
		return
	}
	port := pp.Port
	if port == "" {
		port = "0"
	}
	n, numeric := PortNumber(port)
	switch {
	case !numeric:
		if !isPortName(port) {
			v.addf(p.child("port"), "%q is not a port number 1-65535 or a port name (at most 15 lowercase alphanumerics and '-', with a letter)", port)
		} else if proto == ProtoICMP || proto == ProtoICMPv6 {
			v.addf(p.child("port"), "%q: protocol %s has no ports; use icmps", port, proto)
		}
		if pp.EndPort != 0 {
			v.addf(p.child("endPort"), "%d: only allowed with a numeric port", pp.EndPort)
		}
		return
	case n < 0:
		v.addf(p.child("port"), "%q is not a port number 1-65535", port)
		return
	case n == 0 && proto == ProtoAny && pp.Port == "":
		v.addf(p.child("port"), "required (or \"0\" for all ports of a protocol other than ANY)")
	case n == 0 && proto == ProtoAny:
		v.addf(p.child("port"), "%q (all ports) needs a protocol other than ANY; to allow all ports, omit toPorts", pp.Port)
	case n != 0 && (proto == ProtoICMP || proto == ProtoICMPv6):
		v.addf(p.child("port"), "%q: protocol %s has no ports; use port \"0\" or icmps", port, proto)
	}
	switch {
	case pp.EndPort == 0:
	case n == 0:
		v.addf(p.child("endPort"), "%d: needs a non-zero port", pp.EndPort)
	case pp.EndPort < 0 || pp.EndPort > 65535:
		v.addf(p.child("endPort"), "%d is not a port number 1-65535", pp.EndPort)
	case int(pp.EndPort) < n:
		v.addf(p.child("endPort"), "%d is less than port %d", pp.EndPort, n)
	}
}

// isPortName checks an IANA service name: 1-15 lowercase alphanumerics and
// '-', at least one letter, no '-' at either end or twice in a row.
func isPortName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return false
	}
	letter := false
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z':
			letter = true
		case c >= '0' && c <= '9', c == '-':
		default:
			return false
		}
	}
	return letter
}

var (
	headerName = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	kafkaTopic = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,255}$`)
	kafkaRoles = []string{"produce", "consume"}
	// KafkaAPIKeys are the API key names rules.kafka[].apiKey takes:
	// franz-go's kmsg names in lower case (the proxy's parser; a test in
	// agent/proxy keeps the two lists equal) and Cilium's "offsets".
	KafkaAPIKeys = []string{"offsets", "produce", "fetch", "listoffsets", "metadata", "leaderandisr", "stopreplica", "updatemetadata", "controlledshutdown", "offsetcommit", "offsetfetch", "findcoordinator", "joingroup", "heartbeat", "leavegroup", "syncgroup", "describegroups", "listgroups", "saslhandshake", "apiversions", "createtopics", "deletetopics", "deleterecords", "initproducerid", "offsetforleaderepoch", "addpartitionstotxn", "addoffsetstotxn", "endtxn", "writetxnmarkers", "txnoffsetcommit", "describeacls", "createacls", "deleteacls", "describeconfigs", "alterconfigs", "alterreplicalogdirs", "describelogdirs", "saslauthenticate", "createpartitions", "createdelegationtoken", "renewdelegationtoken", "expiredelegationtoken", "describedelegationtoken", "deletegroups", "electleaders", "incrementalalterconfigs", "alterpartitionassignments", "listpartitionreassignments", "offsetdelete", "describeclientquotas", "alterclientquotas", "describeuserscramcredentials", "alteruserscramcredentials", "vote", "beginquorumepoch", "endquorumepoch", "describequorum", "alterpartition", "updatefeatures", "envelope", "fetchsnapshot", "describecluster", "describeproducers", "brokerregistration", "brokerheartbeat", "unregisterbroker", "describetransactions", "listtransactions", "allocateproducerids", "consumergroupheartbeat", "consumergroupdescribe", "controllerregistration", "gettelemetrysubscriptions", "pushtelemetry", "assignreplicastodirs", "listconfigresources", "describetopicpartitions", "sharegroupheartbeat", "sharegroupdescribe", "sharefetch", "shareacknowledge", "addraftvoter", "removeraftvoter", "updateraftvoter", "initializesharegroupstate", "readsharegroupstate", "writesharegroupstate", "deletesharegroupstate", "readsharegroupstatesummary", "streamsgroupheartbeat", "streamsgroupdescribe", "describesharegroupoffsets", "altersharegroupoffsets", "deletesharegroupoffsets", "streamsgrouptopologydescriptionupdate", "unregistercontroller"}
)

// l7 checks the L7 rules of pr (at p, the port rule) and that its ports'
// protocols can carry them.
func (v *validator) l7(p fieldPath, pr *PortRule) {
	rp := p.child("rules")
	r := pr.Rules
	var kinds []string
	if len(r.HTTP) > 0 {
		kinds = append(kinds, "http")
	}
	if len(r.Kafka) > 0 {
		kinds = append(kinds, "kafka")
	}
	if len(r.DNS) > 0 {
		kinds = append(kinds, "dns")
	}
	if len(kinds) == 0 {
		v.addf(rp, "needs http, kafka or dns rules")
		return
	}
	if len(kinds) > 1 {
		v.addf(rp, "%s cannot be combined in one port rule", strings.Join(kinds, " and "))
	}
	for i, h := range r.HTTP {
		hp := rp.child("http").index(i)
		v.regex(hp.child("method"), h.Method)
		v.regex(hp.child("path"), h.Path)
		v.regex(hp.child("host"), h.Host)
		for j, hdr := range h.Headers {
			name, _, _ := strings.Cut(hdr, ":")
			if name = strings.TrimSpace(name); !headerName.MatchString(name) {
				v.addf(hp.child("headers").index(j), "%q is not `Name` or `Name: value`", hdr)
			}
		}
		for j, m := range h.HeaderMatches {
			mp := hp.child("headerMatches").index(j)
			if !headerName.MatchString(m.Name) {
				v.addf(mp.child("name"), "%q is not an HTTP header name", m.Name)
			}
			if !httpguts.ValidHeaderFieldValue(m.Value) {
				v.addf(mp.child("value"), "%q is not an HTTP header value", m.Value)
			}
			if m.Mismatch != "" && !slices.Contains(HeaderMismatchActions, m.Mismatch) {
				v.addf(mp.child("mismatch"), "%q is not one of %s", m.Mismatch, strings.Join(HeaderMismatchActions, ", "))
			}
			// Only on import: a policy stored before 2026-12-06 still loads
			// (the proxy drops the rule), or the agent would not start.
			if v.strict && strings.EqualFold(m.Name, "Host") {
				switch {
				case m.Mismatch == "DELETE":
					v.addf(mp.child("mismatch"), "DELETE of Host: a request keeps its host")
				case (m.Mismatch == "ADD" || m.Mismatch == "REPLACE") && (m.Value == "" || !httpguts.ValidHostHeader(m.Value)):
					v.addf(mp.child("value"), "%s of Host needs a host, not %q", m.Mismatch, m.Value)
				}
			}
		}
	}
	if len(r.HTTP) > 0 {
		for i, pp := range pr.Ports {
			n, numeric := PortNumber(cmp.Or(pp.Port, "0"))
			if !numeric || n <= 0 || (pp.EndPort != 0 && int(pp.EndPort) != n) {
				v.addf(p.child("ports").index(i).child("port"), "%q: HTTP rules need one numeric port", pp.Port)
			}
		}
	}
	for i, k := range r.Kafka {
		kp := rp.child("kafka").index(i)
		if k.Role != "" && !slices.Contains(kafkaRoles, k.Role) {
			v.addf(kp.child("role"), "%q is not one of produce, consume", k.Role)
		}
		if k.APIKey != "" && !slices.Contains(KafkaAPIKeys, strings.ToLower(k.APIKey)) {
			v.addf(kp.child("apiKey"), "%q is not a Kafka API key name", k.APIKey)
		}
		if k.Role != "" && k.APIKey != "" {
			v.addf(kp.child("apiKey"), "cannot be combined with role")
		}
		if k.APIVersion != "" {
			if _, err := strconv.ParseUint(k.APIVersion, 10, 15); err != nil {
				v.addf(kp.child("apiVersion"), "%q is not a Kafka API version number", k.APIVersion)
			}
		}
		if k.Topic != "" && !kafkaTopic.MatchString(k.Topic) {
			v.addf(kp.child("topic"), "%q is not a Kafka topic (at most 255 alphanumerics, '.', '_' and '-')", k.Topic)
		}
	}
	for i, d := range r.DNS {
		v.fqdn(rp.child("dns").index(i), FQDNSelector(d))
	}
	for i, pp := range pr.Ports {
		proto := pp.Protocol
		switch {
		case proto == "" || proto == ProtoAny || proto == ProtoTCP:
		case !slices.Contains(protocols, proto): // reported by portProtocol
		case proto == ProtoUDP && len(kinds) == 1 && kinds[0] == "dns":
		default:
			v.addf(p.child("ports").index(i).child("protocol"), "%q cannot carry %s rules", proto, strings.Join(kinds, "/"))
		}
	}
}

func (v *validator) regex(p fieldPath, expr string) {
	if expr == "" {
		return
	}
	// As the proxy compiles it: anchored (which nests it once more).
	_, err := regexp.Compile(expr)
	if err == nil {
		_, err = regexp.Compile("^(?:" + expr + ")$")
	}
	if err != nil {
		v.addf(p, "%q is not a valid regular expression: %v", expr, err)
	}
}

func (v *validator) icmpRule(p fieldPath, r ICMPRule) {
	if len(r.Fields) == 0 {
		v.addf(p.child("fields"), "at least one ICMP type is required")
	}
	for i, f := range r.Fields {
		fp := p.child("fields").index(i)
		switch f.Family {
		case "", ICMPFamilyIPv4, ICMPFamilyIPv6:
		default:
			v.addf(fp.child("family"), "%q is not one of IPv4, IPv6", f.Family)
			continue
		}
		if f.Type == nil {
			v.addf(fp.child("type"), "required")
		} else if _, err := f.TypeNumber(); err != nil {
			v.addf(fp.child("type"), "%v", err)
		}
	}
}
