package policysync

import (
	"testing"

	"github.com/filament-net/filament/agent/kvstore"
)

// A stored policy is decoded (api.Reload parses its source) once per key
// and revision: a resync at every watch burst re-parsed every cluster
// policy on every node (found 2026-12-07 by a review of api.Reload's
// cost). A new revision is decoded again; a key gone is forgotten.
func TestDecodedOncePerRevision(t *testing.T) {
	s := &Store{prefix: Prefix + "c1/"}
	v := []byte(`{"kind":"CiliumNetworkPolicy","namespace":"default","name":"p","rules":[{"endpointSelector":{"matchLabels":{"k8s:io.kubernetes.pod.namespace":"default"}},"ingress":[{"fromEndpoints":[{}]}]}],"source":"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoints: [{}]}]\n"}`)
	kv := kvstore.KeyValue{Key: s.prefix + "default/p", Value: v, ModRevision: 7}
	for range 3 {
		if _, err := s.decodeCached(kv); err != nil {
			t.Fatal(err)
		}
	}
	if s.decodes != 1 {
		t.Errorf("decoded %d times at one revision, want 1", s.decodes)
	}
	kv.ModRevision = 8
	s.decodeCached(kv)
	if s.decodes != 2 {
		t.Errorf("a new revision: %d decodes, want 2", s.decodes)
	}
	s.forgetDecoded(nil)
	if len(s.decoded) != 0 {
		t.Errorf("keys gone, %d decoded kept", len(s.decoded))
	}
}
