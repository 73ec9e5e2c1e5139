// Package nodeauth owns node authentication: a cluster's CA issues each
// node a certificate (admin-issued, at join); a node signs its record in the
// kvstore (addresses, pod CIDRs, WireGuard key) with that certificate's key;
// agents accept a node as a peer only when its certificate chains to the
// CA trusted for its cluster, names that node of that cluster, and the
// record's signature verifies. Refusals are kept with their reason for
// status and metrics.
package nodeauth

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/crypto/ca"
	"github.com/filament-net/filament/crypto/keyfile"
)

// ErrRefused wraps every reason a node record is not accepted.
var ErrRefused = errors.New("node not authenticated")

// CommonName is the certificate subject of node name in cluster.
func CommonName(cluster, name string) string { return "node:" + cluster + "/" + name }

// ServerName is the DNS name a node's certificate carries, so that it
// also serves as the node's TLS server certificate (its Hubble API, which
// the relay dials by this name).
func ServerName(cluster, name string) string {
	return name + "." + cluster + ".hubble-grpc.filament.io"
}

// Issue makes a node certificate with the cluster's CA (an admin issuing
// it at join): a client certificate for signing the node's record, and a
// server certificate for ServerName.
func Issue(authority *ca.CA, cluster, name string) (ca.Pair, error) {
	return authority.Issue(CommonName(cluster, name), true, nil, []string{ServerName(cluster, name)})
}

// Signer signs this node's record.
type Signer struct {
	certPEM []byte
	key     *ecdsa.PrivateKey
}

// LoadSigner reads the node's certificate and key (PEM files).
func LoadSigner(certFile, keyFile string) (*Signer, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	keyPEM, err := keyfile.Read(keyFile)
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("node key %s: no PEM data", keyFile)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("node key %s: %w", keyFile, err)
	}
	cert, err := parseCert(string(certPEM))
	if err != nil {
		return nil, fmt.Errorf("node certificate %s: %w", certFile, err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("node certificate %s does not match the key %s", certFile, keyFile)
	}
	return &Signer{certPEM: certPEM, key: key}, nil
}

// Subject is the certificate's common name.
func (s *Signer) Subject() string {
	c, _ := parseCert(string(s.certPEM))
	if c == nil {
		return ""
	}
	return c.Subject.CommonName
}

// canonical is what a signature covers: the record as published, without
// the signature, the local-only reachability and the node's other
// addresses (LocalAddrs: added after signing was, so an agent from before
// it, which drops the field when it reads a record, still verifies the
// signature; what a forged list can do is close control ports to pods
// on up to node.MaxLocalAddrs more addresses), and whether it runs
// failure detection (Gossip, added later too: a forged one has a silent
// node declared dead, or not, by the others' detectors).
func canonical(n node.Node) []byte {
	n.Signature, n.Reachable, n.LocalAddrs, n.Gossip = "", false, nil, false
	b, _ := json.Marshal(n)
	return b
}

// Sign puts the certificate in the record and signs it.
func (s *Signer) Sign(n *node.Node) error {
	n.Certificate = string(s.certPEM)
	sum := sha256.Sum256(canonical(*n))
	sig, err := ecdsa.SignASN1(rand.Reader, s.key, sum[:])
	if err != nil {
		return err
	}
	n.Signature = base64.StdEncoding.EncodeToString(sig)
	return nil
}

func parseCert(p string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(p))
	if b == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// Verify accepts record n of a node of its cluster when its certificate
// chains to caPEM (the CA trusted for that cluster), names that node, and
// the signature over the record verifies.
func Verify(n node.Node, caPEM []byte) error {
	if n.Certificate == "" {
		return fmt.Errorf("%w: %s/%s has no certificate", ErrRefused, n.Cluster, n.Name)
	}
	cert, err := parseCert(n.Certificate)
	if err != nil {
		return fmt.Errorf("%w: %s/%s: certificate: %v", ErrRefused, n.Cluster, n.Name, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%w: no CA to verify %s/%s against", ErrRefused, n.Cluster, n.Name)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("%w: %s/%s: certificate does not chain to the cluster's CA: %v", ErrRefused, n.Cluster, n.Name, err)
	}
	if want := CommonName(n.Cluster, n.Name); cert.Subject.CommonName != want {
		return fmt.Errorf("%w: %s/%s: certificate is for %q, not %q", ErrRefused, n.Cluster, n.Name, cert.Subject.CommonName, want)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("%w: %s/%s: certificate key is not ECDSA", ErrRefused, n.Cluster, n.Name)
	}
	sig, err := base64.StdEncoding.DecodeString(n.Signature)
	if err != nil || len(sig) == 0 {
		return fmt.Errorf("%w: %s/%s: record is not signed", ErrRefused, n.Cluster, n.Name)
	}
	sum := sha256.Sum256(canonical(n))
	if !ecdsa.VerifyASN1(pub, sum[:], sig) {
		return fmt.Errorf("%w: %s/%s: the record's signature does not verify", ErrRefused, n.Cluster, n.Name)
	}
	return nil
}

// Refusal is a node that is not accepted, and why.
type Refusal struct {
	Node   string    `json:"node"` // as the agent names it (remote nodes <cluster>/<node>)
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// Refusals are the nodes currently refused.
type Refusals struct {
	mu sync.Mutex
	m  map[string]Refusal
}

// NewRefusals makes an empty set.
func NewRefusals() *Refusals { return &Refusals{m: map[string]Refusal{}} }

// Set records (err != nil) or clears (nil) the refusal of node.
func (r *Refusals) Set(name string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		delete(r.m, name)
		return
	}
	if old, ok := r.m[name]; ok && old.Reason == err.Error() {
		return
	}
	r.m[name] = Refusal{Node: name, Reason: err.Error(), Since: time.Now()}
}

// List returns the refusals by node name.
func (r *Refusals) List() []Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Refusal, 0, len(r.m))
	for _, x := range r.m {
		out = append(out, x)
	}
	slices.SortFunc(out, func(a, b Refusal) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// Count is the number of refused nodes.
func (r *Refusals) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

// Revoked are the serial numbers of the node certificates the cluster's
// CA has revoked (its revocation list), and the list's number (each list
// the CA signs has a higher one: ca.Revoke).
type Revoked struct {
	serials map[string]bool
	number  *big.Int
}

// ParseRevoked reads the CA's revocation list (PEM), refusing one the CA
// in caPEM did not sign.
func ParseRevoked(crlPEM, caPEM []byte) (*Revoked, error) {
	b, _ := pem.Decode(caPEM)
	if b == nil {
		return nil, fmt.Errorf("%w: no PEM CA certificate", ErrRefused)
	}
	issuer, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: CA certificate: %v", ErrRefused, err)
	}
	l, err := ca.ParseCRL(crlPEM, issuer)
	if err != nil {
		return nil, err
	}
	if l.Number == nil {
		return nil, fmt.Errorf("%w: the revocation list has no number", ErrRefused)
	}
	r := &Revoked{serials: map[string]bool{}, number: l.Number}
	for _, e := range l.RevokedCertificateEntries {
		r.serials[e.SerialNumber.String()] = true
	}
	return r, nil
}

// Newer tells whether r is a later list of the CA than old (nil: none):
// an earlier one, validly signed, is not taken over a later one, so
// that whoever can write where lists are published cannot unrevoke a
// certificate with it.
func (r *Revoked) Newer(old *Revoked) bool {
	return r != nil && (old == nil || r.number.Cmp(old.number) > 0)
}

// Len is how many certificates are revoked.
func (r *Revoked) Len() int {
	if r == nil {
		return 0
	}
	return len(r.serials)
}

// CheckCert refuses a certificate the list revokes (r nil: none is): a
// node's, or another client's of the CA (a relay's).
func (r *Revoked) CheckCert(cert *x509.Certificate) error {
	if r.Len() > 0 && r.serials[cert.SerialNumber.String()] {
		return fmt.Errorf("%w: certificate %s (%s) is revoked", ErrRefused, cert.SerialNumber, cert.Subject.CommonName)
	}
	return nil
}

// Check refuses record n when its certificate is revoked (r nil: none is).
func (r *Revoked) Check(n node.Node) error {
	if r.Len() == 0 {
		return nil
	}
	cert, err := parseCert(n.Certificate)
	if err != nil {
		return fmt.Errorf("%w: %s/%s: certificate: %v", ErrRefused, n.Cluster, n.Name, err)
	}
	if r.serials[cert.SerialNumber.String()] {
		return fmt.Errorf("%w: %s/%s: certificate %s is revoked", ErrRefused, n.Cluster, n.Name, cert.SerialNumber)
	}
	return nil
}
