// Package incluster builds the agent's Kubernetes client configuration
// from the pod's ServiceAccount, as a pod's in-cluster configuration does:
// the token and CA files the kubelet mounts at
// /var/run/secrets/kubernetes.io/serviceaccount, and the API server
// address from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, unless
// an address is given explicitly. The agent itself load-balances services,
// so the `kubernetes` Service's cluster IP may not be reachable before it
// runs: the override names the API server (or a load balancer in front of
// it) directly.
//
// The token is a file re-read once a minute, as client-go does with a
// kubeconfig's tokenFile, and also at once after a request made with an
// older reading was refused (401): the kubelet rotates projected tokens in
// place.
package incluster

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport"
)

// DefaultDir is where the kubelet mounts the pod's ServiceAccount.
const DefaultDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// ErrInvalid: the ServiceAccount files, the environment or the override do
// not make a usable configuration; the message names the file or value.
var ErrInvalid = errors.New("invalid in-cluster configuration")

// Source is where the configuration comes from.
type Source struct {
	// Dir holds token and ca.crt ("" = DefaultDir).
	Dir string
	// APIServer is the API server as host:port; "" = the environment's
	// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT.
	APIServer string
	// Getenv reads the environment (nil = os.Getenv).
	Getenv func(string) string
}

// Config checks the ServiceAccount files and the address and returns a
// client configuration whose token is read from the file (cached for a
// minute, dropped after a 401).
func (s Source) Config() (*rest.Config, error) {
	dir := s.Dir
	if dir == "" {
		dir = DefaultDir
	}
	getenv := s.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	hostPort, err := s.address(getenv)
	if err != nil {
		return nil, err
	}
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("%w: token: %v", ErrInvalid, err)
	}
	if err := CheckToken(token); err != nil {
		return nil, fmt.Errorf("%w: token %s: %v", ErrInvalid, tokenFile, err)
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("%w: CA: %v", ErrInvalid, err)
	}
	if err := CheckCA(ca); err != nil {
		return nil, fmt.Errorf("%w: CA %s: %v", ErrInvalid, caFile, err)
	}
	return &rest.Config{
		Host:            "https://" + hostPort,
		TLSClientConfig: rest.TLSClientConfig{CAFile: caFile},
		WrapTransport:   transport.ResettableTokenSourceWrapTransport(transport.NewCachedFileTokenSource(tokenFile)),
	}, nil
}

// address is the API server's host:port, from the override or the
// environment, checked.
func (s Source) address(getenv func(string) string) (string, error) {
	if s.APIServer != "" {
		host, port, err := net.SplitHostPort(s.APIServer)
		if err != nil {
			return "", fmt.Errorf("%w: API server %q: want host:port: %v", ErrInvalid, s.APIServer, err)
		}
		return HostPort("API server", host, port)
	}
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return "", fmt.Errorf("%w: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not both set (not in a pod? give the API server's address)", ErrInvalid)
	}
	return HostPort("KUBERNETES_SERVICE_HOST/PORT", host, port)
}

// HostPort checks host (an IP address or a DNS name) and port (1-65535)
// and joins them, bracketing an IPv6 address.
func HostPort(field, host, port string) (string, error) {
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%w: %s port %q: want 1-65535", ErrInvalid, field, port)
	}
	if _, err := netip.ParseAddr(host); err != nil && !dnsName(host) {
		return "", fmt.Errorf("%w: %s host %q: want an IP address or a DNS name", ErrInvalid, field, host)
	}
	return net.JoinHostPort(host, port), nil
}

// dnsName: dot-separated labels of letters, digits and '-', each 1-63
// long and not starting or ending with '-'; 253 at most in all.
func dnsName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// CheckToken: a bearer token is one line of printable ASCII without
// spaces (a trailing newline is allowed; client-go trims it).
func CheckToken(b []byte) error {
	t := bytes.TrimRight(b, "\r\n")
	if len(t) == 0 {
		return errors.New("empty")
	}
	for i, c := range t {
		if c <= ' ' || c > '~' {
			return fmt.Errorf("byte %d (0x%02x) is not printable ASCII", i, c)
		}
	}
	return nil
}

// CheckCA: the CA bundle holds at least one certificate and nothing but
// PEM certificates.
func CheckCA(b []byte) error {
	n := 0
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				return errors.New("data that is not PEM")
			}
			break
		}
		if blk.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %q, want CERTIFICATE", blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %v", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("no certificate")
	}
	return nil
}
