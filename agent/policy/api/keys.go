package api

import (
	"encoding/json"
	"fmt"
	"maps"
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

// GroupKey is the canonical form of an AWS group selector (sorted), the
// same for equal selectors however they are written.
func GroupKey(g AWSGroup) string {
	ids := slices.Sorted(slices.Values(g.SecurityGroupsIDs))
	names := slices.Sorted(slices.Values(g.SecurityGroupsNames))
	var tags []string
	for _, k := range slices.Sorted(maps.Keys(g.Labels)) {
		tags = append(tags, k+"="+g.Labels[k])
	}
	return fmt.Sprintf("region=%s;ids=%s;names=%s;tags=%s", g.Region, strings.Join(ids, ","), strings.Join(names, ","), strings.Join(tags, ","))
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
