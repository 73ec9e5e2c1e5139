package policy

import (
	"os"
	"testing"
)

// The examples in docs/ are valid policy.
func TestDocExamplesParse(t *testing.T) {
	b, err := os.ReadFile("../../docs/examples/allow-web-to-db.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Key() != "default/allow-web-to-db" || ps[1].Kind != KindNetworkPolicy {
		t.Fatalf("parsed %d policies: %+v", len(ps), ps)
	}
}
