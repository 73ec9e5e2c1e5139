package kvstore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/kvstore/embedded"
)

type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), caCert: cert, caKey: key}
	p.write(t, "ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue writes a leaf certificate and key signed by the CA; it returns their paths.
func (p *pki) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return p.write(t, name+".pem", "CERTIFICATE", der), p.write(t, name+"-key.pem", "EC PRIVATE KEY", kder)
}

// A client with the right CA and certificate reaches an etcd that demands
// mutual TLS; one without a client certificate, or trusting another CA, does not.
func TestMutualTLS(t *testing.T) {
	ca := newPKI(t, "filament-test-ca")
	srvCert, srvKey := ca.issue(t, "etcd", x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := ca.issue(t, "agent", x509.ExtKeyUsageClientAuth)
	s, err := embedded.Start(embedded.Config{
		Dir: t.TempDir(), ClientURL: "https://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", UnsafeNoFsync: true,
		CertFile: srvCert, KeyFile: srvKey, ClientCAFile: filepath.Join(ca.dir, "ca.pem"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	good := kvstore.Config{Endpoints: s.Endpoints(), CAFile: filepath.Join(ca.dir, "ca.pem"), CertFile: cliCert, KeyFile: cliKey, DialTimeout: 3 * time.Second}
	c, err := kvstore.Connect(ctx, good)
	if err != nil {
		t.Fatalf("mutual TLS client: %v", err)
	}
	defer c.Close()
	if err := c.Put(ctx, "filament/tls", []byte("ok"), 0); err != nil {
		t.Fatal(err)
	}
	noCert := good
	noCert.CertFile, noCert.KeyFile = "", ""
	if c2, err := kvstore.Connect(ctx, noCert); err == nil {
		c2.Close()
		t.Fatal("a client without a certificate was accepted")
	}
	other := newPKI(t, "other-ca")
	wrongCA := good
	wrongCA.CAFile = filepath.Join(other.dir, "ca.pem")
	if c3, err := kvstore.Connect(ctx, wrongCA); err == nil {
		c3.Close()
		t.Fatal("a client trusting another CA connected")
	}
}
