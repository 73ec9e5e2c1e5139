package api

import (
	"os"
	"testing"
)

// The examples in docs/ are valid policy.
func TestDocExamplesParse(t *testing.T) {
	b, err := os.ReadFile("../../../docs/examples/allow-web-to-db.yaml")
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

func TestClusterMeshExampleParses(t *testing.T) {
	b, err := os.ReadFile("../../../docs/examples/allow-web-from-c1.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := Parse(b)
	if err != nil || len(ps) != 1 || ps[0].Rules[0].Ingress[0].FromEndpoints[0].MatchLabels["filament.io/cluster"] != "c1" {
		t.Fatalf("%v %+v", err, ps)
	}
}
