package relay

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/crypto/nodeauth"
)

// BundleCredentials reads the relay's credentials from the cluster's
// clustermesh bundle: for its own nodes the cluster's CA and the relay's
// certificate (hubble-relay.pem); for a connected cluster's nodes that
// cluster's CA and the relay certificate it gave at connect
// (hubble-remotes/<cluster>.yaml, read at each connection and
// handshake, so that connect and disconnect take effect; a node that
// refuses the relay's certificate gets a connection made anew).
func BundleCredentials(dir string) (string, Credentials, error) {
	c, err := clustermesh.LoadCluster(dir)
	if err != nil {
		return "", nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	local, err := clientTLS(caPEM, filepath.Join(dir, "ca.pem"), func() (tls.Certificate, error) {
		return tls.LoadX509KeyPair(filepath.Join(dir, clustermesh.HubbleRelay+".pem"), filepath.Join(dir, clustermesh.HubbleRelay+"-key.pem"))
	})
	if err != nil {
		return "", nil, err
	}
	local.VerifyPeerCertificate = notRevoked(caPEM, clustermesh.NodeCRLFile(dir))
	return c.Name, func(cluster string) (*tls.Config, error) {
		if cluster == c.Name {
			return local, nil
		}
		rc, err := clustermesh.LoadHubbleRemote(dir, cluster)
		if err != nil {
			return nil, fmt.Errorf("%w: no relay credentials for cluster %q (not connected?): %v", ErrConfig, cluster, err)
		}
		return clientTLS([]byte(rc.CA), cluster, func() (tls.Certificate, error) {
			now, err := clustermesh.LoadHubbleRemote(dir, cluster) // the file again at each handshake
			if err != nil {
				return tls.Certificate{}, err
			}
			return tls.X509KeyPair([]byte(now.Cert), []byte(now.Key))
		})
	}, nil
}

// notRevoked refuses a node's server certificate that the CA's
// revocation list in crlFile revokes (read at each connection; absent:
// none is; one the CA did not sign: every connection is refused).
func notRevoked(caPEM []byte, crlFile string) func([][]byte, [][]*x509.Certificate) error {
	return func(_ [][]byte, chains [][]*x509.Certificate) error {
		if len(chains) == 0 || len(chains[0]) == 0 {
			return fmt.Errorf("%w: no verified server certificate", ErrConfig)
		}
		data, err := os.ReadFile(crlFile)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: revocation list: %v", ErrConfig, err)
		}
		r, err := nodeauth.ParseRevoked(data, caPEM)
		if err != nil {
			return fmt.Errorf("%w: revocation list %s: %v", ErrConfig, crlFile, err)
		}
		return r.CheckCert(chains[0][0])
	}
}

// clientTLS is a mutual TLS client configuration: roots from caPEM, the
// certificate cert loads (again at each handshake: a node's connection
// made anew, after a restart or a refusal, presents the current one; the
// one loaded now when loading fails then).
func clientTLS(caPEM []byte, where string, cert func() (tls.Certificate, error)) (*tls.Config, error) {
	roots, err := hubble.PoolOf(caPEM, where)
	if err != nil {
		return nil, err
	}
	pair, err := cert()
	if err != nil {
		return nil, fmt.Errorf("%w: client certificate (%s): %v", ErrConfig, where, err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, Certificates: []tls.Certificate{pair},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if now, err := cert(); err == nil {
				return &now, nil
			}
			return &pair, nil
		}}, nil
}
