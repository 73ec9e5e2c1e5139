package hubble_test

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/crypto/ca"
	"github.com/filament-net/filament/crypto/nodeauth"
)

// The Hubble listener refuses a client whose certificate the CA's
// revocation list revokes (a leaked relay certificate, revoked with
// `filament clustermesh revoke-node-cert`), and takes the others of the
// same name. Before 2026-12-05 it checked the CA and the name only: a
// revoked certificate read every node's flows for its five years.
func TestServerTLSRefusesRevokedClient(t *testing.T) {
	authority, dir := hubble.NodeTLSFixture(t)
	good, _ := authority.Issue("hubble-relay", false, nil, nil)
	leaked, _ := authority.Issue("hubble-relay", false, nil, nil)
	crl, err := authority.Revoke(nil, leaked.Cert)
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := nodeauth.ParseRevoked(crl, authority.PEM)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := hubble.ServerTLS(filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"), filepath.Join(dir, "ca.pem"),
		hubble.Clients{Names: []string{"hubble-relay"}, Revoked: revoked.CheckCert})
	if err != nil {
		t.Fatal(err)
	}
	served := tlsServer(t, conf, authority.PEM)
	if !served(good) {
		t.Fatal("a client certificate of the CA and an allowed name was refused")
	}
	if served(leaked) {
		t.Error("a revoked client certificate was served")
	}
}

// tlsServer serves conf on loopback and returns a function telling
// whether a client with a certificate pair (of the CA caPEM) completes
// the handshake and is answered.
func tlsServer(t *testing.T, conf *tls.Config, caPEM []byte) func(ca.Pair) bool {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if c.(*tls.Conn).Handshake() == nil {
					c.Write([]byte("ok"))
				}
			}()
		}
	}()
	roots, err := hubble.PoolOf(caPEM, "ca")
	if err != nil {
		t.Fatal(err)
	}
	return func(p ca.Pair) bool {
		cert, err := tls.X509KeyPair(p.Cert, p.Key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"})
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2)
		n, _ := c.Read(buf)
		return string(buf[:n]) == "ok"
	}
}

// A connected cluster's relay reads this cluster's nodes with a
// certificate of its own (hubble-remote-<cluster>-<token>, issued at
// connect), served while the bundle's remote-peers lists that cluster
// with that token. The attack: until 2026-12-06 every connected cluster
// was given the one hubble-remote certificate, so a cluster disconnected
// since (or anyone holding a copy of its hubble-remotes/) kept reading
// every node's flows for the certificate's five years. The old shared
// name is still served (clusters connected before) while the node lists
// it.
func TestServerTLSServesConnectedClustersRelaysOnly(t *testing.T) {
	a, b, c := t.TempDir(), t.TempDir(), t.TempDir()
	for i, x := range []struct{ dir, name string }{{a, "a"}, {b, "b"}, {c, "c"}} {
		if _, err := clustermesh.Enable(x.dir, x.name, uint32(i+1), []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
			t.Fatal(err)
		}
	}
	connect := func(peer string) {
		t.Helper()
		if _, _, err := clustermesh.Connect(a, peer); err != nil {
			t.Fatal(err)
		}
	}
	relayOf := func(peer string) ca.Pair { // peer's relay's certificate for a's nodes
		t.Helper()
		rc, err := clustermesh.LoadHubbleRemote(peer, "a")
		if err != nil {
			t.Fatal(err)
		}
		return ca.Pair{Cert: []byte(rc.Cert), Key: []byte(rc.Key)}
	}
	connect(b)
	connect(c)
	authority, err := ca.Load(a)
	if err != nil {
		t.Fatal(err)
	}
	node, err := authority.Issue("node", true, []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.WritePair(dir, "node", node); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), authority.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	server := func(cl hubble.Clients) func(ca.Pair) bool {
		conf, err := hubble.ServerTLS(filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"), filepath.Join(dir, "ca.pem"), cl)
		if err != nil {
			t.Fatal(err)
		}
		return tlsServer(t, conf, authority.PEM)
	}
	names := []string{clustermesh.HubbleRelay, clustermesh.HubbleRemote}
	served := server(hubble.Clients{Names: names, PeersFile: clustermesh.PeersFile(a)})
	bOld, cRelay := relayOf(b), relayOf(c)
	if !served(bOld) || !served(cRelay) {
		t.Fatal("a connected cluster's relay certificate was refused")
	}
	shared, err := authority.Issue(clustermesh.HubbleRemote, false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !served(shared) {
		t.Error("the shared hubble-remote certificate of clusters connected before was refused")
	}
	if err := clustermesh.Disconnect(a, b); err != nil {
		t.Fatal(err)
	}
	if served(bOld) {
		t.Error("a disconnected cluster's relay certificate was served")
	}
	if !served(cRelay) {
		t.Error("the other connected cluster's relay certificate was refused after b's disconnect")
	}
	connect(b)
	if served(bOld) {
		t.Error("the certificate of b's earlier connection was served after b connected again")
	}
	if !served(relayOf(b)) {
		t.Error("b's new relay certificate was refused")
	}
	forged, err := authority.Issue("hubble-remote-b-0123456789abcdef", false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if served(forged) {
		t.Error("a relay certificate of b with a token not listed was served")
	}
	// The etcd certificate c's agents read this cluster with (its own
	// user, the same token) is no relay's.
	rc, err := clustermesh.LoadRemote(filepath.Join(clustermesh.RemotesDir(c), "a.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if served(ca.Pair{Cert: []byte(rc.Cert), Key: []byte(rc.Key)}) {
		t.Error("a connected cluster's etcd reader certificate was served as a relay's")
	}
	// No list given: no connected cluster's own certificate. The shared
	// name left out of Names: that one refused, the clusters' own served.
	if served := server(hubble.Clients{Names: names}); served(cRelay) {
		t.Error("a connected cluster's relay certificate was served with no list of connected clusters")
	}
	served = server(hubble.Clients{Names: []string{clustermesh.HubbleRelay}, PeersFile: clustermesh.PeersFile(a)})
	if served(shared) {
		t.Error("the shared hubble-remote certificate was served without its name in the list")
	}
	if !served(cRelay) {
		t.Error("a connected cluster's own relay certificate was refused without the shared name in the list")
	}
}
