package encryption

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/crypto/ca"
	"github.com/filament-net/filament/crypto/ipsec"
	"github.com/filament-net/filament/crypto/nodeauth"
)

// A node whose address shares its low 28 bits with a peer's (the wire
// SPI's sender tag) is refused as an IPsec peer, and its removal leaves
// the peer's states: both would have the same inbound states at every
// node (dst this node, SPI keySPI<<28 | tag), so its record's change or
// delete deleted the peer's (review, 2026-12-04). The peer's own removal,
// and a third node of another tag, are unaffected; once the peer is gone
// the tag is free.
func TestIPsecPeerTagCollisionRefused(t *testing.T) {
	var installed []string
	x := newIPsecPeers(ipsec.Local{IP: netip.MustParseAddr("10.0.0.1")}, nil)
	x.install = func(_ ipsec.Local, p ipsec.Peer, _ []ipsec.Key) error {
		installed = append(installed, p.IP.String())
		return nil
	}
	x.uninstall = func(_ ipsec.Local, p ipsec.Peer, _ []ipsec.Key) {
		installed = slices.DeleteFunc(installed, func(s string) bool { return s == p.IP.String() })
	}
	a, b, c := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("26.0.0.5"), netip.MustParseAddr("10.0.0.6")
	if ipsec.Tag(a) != ipsec.Tag(b) {
		t.Fatal("the test's addresses do not share a tag")
	}
	if err := x.AddPeer(node.Node{Name: "a"}, a); err != nil {
		t.Fatal(err)
	}
	err := x.AddPeer(node.Node{Name: "b"}, b)
	if !errors.Is(err, ErrTagTaken) {
		t.Fatalf("a node of a peer's tag: %v", err)
	}
	x.RemovePeer(node.Node{Name: "b"}, b)
	if !slices.Contains(installed, a.String()) {
		t.Fatal("the refused node's removal deleted the peer's states")
	}
	if err := x.AddPeer(node.Node{Name: "c"}, c); err != nil {
		t.Fatal(err)
	}
	if err := x.AddPeer(node.Node{Name: "a"}, a); err != nil {
		t.Errorf("the peer's own record again: %v", err)
	}
	x.RemovePeer(node.Node{Name: "a"}, a)
	if slices.Contains(installed, a.String()) {
		t.Error("the peer's removal left its states")
	}
	if err := x.AddPeer(node.Node{Name: "b"}, b); err != nil {
		t.Errorf("the tag once free: %v", err)
	}
	if !slices.Equal(installed, []string{c.String(), b.String()}) {
		t.Errorf("installed %v", installed)
	}
}

// A node whose certificate the CA revokes is refused once the agent
// reads the revocation list, which it reads again when the file changes;
// a list the CA did not sign is refused and the last one kept. Before
// 2026-12-05 node certificates (five years) could not be revoked.
func TestNodeAuthRevocationList(t *testing.T) {
	c1, _ := ca.New("c1")
	other, _ := ca.New("c1")
	sign := func(name string) node.Node {
		pair, err := nodeauth.Issue(c1, "c1", name)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := ca.WritePair(dir, "node", pair); err != nil {
			t.Fatal(err)
		}
		s, err := nodeauth.LoadSigner(filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		n := node.Node{Name: name, Cluster: "c1", ClusterID: 1, IPs: []string{"172.30.1.1"}}
		if err := s.Sign(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	n1, n2 := sign("n1"), sign("n2")
	path := filepath.Join(t.TempDir(), "crl.pem")
	a := &NodeAuth{enabled: true, caPEM: c1.PEM, crlPath: path, refusals: nodeauth.NewRefusals()}
	if changed, err := a.ReloadCRL(); err != nil || !changed {
		t.Fatalf("no list yet: %v, %v", changed, err)
	}
	if !a.Accept("c1", n1) || !a.Accept("c1", n2) {
		t.Fatal("nodes refused with nothing revoked")
	}
	crl, err := c1.Revoke(nil, []byte(n1.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, crl, 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := a.ReloadCRL(); err != nil || !changed {
		t.Fatalf("the list written: %v, %v", changed, err)
	}
	if changed, _ := a.ReloadCRL(); changed {
		t.Error("the same list read again counts as a change (every node vetted again for nothing)")
	}
	if a.Accept("c1", n1) {
		t.Error("a node whose certificate is revoked is accepted")
	}
	if !a.Accept("c1", n2) {
		t.Error("another node is refused")
	}
	if a.Refused() != 1 {
		t.Errorf("refused: %d", a.Refused())
	}
	// A list of another CA (un-revoking n1) is refused; n1 stays refused.
	forged, err := other.Revoke(nil, mustIssue(t, other))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, forged, 0o644)
	if _, err := a.ReloadCRL(); err == nil {
		t.Error("a list another CA signed was read")
	}
	if a.Accept("c1", n1) {
		t.Error("a forged list un-revoked the node")
	}
}

func mustIssue(t *testing.T, authority *ca.CA) []byte {
	t.Helper()
	p, err := nodeauth.Issue(authority, "c1", "x")
	if err != nil {
		t.Fatal(err)
	}
	return p.Cert
}
