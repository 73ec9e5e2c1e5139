// Package ca owns a cluster's certificate authority: it creates the CA and
// issues the certificates of the cluster mesh (the apiserver's server
// certificate, and client certificates for the admin, local agents and
// remote clusters, whose common name is their etcd user), and reads them
// back from a directory.
package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/filament-net/filament/internal/atomicfile"
)

// ErrCA is wrapped by every error of this package.
var ErrCA = errors.New("certificate authority")

// CA is a loaded authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// New creates a CA named for the cluster, valid for ten years.
func New(cluster string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("%w: key: %v", ErrCA, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "filament-ca-" + cluster, Organization: []string{"filament"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(10, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCA, err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Pair is a certificate and its key in PEM.
type Pair struct{ Cert, Key []byte }

// Issue signs a certificate for commonName (the etcd user name of a client);
// server certificates carry ips and names as SANs.
func (c *CA) Issue(commonName string, server bool, ips []net.IP, names []string) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, fmt.Errorf("%w: key: %v", ErrCA, err)
	}
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if server {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: commonName, Organization: []string{"filament"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(5, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage, IPAddresses: ips, DNSNames: names,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.Cert, &key.PublicKey, c.Key)
	if err != nil {
		return Pair{}, fmt.Errorf("%w: sign %s: %v", ErrCA, commonName, err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Pair{}, fmt.Errorf("%w: %v", ErrCA, err)
	}
	return Pair{
		Cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		Key:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}, nil
}

// Save writes the CA to dir as ca.pem and ca-key.pem (0600).
func (c *CA) Save(dir string) error {
	kder, err := x509.MarshalECPrivateKey(c.Key)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCA, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w: %v", ErrCA, err)
	}
	if err := atomicfile.Write(filepath.Join(dir, "ca.pem"), c.PEM, 0o644); err != nil {
		return fmt.Errorf("%w: %v", ErrCA, err)
	}
	return atomicfile.Write(filepath.Join(dir, "ca-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
}

// Load reads a CA saved by Save.
func Load(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCA, err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCA, err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("%w: %s: no PEM data", ErrCA, dir)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCA, err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCA, err)
	}
	return &CA{Cert: cert, Key: key, PEM: certPEM}, nil
}

// WritePair writes name.pem and name-key.pem (0600) to dir, each replaced
// whole (atomicfile): a link in their place is replaced, not followed
// (until 2026-12-07 connect wrote a peer bundle's relay key through such
// a link, over any file the operator could write).
func WritePair(dir, name string, p Pair) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w: %v", ErrCA, err)
	}
	if err := atomicfile.Write(filepath.Join(dir, name+".pem"), p.Cert, 0o644); err != nil {
		return fmt.Errorf("%w: %v", ErrCA, err)
	}
	return atomicfile.Write(filepath.Join(dir, name+"-key.pem"), p.Key, 0o600)
}

// Revoke returns the CA's certificate revocation list (PEM) with the
// certificate certPEM added to crlPEM's entries (crlPEM empty: none yet;
// it must be this CA's), its number one more. The list is valid for a
// year from now; agents read it as long as its signature verifies.
func (c *CA) Revoke(crlPEM, certPEM []byte) ([]byte, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%w: no PEM certificate to revoke", ErrCA)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate to revoke: %v", ErrCA, err)
	}
	if cert.IsCA {
		return nil, fmt.Errorf("%w: the certificate to revoke is a CA's (%s), not one it issued", ErrCA, cert.Subject.CommonName)
	}
	if err := cert.CheckSignatureFrom(c.Cert); err != nil {
		return nil, fmt.Errorf("%w: the certificate to revoke is not this CA's: %v", ErrCA, err)
	}
	tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now(), NextUpdate: time.Now().AddDate(1, 0, 0)}
	if len(crlPEM) > 0 {
		old, err := ParseCRL(crlPEM, c.Cert)
		if err != nil {
			return nil, err
		}
		tmpl.Number = new(big.Int).Add(old.Number, big.NewInt(1))
		for _, e := range old.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
				return crlPEM, nil // revoked already
			}
			tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, e)
		}
	}
	tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
		x509.RevocationListEntry{SerialNumber: cert.SerialNumber, RevocationTime: time.Now()})
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: revocation list: %v", ErrCA, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// ParseCRL reads a revocation list (PEM) and checks that issuer signed
// it.
func ParseCRL(crlPEM []byte, issuer *x509.Certificate) (*x509.RevocationList, error) {
	b, _ := pem.Decode(crlPEM)
	if b == nil || b.Type != "X509 CRL" {
		return nil, fmt.Errorf("%w: no PEM revocation list (X509 CRL)", ErrCA)
	}
	l, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: revocation list: %v", ErrCA, err)
	}
	if err := l.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("%w: the revocation list is not signed by the CA: %v", ErrCA, err)
	}
	return l, nil
}
