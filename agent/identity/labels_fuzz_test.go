package identity_test

import (
	"errors"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/labels"
)

// FuzzLabelsDecode feeds arbitrary kvstore values to the decoding of an
// identity's labels (labels.ParseCanonical, as the allocator's watch does).
// It must never panic; a refusal wraps labels.ErrInvalid; an accepted set
// has only valid labels, one value per source and key, and its canonical
// form (the kvstore value and the map key of the allocator's cache) reads
// back as the same set; a reserved identity is found only for a single
// reserved label.
func FuzzLabelsDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, value string) {
		ls, err := labels.ParseCanonical(value)
		if err != nil {
			if !errors.Is(err, labels.ErrInvalid) {
				t.Fatalf("ParseCanonical(%q) error does not wrap ErrInvalid: %v", value, err)
			}
			return
		}
		seen := map[string]bool{}
		for _, l := range ls {
			if err := l.Validate(); err != nil {
				t.Fatalf("ParseCanonical(%q) returned invalid label %q: %v", value, l, err)
			}
			k := l.Source + ":" + l.Key
			if seen[k] {
				t.Fatalf("ParseCanonical(%q) returned %s twice", value, k)
			}
			seen[k] = true
		}
		canonical := ls.String()
		back, err := labels.ParseCanonical(canonical)
		if err != nil || !back.Equal(ls) || back.String() != canonical || len(back) != len(ls) {
			t.Fatalf("canonical form %q of %q reads back as %q (%v)", canonical, value, back, err)
		}
		if id, ok := identity.LookupReserved(ls); ok && (!id.IsReserved() || len(ls) != 1 || ls[0].Source != labels.SourceReserved) {
			t.Fatalf("LookupReserved(%q) = %v for a set that is not one reserved label", canonical, id)
		}
	})
}
