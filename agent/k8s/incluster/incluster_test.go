package incluster

import (
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"k8s.io/client-go/kubernetes"
)

// serviceAccount writes token and ca.crt into a temporary directory.
func serviceAccount(t *testing.T, token string, ca []byte) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func certPEM(srv *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// The configuration talks to an API server over TLS verified with the
// ServiceAccount's CA, with its token, and follows a rotated token: after
// a 401 the file is read again (without waiting for client-go's minute).
func TestConfigFollowsTokenRotation(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer token-b" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"major":"1","minor":"37","gitVersion":"v1.37.1"}`))
	}))
	defer srv.Close()
	dir := serviceAccount(t, "token-a\n", certPEM(srv))
	cfg, err := Source{Dir: dir, APIServer: strings.TrimPrefix(srv.URL, "https://")}.Config()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Discovery().ServerVersion(); err == nil {
		t.Fatal("token-a was accepted")
	}
	// The kubelet rotates the token in place.
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte("token-b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// client-go drops its cached token on a 401 to a request made with a
	// token it read before that request (the second one here), so the
	// third request at the latest carries the new one.
	v, err := cs.Discovery().ServerVersion()
	for i := 0; err != nil && i < 2; i++ {
		v, err = cs.Discovery().ServerVersion()
	}
	if err != nil {
		t.Fatalf("after rotation: %v (headers seen: %q)", err, seen)
	}
	if v.GitVersion != "v1.37.1" {
		t.Fatalf("version %q", v.GitVersion)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen[0] != "Bearer token-a" || seen[len(seen)-1] != "Bearer token-b" {
		t.Fatalf("Authorization headers %q: want token-a first, token-b last", seen)
	}
}

// Without an override the address comes from the pod's environment, IPv6
// bracketed; the override wins over it.
func TestConfigAddress(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	dir := serviceAccount(t, "t", certPEM(srv))
	for _, c := range []struct {
		name, override string
		env            map[string]string
		want           string
	}{
		{"environment", "", map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "https://10.96.0.1:443"},
		{"ipv6", "", map[string]string{"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, "https://[fd00::1]:443"},
		{"override", "api.example.com:6443", map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "https://api.example.com:6443"},
		{"override without environment", "192.0.2.1:6443", nil, "https://192.0.2.1:6443"},
	} {
		cfg, err := Source{Dir: dir, APIServer: c.override, Getenv: env(c.env)}.Config()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if cfg.Host != c.want || cfg.WrapTransport == nil || cfg.CAFile != filepath.Join(dir, "ca.crt") {
			t.Fatalf("%s: host %q CA %q token transport %v", c.name, cfg.Host, cfg.CAFile, cfg.WrapTransport != nil)
		}
	}
}

// Hostile or broken input: each error names what is wrong, nothing is
// returned.
func TestConfigInvalid(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	good := certPEM(srv)
	okEnv := map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte("x")})
	for _, c := range []struct {
		name, token string
		ca          []byte
		override    string
		env         map[string]string
		want        string
	}{
		{"no environment", "t", good, "", nil, "KUBERNETES_SERVICE_HOST"},
		{"bad env port", "t", good, "", map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "0"}, `port "0"`},
		{"bad env host", "t", good, "", map[string]string{"KUBERNETES_SERVICE_HOST": "a b", "KUBERNETES_SERVICE_PORT": "443"}, `host "a b"`},
		{"override without port", "t", good, "10.0.0.1", okEnv, `API server "10.0.0.1"`},
		{"override bad host", "t", good, "-bad-:443", okEnv, `host "-bad-"`},
		{"override port range", "t", good, "10.0.0.1:70000", okEnv, `port "70000"`},
		{"empty token", "\n", good, "", okEnv, "empty"},
		{"token with space", "a b", good, "", okEnv, "byte 1"},
		{"token with header injection", "a\r\nX-Evil: 1", good, "", okEnv, "byte 1"},
		{"empty CA", "t", nil, "", okEnv, "no certificate"},
		{"CA garbage", "t", []byte("not pem"), "", okEnv, "not PEM"},
		{"CA with a key", "t", append(append([]byte{}, good...), keyPEM...), "", okEnv, `"RSA PRIVATE KEY"`},
		{"CA broken certificate", "t", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), "", okEnv, "certificate 1"},
	} {
		dir := serviceAccount(t, c.token, c.ca)
		cfg, err := Source{Dir: dir, APIServer: c.override, Getenv: env(c.env)}.Config()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) || cfg != nil {
			t.Fatalf("%s: got %v, %v; want ErrInvalid naming %q", c.name, cfg, err, c.want)
		}
	}
	// Missing files name the file.
	_, err := Source{Dir: t.TempDir(), Getenv: env(okEnv)}.Config()
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "token") {
		t.Fatalf("missing token: %v", err)
	}
}

// FuzzCheck: hostile token, CA and address bytes never panic, and what is
// accepted is what the rules say.
func FuzzCheck(f *testing.F) {
	f.Add([]byte("token\n"), []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), "host", "443")
	f.Add([]byte("a\x00b"), []byte{}, "[::1]", "-1")
	f.Fuzz(func(t *testing.T, token, ca []byte, host, port string) {
		if CheckToken(token) == nil {
			for _, c := range strings.TrimRight(string(token), "\r\n") {
				if c <= ' ' || c > '~' {
					t.Fatalf("token %q accepted", token)
				}
			}
		}
		_ = CheckCA(ca)
		if hp, err := HostPort("f", host, port); err == nil && strings.ContainsAny(hp, " /\r\n@?#") {
			t.Fatalf("address %q accepted", hp)
		}
	})
}
