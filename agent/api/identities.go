package api

import (
	"cmp"
	"slices"

	"github.com/filament-net/filament/agent/identity"
)

// mergeIdentities adds to own (the local allocator's identities) those
// known returns that own lacks, sorted by ID.
func mergeIdentities(own []identity.Identity, known func() []identity.Identity) []identity.Identity {
	if known == nil {
		return own
	}
	seen := map[identity.NumericIdentity]bool{}
	out := slices.Clone(own)
	for _, id := range own {
		seen[id.ID] = true
	}
	for _, id := range known() {
		if !seen[id.ID] {
			seen[id.ID] = true
			out = append(out, id)
		}
	}
	slices.SortFunc(out, func(a, b identity.Identity) int { return cmp.Compare(a.ID, b.ID) })
	return out
}
