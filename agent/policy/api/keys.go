package api

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/filament-net/filament/agent/labels"
)

// NamesReserved reports whether a selector names a reserved label.
func (s *EndpointSelector) NamesReserved() bool {
	for _, k := range s.keys() {
		if source, _ := SplitKey(k); source == labels.SourceReserved {
			return true
		}
	}
	return false
}

// groupKeyEscaper percent-escapes the characters that separate the parts
// of a GroupKey (AWS allows ',', ';' and '=' in tags and group names), so
// that different selectors never share a key; values without them are
// unchanged.
var groupKeyEscaper = strings.NewReplacer("%", "%25", ",", "%2C", ";", "%3B", "=", "%3D")

// GroupKey is the canonical form of an AWS group selector (sorted), the
// same for equal selectors however they are written and different for
// different ones (the separators inside values escaped; until 2026-12-06
// they were not, and {env: "prod,tier=db"} shared the key of {env: prod,
// tier: db}).
func GroupKey(g AWSGroup) string {
	esc := func(vs []string) string {
		out := make([]string, len(vs))
		for i, v := range vs {
			out[i] = groupKeyEscaper.Replace(v)
		}
		slices.Sort(out)
		return strings.Join(out, ",")
	}
	tags := make([]string, 0, len(g.Labels))
	for k, v := range g.Labels {
		tags = append(tags, groupKeyEscaper.Replace(k)+"="+groupKeyEscaper.Replace(v))
	}
	slices.Sort(tags)
	return "region=" + groupKeyEscaper.Replace(g.Region) + ";ids=" + esc(g.SecurityGroupsIDs) +
		";names=" + esc(g.SecurityGroupsNames) + ";tags=" + strings.Join(tags, ",")
}

// nodeSelectorPrefix starts every NodeSelectorKey.
const nodeSelectorPrefix = "nodes:"

// NodeSelectorKey is the canonical form of a toNodes/fromNodes selector.
func NodeSelectorKey(s EndpointSelector) string {
	b, _ := json.Marshal(s)
	return nodeSelectorPrefix + string(b)
}

// IsNodeSelectorKey says whether a selector key is a NodeSelectorKey.
func IsNodeSelectorKey(key string) bool { return strings.HasPrefix(key, nodeSelectorPrefix) }

// FQDNKey is the canonical form of a toFQDNs selector: its kind and its
// name or pattern in lower case with one trailing dot.
func FQDNKey(s FQDNSelector) string {
	if s.MatchName != "" {
		return "fqdn:name:" + canonicalName(s.MatchName)
	}
	return "fqdn:pattern:" + canonicalName(s.MatchPattern)
}

// canonicalName is a DNS name in lower case with one trailing dot.
func canonicalName(n string) string {
	return strings.ToLower(strings.TrimSuffix(n, ".")) + "."
}
