package ipcache

import (
	"math/rand/v2"
	"regexp"
	"testing"

	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/node"
)

// The loops of validName say what the packages' own checks say: a node
// name as node.ValidName, a namespace as labels.ValidateValue, a pod name
// as the Kubernetes object name's expression, for random strings over an
// alphabet of every class the rules tell apart (and a few bytes none
// allows).
func TestNameRulesMatchTheirExpressions(t *testing.T) {
	podRE := regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	alphabet := []byte("az09AZ-_./ \x1b\n\xc2\x9b")
	rng := rand.New(rand.NewPCG(7, 11))
	for range 200000 {
		n := rng.IntN(8)
		if rng.IntN(50) == 0 {
			n = 60 + rng.IntN(200) // around the bounds
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
			if n > 8 && rng.IntN(4) > 0 {
				b[i] = 'a'
			}
		}
		s := string(b)
		if got, want := validName(s, nodeName), node.ValidName(s); got != want {
			t.Fatalf("node name %q: %v, node.ValidName %v", s, got, want)
		}
		if got, want := s == "" || validName(s, namespaceName), labels.ValidateValue(s) == nil; got != want {
			t.Fatalf("namespace %q: %v, labels.ValidateValue %v", s, got, want)
		}
		if got, want := ValidPodName(s), podRE.MatchString(s); got != want {
			t.Fatalf("pod name %q: %v, the expression %v", s, got, want)
		}
	}
}
