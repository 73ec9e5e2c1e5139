package nodeauth

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/crypto/ca"
)

func signer(t *testing.T, authority *ca.CA, cluster, name string) *Signer {
	t.Helper()
	pair, err := Issue(authority, cluster, name)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.WritePair(dir, "node", pair); err != nil {
		t.Fatal(err)
	}
	s, err := LoadSigner(filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func record(name string) node.Node {
	return node.Node{Name: name, Cluster: "c1", ClusterID: 1, IPs: []string{"172.30.1.1"}, PodCIDRs: []string{"10.101.0.0/24"},
		WireGuardKey: "ZtKlbZXqQKU5j3iAwLfx4KO92ZYTAQu/YBY+W6JWaGc="}
}

// A record signed with a certificate of the cluster's CA for that node
// verifies; every way of getting it wrong is refused with the reason.
func TestVerify(t *testing.T) {
	c1, _ := ca.New("c1")
	other, _ := ca.New("other")
	good := signer(t, c1, "c1", "n1")
	n := record("n1")
	if err := good.Sign(&n); err != nil {
		t.Fatal(err)
	}
	if err := Verify(n, c1.PEM); err != nil {
		t.Fatalf("a good record was refused: %v", err)
	}
	// Reachability is local state, not part of what is signed.
	n2 := n
	n2.Reachable = true
	if err := Verify(n2, c1.PEM); err != nil {
		t.Fatalf("reachability broke the signature: %v", err)
	}
	// The record as stored (without reachability) verifies once read back.
	var stored node.Node
	if err := json.Unmarshal(n2.Record(), &stored); err != nil {
		t.Fatal(err)
	}
	if err := Verify(stored, c1.PEM); err != nil {
		t.Fatalf("the stored record was refused: %v", err)
	}
	// The node's other addresses are outside the signature: an agent from
	// before the field reads a record that carries them without it, and
	// must still verify it (a rolling upgrade with node authentication).
	withAddrs := record("n1")
	withAddrs.LocalAddrs = []string{"198.18.7.2"}
	if err := good.Sign(&withAddrs); err != nil {
		t.Fatal(err)
	}
	var older struct {
		node.Node
		LocalAddrs json.RawMessage `json:"localAddrs"` // takes the field: the embedded one stays unset

	}
	if err := json.Unmarshal(withAddrs.Record(), &older); err != nil {
		t.Fatal(err)
	}
	if older.Node.LocalAddrs != nil {
		t.Fatal("the older agent's view kept the field")
	}
	if err := Verify(withAddrs, c1.PEM); err != nil {
		t.Fatalf("a record with other addresses was refused: %v", err)
	}
	if err := Verify(older.Node, c1.PEM); err != nil {
		t.Fatalf("the record as an agent without the field reads it was refused: %v", err)
	}
	refused := func(what string, m node.Node, caPEM []byte, reason string) {
		t.Helper()
		err := Verify(m, caPEM)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), reason) {
			t.Fatalf("%s: got %v, want a refusal saying %q", what, err, reason)
		}
	}
	unsigned := record("n1")
	refused("no certificate", unsigned, c1.PEM, "has no certificate")
	refused("another cluster's CA", n, other.PEM, "does not chain")
	bad := signer(t, other, "c1", "n1")
	m := record("n1")
	bad.Sign(&m)
	refused("certificate from another CA", m, c1.PEM, "does not chain")
	// n2's certificate used for a record that says n1.
	thief := signer(t, c1, "c1", "n2")
	m = record("n1")
	thief.Sign(&m)
	refused("another node's certificate", m, c1.PEM, `is for "node:c1/n2"`)
	// A record changed after signing (a swapped WireGuard key).
	m = n
	m.WireGuardKey = "AAAAbZXqQKU5j3iAwLfx4KO92ZYTAQu/YBY+W6JWaGc="
	refused("tampered record", m, c1.PEM, "signature does not verify")
	m = n
	m.Signature = ""
	refused("signature stripped", m, c1.PEM, "not signed")
}

func TestLoadSignerMismatch(t *testing.T) {
	c1, _ := ca.New("c1")
	a, _ := Issue(c1, "c1", "n1")
	b, _ := Issue(c1, "c1", "n2")
	dir := t.TempDir()
	ca.WritePair(dir, "a", a)
	ca.WritePair(dir, "b", b)
	if _, err := LoadSigner(filepath.Join(dir, "a.pem"), filepath.Join(dir, "b-key.pem")); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched certificate and key: %v", err)
	}
	s, err := LoadSigner(filepath.Join(dir, "a.pem"), filepath.Join(dir, "a-key.pem"))
	if err != nil || s.Subject() != "node:c1/n1" {
		t.Fatalf("subject %q %v", s.Subject(), err)
	}
}

func TestRefusals(t *testing.T) {
	r := NewRefusals()
	r.Set("b", errors.New("no certificate"))
	r.Set("a", errors.New("bad signature"))
	since := r.List()[1].Since
	r.Set("b", errors.New("no certificate")) // same reason: since kept
	if l := r.List(); len(l) != 2 || l[0].Node != "a" || l[1].Since != since || r.Count() != 2 {
		t.Fatalf("refusals %+v", l)
	}
	r.Set("a", nil)
	if r.Count() != 1 {
		t.Fatal("a cleared refusal stayed")
	}
}

// A node certificate the CA revoked refuses the node's records; the
// others still verify. The list must be the cluster CA's: one signed by
// another CA, or altered, is refused, so whoever can write where agents
// read it cannot revoke (nor un-revoke) a node.
func TestRevoked(t *testing.T) {
	c1, _ := ca.New("c1")
	other, _ := ca.New("c1")
	bad, good := signer(t, c1, "c1", "n1"), signer(t, c1, "c1", "n2")
	nb, ng := record("n1"), record("n2")
	if err := bad.Sign(&nb); err != nil {
		t.Fatal(err)
	}
	if err := good.Sign(&ng); err != nil {
		t.Fatal(err)
	}
	crl, err := c1.Revoke(nil, []byte(nb.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	r, err := ParseRevoked(crl, c1.PEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Check(nb); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("a revoked node's record: %v", err)
	}
	if err := r.Check(ng); err != nil {
		t.Errorf("another node's record: %v", err)
	}
	// Revoking again changes nothing; another certificate is added.
	if again, err := c1.Revoke(crl, []byte(nb.Certificate)); err != nil || string(again) != string(crl) {
		t.Errorf("revoking twice: %v", err)
	}
	both, err := c1.Revoke(crl, []byte(ng.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := ParseRevoked(both, c1.PEM); err != nil || r.Len() != 2 || r.Check(nb) == nil || r.Check(ng) == nil {
		t.Errorf("two revoked: %v, %d", err, r.Len())
	}
	// Not the cluster's CA's.
	forged, err := other.Revoke(nil, mustCert(t, other))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseRevoked(forged, c1.PEM); err == nil {
		t.Error("a list another CA signed was taken")
	}
	altered := []byte(strings.Replace(string(crl), "A", "B", 1))
	if _, err := ParseRevoked(altered, c1.PEM); err == nil {
		t.Error("an altered list was taken")
	}
	if _, err := other.Revoke(nil, []byte(nb.Certificate)); err == nil {
		t.Error("a CA revoked another CA's certificate")
	}
	if _, err := c1.Revoke(nil, c1.PEM); err == nil {
		t.Error("a CA revoked itself")
	}
}

func mustCert(t *testing.T, authority *ca.CA) []byte {
	t.Helper()
	p, err := Issue(authority, "c1", "x")
	if err != nil {
		t.Fatal(err)
	}
	return p.Cert
}

// A node key others may read is refused, naming the file and its mode,
// as the WireGuard key is: until 2026-12-07 any mode was taken, so a key
// left readable by every local user signed this node's records for
// whoever read it (found by a review).
func TestLoadSignerRefusesReadableKey(t *testing.T) {
	c1, _ := ca.New("c1")
	a, _ := Issue(c1, "c1", "n1")
	dir := t.TempDir()
	ca.WritePair(dir, "a", a)
	key := filepath.Join(dir, "a-key.pem")
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604} {
		os.Chmod(key, mode)
		if _, err := LoadSigner(filepath.Join(dir, "a.pem"), key); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("a node key of mode %o: %v, want refused naming it", mode, err)
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		os.Chmod(key, mode)
		if _, err := LoadSigner(filepath.Join(dir, "a.pem"), key); err != nil {
			t.Errorf("a node key of mode %o: %v", mode, err)
		}
	}
}
