package nodeauth_test

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"

	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/crypto/ca"
	"github.com/filament-net/filament/crypto/nodeauth"
)

// signedRecord makes a cluster CA (fresh for each test process) and the
// record of node c1/n1 signed with a certificate it issued, as stored in
// the kvstore.
func signedRecord(f *testing.F) (caPEM, stored []byte, signed node.Node) {
	authority, err := ca.New("c1")
	if err != nil {
		f.Fatal(err)
	}
	pair, err := nodeauth.Issue(authority, "c1", "n1")
	if err != nil {
		f.Fatal(err)
	}
	dir := f.TempDir()
	if err := ca.WritePair(dir, "node", pair); err != nil {
		f.Fatal(err)
	}
	s, err := nodeauth.LoadSigner(filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"))
	if err != nil {
		f.Fatal(err)
	}
	signed = node.Node{Name: "n1", Cluster: "c1", ClusterID: 1, IPs: []string{"172.30.1.1"}, PodCIDRs: []string{"10.101.0.0/24"},
		Routing: "tunnel", Health: "10.101.0.1", Labels: map[string]string{"zone": "a"},
		WireGuardKey: "ZtKlbZXqQKU5j3iAwLfx4KO92ZYTAQu/YBY+W6JWaGc="}
	if err := s.Sign(&signed); err != nil {
		f.Fatal(err)
	}
	if err := nodeauth.Verify(signed, authority.PEM); err != nil {
		f.Fatalf("the genuine record is refused: %v", err)
	}
	stored, err = json.Marshal(signed)
	if err != nil {
		f.Fatal(err)
	}
	return authority.PEM, stored, signed
}

// content is what the signature must protect, in the form it is signed:
// the record without its signature and the local-only reachability.
func content(t *testing.T, n node.Node) string {
	n.Signature, n.Reachable = "", false
	b, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// FuzzVerifyMutation changes one byte of a genuine signed record as stored
// in the kvstore (name, addresses, pod CIDRs, WireGuard key, certificate or
// signature) and decodes it as the registry does. Verify must refuse, with
// ErrRefused, every mutation that changes what the record says; only one
// that leaves the signed content as it was (in the signature's encoding or
// in JSON spelling) may still verify.
func FuzzVerifyMutation(f *testing.F) {
	caPEM, stored, signed := signedRecord(f)
	f.Fuzz(func(t *testing.T, pos uint16, b byte) {
		i := int(pos) % len(stored)
		if stored[i] == b {
			return
		}
		mutated := append([]byte(nil), stored...)
		mutated[i] = b
		var n node.Node
		if json.Unmarshal(mutated, &n) != nil {
			return
		}
		err := nodeauth.Verify(n, caPEM)
		if err == nil {
			if content(t, n) != content(t, signed) {
				t.Fatalf("byte %d %q -> %q: a changed record verifies:\n got %#v\nwant %#v", i, stored[i], b, n, signed)
			}
			return
		}
		if !errors.Is(err, nodeauth.ErrRefused) {
			t.Fatalf("refusal does not wrap ErrRefused: %v", err)
		}
	})
}

// FuzzVerifyRecord verifies arbitrary records (any certificate, signature
// and content) against a cluster CA whose key the input cannot know:
// Verify must never panic, and it may accept only the genuine record's
// content (the one this process signed); everything else is refused with
// ErrRefused.
func FuzzVerifyRecord(f *testing.F) {
	caPEM, stored, signed := signedRecord(f)
	f.Add(stored)
	f.Fuzz(func(t *testing.T, data []byte) {
		var n node.Node
		if json.Unmarshal(data, &n) != nil {
			return
		}
		err := nodeauth.Verify(n, caPEM)
		if err == nil && content(t, n) != content(t, signed) {
			t.Fatalf("Verify accepted a record it did not sign: %q", data)
		}
		if err != nil && !errors.Is(err, nodeauth.ErrRefused) {
			t.Fatalf("refusal does not wrap ErrRefused: %v", err)
		}
	})
}
