package hubble

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ErrTLS wraps the errors of loading the API's TLS configuration.
var ErrTLS = errors.New("hubble TLS")

// ServerTLS is the TCP listener's mutual TLS: the node's certificate, and
// clients whose certificate chains to the cluster's CA (caFile) and that
// clients admits (Clients.Check: the relay's, a connected cluster's).
func ServerTLS(certFile, keyFile, caFile string, clients Clients) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: node certificate: %v", ErrTLS, err)
	}
	roots, err := LoadCA(caFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots,
		VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
			if len(chains) == 0 || len(chains[0]) == 0 {
				return fmt.Errorf("%w: no verified client certificate", ErrTLS)
			}
			return clients.Check(chains[0][0])
		},
	}, nil
}

// LoadCA reads a PEM file of CA certificates.
func LoadCA(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: CA: %v", ErrTLS, err)
	}
	return PoolOf(b, file)
}

// PoolOf is a pool of the PEM certificates of b (from where, for errors).
func PoolOf(b []byte, where string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%w: CA %s: no PEM certificate", ErrTLS, where)
	}
	return pool, nil
}
