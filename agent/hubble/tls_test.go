package hubble_test

import (
	"crypto/tls"
	"path/filepath"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/hubble"
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
		[]string{"hubble-relay"}, revoked.CheckCert)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
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
	roots, err := hubble.PoolOf(authority.PEM, "ca")
	if err != nil {
		t.Fatal(err)
	}
	served := func(p ca.Pair) bool {
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
	if !served(good) {
		t.Fatal("a client certificate of the CA and an allowed name was refused")
	}
	if served(leaked) {
		t.Error("a revoked client certificate was served")
	}
}
