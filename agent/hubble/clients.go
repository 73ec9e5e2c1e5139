package hubble

import (
	"crypto/x509"
	"fmt"
	"slices"

	"github.com/filament-net/filament/clustermesh"
)

// Clients decides which TLS clients the API serves, by their verified
// certificate's common name: those of Names, and a connected cluster's
// relay (clustermesh.Peer.RelayUser, issued at connect) while that
// cluster is listed with that token in PeersFile (the cluster's
// clustermesh bundle's remote-peers, read at each check: a handshake and
// each call). Until 2026-12-06 every connected cluster's relay presented
// one certificate (clustermesh.HubbleRemote), so a cluster disconnected
// since kept reading this cluster's flows for the certificate's
// lifetime; that name is served (clusters connected before) only while
// Names holds it.
type Clients struct {
	Names     []string
	PeersFile string // "": no per-cluster relay certificate is served
	// Revoked, when set, refuses revoked certificates (the CA's list).
	Revoked func(*x509.Certificate) error
}

// Check returns nil when cert's holder may use the API, else why not.
func (c Clients) Check(cert *x509.Certificate) error {
	cn := cert.Subject.CommonName
	if err := c.named(cn); err != nil {
		return err
	}
	if c.Revoked != nil {
		if err := c.Revoked(cert); err != nil {
			return fmt.Errorf("%w: client %q: %v", ErrTLS, cn, err)
		}
	}
	return nil
}

func (c Clients) named(cn string) error {
	if slices.Contains(c.Names, cn) {
		return nil
	}
	p, ok := clustermesh.PeerOfRelayUser(cn)
	if !ok {
		return fmt.Errorf("%w: client %q may not read flows (serving %v)", ErrTLS, cn, c.Names)
	}
	if c.PeersFile == "" {
		return fmt.Errorf("%w: client %q: a connected cluster's relay, and no list of connected clusters is given (--hubble-peers)", ErrTLS, cn)
	}
	peers, err := clustermesh.ScanPeers(c.PeersFile)
	if err != nil {
		return fmt.Errorf("%w: client %q: connected clusters: %v", ErrTLS, cn, err)
	}
	if !slices.Contains(peers, p) {
		return fmt.Errorf("%w: client %q: cluster %s is not connected with that certificate (%s)", ErrTLS, cn, p.Name, c.PeersFile)
	}
	return nil
}
