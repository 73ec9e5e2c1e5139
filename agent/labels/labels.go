// Package labels owns the label model of Filament: a label is
// `source:key=value`, a label set is sorted and has one canonical string form,
// and every key and value is validated before it reaches identities or policy.
package labels

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
)

// Sources a label can come from.
const (
	SourceK8s       = "k8s"       // pod labels, Kubernetes or CNI args
	SourceReserved  = "reserved"  // identities reserved by Filament (host, world, ...)
	SourceCIDR      = "cidr"      // CIDR-derived identities (key is the prefix)
	SourceContainer = "container" // labels given by a container runtime
	SourceUnspec    = "unspec"    // no source given
	SourceAny       = "any"       // selector wildcard: matches any source
)

// Well-known label keys.
const (
	// KeyCluster is carried by every identity: the name of its cluster.
	KeyCluster = "filament.io/cluster"
	// KeyCiliumCluster is the Cilium alias of KeyCluster accepted in selectors.
	KeyCiliumCluster = "io.cilium.k8s.policy.cluster"
	// KeyNamespace is the Kubernetes namespace of a pod.
	KeyNamespace = "io.kubernetes.pod.namespace"
)

// ErrInvalid is wrapped by every validation error of this package.
var ErrInvalid = errors.New("invalid label")

var knownSources = map[string]bool{
	SourceK8s: true, SourceReserved: true, SourceCIDR: true,
	SourceContainer: true, SourceUnspec: true, SourceAny: true,
}

// Label is one `source:key=value`.
type Label struct {
	Source string `json:"source"`
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
}

// String returns `source:key=value`, or `source:key` when the value is empty.
func (l Label) String() string {
	if l.Value == "" {
		return l.Source + ":" + l.Key
	}
	return l.Source + ":" + l.Key + "=" + l.Value
}

var (
	nameRe   = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	dnsSubRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// ValidateKey checks a Kubernetes-style qualified key: an optional DNS
// subdomain prefix (at most 253 characters) and `/`, then a name of at most
// 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric.
func ValidateKey(key string) error {
	name := key
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		prefix := key[:i]
		name = key[i+1:]
		if prefix == "" || len(prefix) > 253 || !dnsSubRe.MatchString(prefix) {
			return fmt.Errorf("%w: key %q: prefix %q must be a lowercase DNS subdomain", ErrInvalid, key, prefix)
		}
	}
	if name == "" || len(name) > 63 || !nameRe.MatchString(name) {
		return fmt.Errorf("%w: key %q: name part must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric", ErrInvalid, key)
	}
	return nil
}

// ValidateValue checks a Kubernetes-style label value (empty, or a name of at
// most 63 characters).
func ValidateValue(v string) error {
	if v == "" {
		return nil
	}
	if len(v) > 63 || !nameRe.MatchString(v) {
		return fmt.Errorf("%w: value %q must be at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric", ErrInvalid, v)
	}
	return nil
}

// Validate checks the label's source, key and value.
func (l Label) Validate() error {
	if !knownSources[l.Source] {
		return fmt.Errorf("%w: %q: unknown source %q (want one of k8s, reserved, cidr, container, unspec, any)", ErrInvalid, l.String(), l.Source)
	}
	if l.Source == SourceCIDR {
		if _, err := netip.ParsePrefix(l.Key); err != nil {
			return fmt.Errorf("%w: %q: key must be a CIDR: %v", ErrInvalid, l.String(), err)
		}
		return nil
	}
	if err := ValidateKey(l.Key); err != nil {
		return err
	}
	return ValidateValue(l.Value)
}

// Parse reads `source:key=value`, `key=value` (source k8s) or `source:key`.
// The source is the text before the first ':' when that text is a known
// source; otherwise the whole string is the key and the source is k8s.
func Parse(s string) (Label, error) {
	var l Label
	rest := s
	l.Source = SourceK8s
	if i := strings.IndexByte(s, ':'); i >= 0 && knownSources[s[:i]] {
		l.Source, rest = s[:i], s[i+1:]
	}
	if l.Source == SourceCIDR {
		l.Key = rest
	} else if i := strings.IndexByte(rest, '='); i >= 0 {
		l.Key, l.Value = rest[:i], rest[i+1:]
	} else {
		l.Key = rest
	}
	if err := l.Validate(); err != nil {
		return Label{}, err
	}
	return l, nil
}

// Labels is a set of labels keyed by source and key; at most one value per key and source.
type Labels []Label

// New builds a canonical set from labels, rejecting invalid or conflicting ones.
func New(ls ...Label) (Labels, error) {
	seen := map[string]string{}
	out := make(Labels, 0, len(ls))
	for _, l := range ls {
		if err := l.Validate(); err != nil {
			return nil, err
		}
		k := l.Source + ":" + l.Key
		if v, ok := seen[k]; ok {
			if v != l.Value {
				return nil, fmt.Errorf("%w: key %q given twice with values %q and %q", ErrInvalid, k, v, l.Value)
			}
			continue
		}
		seen[k] = l.Value
		out = append(out, l)
	}
	out.sort()
	return out, nil
}

// ParseList parses labels separated by commas (or given as several strings).
func ParseList(items ...string) (Labels, error) {
	var ls []Label
	for _, item := range items {
		for _, s := range strings.Split(item, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			l, err := Parse(s)
			if err != nil {
				return nil, err
			}
			ls = append(ls, l)
		}
	}
	return New(ls...)
}

// FromMap builds k8s-source labels from a key/value map.
func FromMap(source string, m map[string]string) (Labels, error) {
	ls := make([]Label, 0, len(m))
	for k, v := range m {
		ls = append(ls, Label{Source: source, Key: k, Value: v})
	}
	return New(ls...)
}

func (ls Labels) sort() {
	sort.Slice(ls, func(i, j int) bool {
		if ls[i].Source != ls[j].Source {
			return ls[i].Source < ls[j].Source
		}
		return ls[i].Key < ls[j].Key
	})
}

// String is the canonical form: labels sorted by source and key, joined by ';'.
func (ls Labels) String() string {
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = l.String()
	}
	return strings.Join(parts, ";")
}

// Strings returns each label's string form, in canonical order.
func (ls Labels) Strings() []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.String()
	}
	return out
}

// ParseCanonical reads the output of String.
func ParseCanonical(s string) (Labels, error) {
	if s == "" {
		return Labels{}, nil
	}
	return ParseList(strings.Split(s, ";")...)
}

// Get returns the value of key for any source, and whether it is present.
func (ls Labels) Get(key string) (string, bool) {
	for _, l := range ls {
		if l.Key == key {
			return l.Value, true
		}
	}
	return "", false
}

// With returns a copy of ls with l added or replacing the same source and key.
func (ls Labels) With(l Label) (Labels, error) {
	out := make([]Label, 0, len(ls)+1)
	for _, x := range ls {
		if x.Source == l.Source && x.Key == l.Key {
			continue
		}
		out = append(out, x)
	}
	return New(append(out, l)...)
}

// Equal reports whether both sets hold the same labels.
func (ls Labels) Equal(o Labels) bool { return ls.String() == o.String() }
