package encryption

import (
	"testing"

	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/crypto/ca"
	"github.com/filament-net/filament/crypto/nodeauth"
)

// A remote cluster's revocation list, as its agents publish it in its
// kvstore, revokes its nodes here: taken only when that cluster's CA
// signed it, and never an earlier list over a later one (whoever can
// write the remote's kvstore, one of its nodes, could otherwise put an
// earlier list back to unrevoke itself). The local list does not apply
// to remote nodes, nor a remote's to another cluster's.
func TestRemoteRevocationList(t *testing.T) {
	local, _ := ca.New("c1")
	east, _ := ca.New("east")
	other, _ := ca.New("east")
	e1, e2 := signedNode(t, east, "east", "n1"), signedNode(t, east, "east", "n2")
	a := &NodeAuth{enabled: true, caPEM: local.PEM, refusals: nodeauth.NewRefusals(), remote: map[string]*nodeauth.Revoked{}}
	check := a.Remote()
	accepted := func(n node.Node) bool { return check("east", east.PEM, n) == nil }
	if !accepted(e1) || !accepted(e2) {
		t.Fatal("remote nodes refused with nothing revoked")
	}
	crl1, err := east.Revoke(nil, []byte(e1.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := a.RemoteCRL("east", east.PEM, crl1); err != nil || !changed {
		t.Fatalf("east's list: %v, %v", changed, err)
	}
	if accepted(e1) {
		t.Error("a remote node its cluster revoked is accepted")
	}
	if !accepted(e2) {
		t.Error("another node of the cluster is refused")
	}
	if changed, _ := a.RemoteCRL("east", east.PEM, crl1); changed {
		t.Error("the same list again counts as a change")
	}
	// Another CA's list, and a list for another cluster.
	forged, err := other.Revoke(nil, mustIssue(t, other))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.RemoteCRL("east", east.PEM, forged); err == nil {
		t.Error("a list another CA signed was taken")
	}
	if _, err := a.RemoteCRL("west", east.PEM, crl1); err != nil {
		t.Fatal(err)
	}
	// A later list, then the earlier one again (un-revoking e2).
	crl2, err := east.Revoke(crl1, []byte(e2.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := a.RemoteCRL("east", east.PEM, crl2); err != nil || !changed {
		t.Fatalf("east's later list: %v, %v", changed, err)
	}
	if changed, err := a.RemoteCRL("east", east.PEM, crl1); err != nil || changed {
		t.Errorf("an earlier list taken over a later one: %v, %v", changed, err)
	}
	if accepted(e1) || accepted(e2) {
		t.Error("an earlier list un-revoked a node")
	}
	// The local cluster's nodes are vetted with the local list only.
	l1 := signedNode(t, local, "c1", "n1")
	if !a.Accept("c1", l1) {
		t.Error("a remote cluster's list refused a local node")
	}
}

// signedNode is node name of cluster, its record signed with a
// certificate authority issued.
func signedNode(t *testing.T, authority *ca.CA, cluster, name string) node.Node {
	t.Helper()
	pair, err := nodeauth.Issue(authority, cluster, name)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.WritePair(dir, "node", pair); err != nil {
		t.Fatal(err)
	}
	s, err := nodeauth.LoadSigner(dir+"/node.pem", dir+"/node-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	n := node.Node{Name: name, Cluster: cluster, ClusterID: 1, IPs: []string{"172.30.1.1"}}
	if err := s.Sign(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A remote cluster's list taken is kept in the state dir: after a
// restart the agent refuses the nodes it revokes before that cluster's
// stored list is read (a holder of that cluster's kvstore credentials
// may have deleted it, or put an earlier one back), and takes no
// earlier list over it. Before, a restarted agent took the remote's
// revoked nodes until its agents published the list again.
func TestRemoteRevocationListKeptAcrossRestart(t *testing.T) {
	east, _ := ca.New("east")
	e1 := signedNode(t, east, "east", "n1")
	dir := t.TempDir()
	start := func() *NodeAuth {
		return &NodeAuth{enabled: true, refusals: nodeauth.NewRefusals(), remote: map[string]*nodeauth.Revoked{}, remoteDir: dir}
	}
	crl1, err := east.Revoke(nil, mustIssue(t, east))
	if err != nil {
		t.Fatal(err)
	}
	crl2, err := east.Revoke(crl1, []byte(e1.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := start().RemoteCRL("east", east.PEM, crl2); err != nil || !changed {
		t.Fatalf("east's list: %v, %v", changed, err)
	}
	a := start() // restarted
	if a.Remote()("east", east.PEM, e1) == nil {
		t.Error("after a restart a node the remote's list revokes was accepted")
	}
	if changed, _ := a.RemoteCRL("east", east.PEM, crl1); changed {
		t.Error("after a restart an earlier list was taken over the kept one")
	}
	// A kept list another CA signed (the file altered) is not taken.
	other, _ := ca.New("east")
	if a := start(); a.Remote()("east", other.PEM, signedNode(t, other, "east", "n1")) != nil {
		t.Error("a kept list checked against another CA refused that CA's node")
	}
}
