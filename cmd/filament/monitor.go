package main

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/filament-net/filament/agent/api/types"
)

// formatEvent is one line of `filament monitor`. ICMP has no ports: the
// datapath tracks echo by identifier (the request's in the source port
// field, the reply's in the destination's), so an ICMP event shows the echo
// type and identifier, or only the addresses for other ICMP types.
//
// Its strings hold a workload's bytes (L7 methods, hosts, paths, Kafka
// topics and client IDs): control and other non-printing characters are
// escaped (printable), so that none reaches the operator's terminal raw.
func formatEvent(ev types.Event) string {
	if ev.L7 != nil {
		return printableRaw(formatL7(ev))
	}
	what := "DROP (" + ev.Reason + ")"
	switch {
	case ev.Type == "policy-verdict" && ev.Audit:
		what = "AUDIT (new connection, would be dropped: " + ev.Reason + ")"
	case ev.Type == "policy-verdict" && ev.Redirected:
		what = "REDIRECTED (new connection, to the L7 proxy)"
	case ev.Type == "policy-verdict":
		what = "ALLOWED (new connection)"
	case ev.Type == "translated":
		what = "TRANSLATED (service " + ev.Service.String() + ")"
	}
	src, dst, proto := ev.Src.String(), ev.Dst.String(), ev.Protocol
	if strings.EqualFold(ev.Protocol, "icmp") {
		src, dst = ev.Src.Addr().String(), ev.Dst.Addr().String()
		proto = icmpDesc(ev.Src, ev.Dst)
	}
	return fmt.Sprintf("%s %s %s endpoint %d: %s %s identity %d [%s] -> %s identity %d [%s]",
		ev.Time.Format("15:04:05.000"), what, ev.Direction, ev.Endpoint, proto,
		src, uint32(ev.SrcIdentity), strings.Join(ev.SrcLabels, ","),
		dst, uint32(ev.DstIdentity), strings.Join(ev.DstLabels, ","))
}

// formatL7 is one request through the L7 proxy: verdict, protocol,
// request line, status and latency, then both sides as for packets.
func formatL7(ev types.Event) string {
	l := ev.L7
	what := "L7 " + strings.ToUpper(l.Verdict)
	if ev.Reason != "" && l.Verdict != "forwarded" {
		what += " (" + ev.Reason + ")"
	}
	notes := ""
	if len(l.Notes) > 0 {
		notes = " {" + strings.Join(l.Notes, "; ") + "}"
	}
	if strings.HasPrefix(l.Protocol, "DNS/") {
		// query, answer addresses, rcode
		answers := make([]string, len(l.DNSAnswers))
		for i, a := range l.DNSAnswers {
			answers[i] = a.String()
		}
		return fmt.Sprintf("%s %s %s endpoint %d: %s %s %s -> %s [%s] ttl %d in %v%s: %s identity %d [%s] -> %s identity %d [%s]",
			ev.Time.Format("15:04:05.000"), what, ev.Direction, ev.Endpoint, l.Protocol, l.Method, l.Host,
			l.DNSRcode, strings.Join(answers, " "), l.DNSTTL, l.Latency.Round(time.Microsecond), notes,
			ev.Src, ev.SrcIdentity, strings.Join(ev.SrcLabels, ","), ev.Dst, ev.DstIdentity, strings.Join(ev.DstLabels, ","))
	}
	return fmt.Sprintf("%s %s %s endpoint %d: %s %s %s%s -> %d in %v%s: %s identity %d [%s] -> %s identity %d [%s]",
		ev.Time.Format("15:04:05.000"), what, ev.Direction, ev.Endpoint, l.Protocol, l.Method, l.Host, l.Path,
		l.Status, l.Latency.Round(time.Microsecond), notes,
		ev.Src, ev.SrcIdentity, strings.Join(ev.SrcLabels, ","), ev.Dst, ev.DstIdentity, strings.Join(ev.DstLabels, ","))
}

// icmpDesc reads the conntrack ports the datapath gives an ICMP message
// (parse.h icmp_tuple): a query's request (id, 0xff00|type), its reply
// (0xff00|request type, id), any other type (0xff00|type twice); agents
// before 2026-12-05 gave echo (id, 0) and (0, id), the rest (0, 0).
func icmpDesc(src, dst netip.AddrPort) string {
	const tag = 0xff00
	s, d := src.Port(), dst.Port()
	switch {
	case s == d && s&tag == tag:
		return fmt.Sprintf("ICMP type %d", s&0xff)
	case d&tag == tag && d&0xff == 8:
		return fmt.Sprintf("ICMP type 8 code 0 (echo request, id %d)", s)
	case s&tag == tag && s&0xff == 8:
		return fmt.Sprintf("ICMP type 0 code 0 (echo reply, id %d)", d)
	case d&tag == tag:
		return fmt.Sprintf("ICMP type %d (request, id %d)", d&0xff, s)
	case s&tag == tag:
		return fmt.Sprintf("ICMP type %d (reply, id %d)", s&0xff+1, d)
	case s != 0 && d == 0:
		return fmt.Sprintf("ICMP type 8 code 0 (echo request, id %d)", s)
	case d != 0 && s == 0:
		return fmt.Sprintf("ICMP type 0 code 0 (echo reply, id %d)", d)
	}
	return "ICMP (not echo)"
}
