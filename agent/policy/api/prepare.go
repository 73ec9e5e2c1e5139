package api

import "fmt"

// Prepare returns normalised copies of ps after validating every one; if
// any is invalid (or two share a key) it returns all the errors and no
// policy.
func Prepare(ps []Policy) ([]Policy, error) {
	out := make([]Policy, 0, len(ps))
	seen := make(map[string]bool, len(ps))
	var errs []error
	for _, p := range ps {
		p = p.DeepCopy()
		p.normalize()
		if err := p.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[p.Key()] {
			errs = append(errs, &ValidationError{Document: fmt.Sprintf("policy %q", p.Key()),
				Reason: "given more than once in one import"})
			continue
		}
		seen[p.Key()] = true
		out = append(out, p)
	}
	if len(errs) > 0 {
		return nil, joinErrors(errs)
	}
	return out, nil
}

// Reload is Prepare for a policy read back from where it was stored (the
// agent's file, the kvstore): its rules are made again from its source,
// as an import makes them now, when the source parses to that one policy
// (same kind, namespace and name); otherwise its stored rules are kept
// and held to what normalize does now. The form a policy takes can change
// between versions: a NetworkPolicy stored before 2026-12-05 whose
// podSelector named the namespace key selected other namespaces' pods,
// and one whose podSelector was `namespace Exists` is stored like a
// namespaceSelector peer, which only its source tells apart
// (TestStoredNetworkPolicyPeersKeptInTheirNamespace); a toFQDNs, toGroups
// or toServices of `[]` was stored before 2026-12-07 without the field,
// which allowed every peer (TestStoredEmptyPeerFieldMadeAgainFromSource).
func Reload(p Policy) (Policy, error) {
	if p.Source != "" {
		if ps, err := Parse([]byte(p.Source)); err == nil && len(ps) == 1 && ps[0].Kind == p.Kind &&
			ps[0].Name == p.Name && ps[0].Namespace == p.Namespace {
			p = p.DeepCopy()
			p.Rules = ps[0].Rules
		}
	}
	out, err := Prepare([]Policy{p})
	if err != nil {
		return p, err
	}
	return out[0], nil
}
