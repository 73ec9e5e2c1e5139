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
