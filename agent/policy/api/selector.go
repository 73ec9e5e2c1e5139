package api

import (
	"slices"
	"strings"

	"github.com/filament-net/filament/agent/labels"
)

// podNamespaceKey is the selector key that restricts a selector to one
// Kubernetes namespace.
const podNamespaceKey = labels.SourceK8s + ":" + labels.KeyNamespace

// namespaceLabelPrefix prefixes the key of a namespace's label when it is
// carried by the endpoints of that namespace (Cilium's convention).
const namespaceLabelPrefix = "io.cilium.k8s.namespace.labels."

// SplitKey splits a selector key into label source and label key. A key
// without a known source prefix has source any.
func SplitKey(k string) (source, key string) {
	if i := strings.IndexByte(k, ':'); i >= 0 && isSource(k[:i]) {
		return k[:i], k[i+1:]
	}
	return labels.SourceAny, k
}

func isSource(s string) bool {
	switch s {
	case labels.SourceK8s, labels.SourceReserved, labels.SourceCIDR,
		labels.SourceContainer, labels.SourceUnspec, labels.SourceAny:
		return true
	}
	return false
}

// Matches reports whether ls satisfies every matchLabels entry and every
// matchExpressions requirement. A key `any:app` or `app` matches a label of
// any source with key app, `k8s:app` only the label of source k8s. A nil
// selector matches nothing; an empty one matches everything.
func (s *EndpointSelector) Matches(ls labels.Labels) bool {
	if s == nil {
		return false
	}
	for k, want := range s.MatchLabels {
		if !hasLabel(ls, k, func(v string) bool { return v == want }) {
			return false
		}
	}
	for _, r := range s.MatchExpressions {
		if !r.matches(ls) {
			return false
		}
	}
	return true
}

func (r SelectorRequirement) matches(ls labels.Labels) bool {
	in := func(v string) bool { return slices.Contains(r.Values, v) }
	exists := func(string) bool { return true }
	switch r.Operator {
	case OpIn:
		return hasLabel(ls, r.Key, in)
	case OpNotIn:
		return !hasLabel(ls, r.Key, in)
	case OpExists:
		return hasLabel(ls, r.Key, exists)
	case OpDoesNotExist:
		return !hasLabel(ls, r.Key, exists)
	}
	return false
}

// hasLabel reports whether ls has a label that selector key key names and
// whose value satisfies ok.
func hasLabel(ls labels.Labels, key string, ok func(value string) bool) bool {
	source, k := SplitKey(key)
	for _, l := range ls {
		if l.Key == k && (source == labels.SourceAny || l.Source == source) && ok(l.Value) {
			return true
		}
	}
	return false
}

// keys returns every key the selector uses, matchLabels keys sorted first.
func (s *EndpointSelector) keys() []string {
	ks := make([]string, 0, len(s.MatchLabels)+len(s.MatchExpressions))
	for k := range s.MatchLabels {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	for _, r := range s.MatchExpressions {
		ks = append(ks, r.Key)
	}
	return ks
}

// scopesItself reports whether the selector names a namespace or a
// reserved label, and so must not be restricted to the policy's namespace.
func (s *EndpointSelector) scopesItself() bool {
	for _, k := range s.keys() {
		source, key := SplitKey(k)
		if key == labels.KeyNamespace || source == labels.SourceReserved {
			return true
		}
	}
	return false
}

// restrictTo adds the namespace restriction to the selector.
func (s *EndpointSelector) restrictTo(namespace string) {
	if s.MatchLabels == nil {
		s.MatchLabels = map[string]string{}
	}
	s.MatchLabels[podNamespaceKey] = namespace
}
