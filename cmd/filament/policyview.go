package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/filament-net/filament/agent/api/types"
)

// policyTable lists policies: the key to get or delete each by, its
// namespace ("(cluster-wide)" for a CiliumClusterwideNetworkPolicy), kind
// and number of rules.
func policyTable(w io.Writer, ps []types.Policy) {
	fmt.Fprintln(w, "POLICY\tNAMESPACE\tKIND\tRULES")
	for _, p := range ps {
		ns := p.Namespace
		if p.Clusterwide() {
			ns = "(cluster-wide)"
		}
		cellf(w, "%s\t%s\t%s\t%d\n", p.Key(), ns, p.Kind, len(p.Rules))
	}
}

// traceTable prints a trace result: the verdict, the deciding rule, and
// for a flow through the node's proxy the HTTP rules of each L7 side and
// the verdict for the request asked about.
func traceTable(w io.Writer, r types.TraceResult) {
	cellf(w, "Verdict:\t%s\n", r.Verdict)
	cellf(w, "Reason:\t%s\n", r.Reason)
	if r.Rule != nil {
		cellf(w, "Rule:\t%s rule %d %s\n", r.Rule.Policy, r.Rule.Rule, r.Rule.Section)
	}
	if r.Verdict == "allowed" {
		proxy := "no (no HTTP rules apply)"
		if r.Proxy {
			proxy = "yes: requests go through the node's L7 proxy"
		}
		cellf(w, "L7 proxy:\t%s\n", proxy)
	}
	for _, sd := range r.L7 {
		label := "HTTP rules, " + sd.Side + ":"
		for _, h := range sd.Rules {
			cellf(w, "%s\t%s  %s\n", label, httpRuleText(h), h.Ref)
			label = ""
		}
	}
	if h := r.HTTP; h != nil {
		req := printable(h.Method) + " " + printable(h.Path)
		if h.Host != "" {
			req += " (host " + printable(h.Host) + ")"
		}
		verdict := h.Verdict
		if h.Status != 0 {
			verdict += fmt.Sprintf(" (%d from the proxy; a gRPC call: PERMISSION_DENIED)", h.Status)
		}
		cellf(w, "Request:\t%s\n", req)
		cellf(w, "Request verdict:\t%s: %s\n", verdict, h.Reason)
		for _, sd := range h.Sides {
			for _, a := range sd.Actions {
				cellf(w, "Header action, %s:\t%s\n", sd.Side, a)
			}
		}
	}
}

// httpRuleText is an HTTP rule on one line: its fields given, as
// name=value.
func httpRuleText(h types.TraceHTTPRule) string {
	var parts []string
	for _, f := range [][2]string{{"method", h.Method}, {"path", h.Path}, {"host", h.Host}} {
		if f[1] != "" {
			parts = append(parts, f[0]+"="+printable(f[1])) // a tenant's regex: any bytes
		}
	}
	for _, hd := range h.Headers {
		parts = append(parts, "header="+strconv.Quote(hd))
	}
	for _, m := range h.HeaderMatches {
		hm := "headerMatch=" + strconv.Quote(m.Name+": "+m.Value)
		if m.Mismatch != "" {
			hm += "/" + m.Mismatch
		}
		parts = append(parts, hm)
	}
	if len(parts) == 0 {
		return "(any request)"
	}
	return strings.Join(parts, " ")
}
