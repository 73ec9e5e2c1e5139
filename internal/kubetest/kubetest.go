// Package kubetest runs a real kube-apiserver for tests: the binary `make
// kube-apiserver` builds from the Go module proxy, on an address of this
// namespace or of a lab namespace, storing in a given etcd, with a static
// admin token.
package kubetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/filament-net/filament/internal/testutil"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Token is the admin (system:masters) bearer token.
const Token = "filament-test-token"

// Binary returns the cached kube-apiserver ($FILAMENT_KUBE_APISERVER, as
// make test sets it, else ~/.cache/filament/kube-apiserver-v1.37.1;
// testutil.CachedTool).
func Binary(t testing.TB) string {
	t.Helper()
	return testutil.CachedTool(t, "FILAMENT_KUBE_APISERVER", "kube-apiserver-v1.37.1", "kube-apiserver")
}

// Options of a server.
type Options struct {
	// NetNS is the named network namespace to run in ("" = this one); the
	// client config then dials inside it.
	NetNS string
	IP    string
	Port  int
	// Etcd: servers and, for TLS, the client's CA, certificate and key.
	EtcdServers               []string
	EtcdCA, EtcdCert, EtcdKey string
	ExtraArgs                 []string
}

// Server is a running kube-apiserver.
type Server struct {
	Config  *rest.Config // admin, TLS unverified
	CertDir string       // its self-signed serving certificate
}

// Start runs the server (stopped at cleanup) and waits until it is ready.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(key)
	saKey, tokens := filepath.Join(dir, "sa.key"), filepath.Join(dir, "tokens.csv")
	os.WriteFile(saKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	os.WriteFile(tokens, []byte(Token+",admin,admin,system:masters\n"), 0o600)
	logPath := filepath.Join(dir, "kube-apiserver.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--etcd-servers", strings.Join(o.EtcdServers, ","),
		"--bind-address", o.IP, "--advertise-address", o.IP, "--secure-port", strconv.Itoa(o.Port),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", saKey, "--service-account-signing-key-file", saKey,
		"--token-auth-file", tokens, "--authorization-mode", "RBAC",
		"--service-cluster-ip-range", "10.96.0.0/16", "--endpoint-reconciler-type", "none"}
	if o.EtcdCA != "" {
		args = append(args, "--etcd-cafile", o.EtcdCA, "--etcd-certfile", o.EtcdCert, "--etcd-keyfile", o.EtcdKey)
	}
	args = append(args, o.ExtraArgs...)
	cmd := exec.Command(bin, args...)
	if o.NetNS != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", o.NetNS, bin}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		logf.Close()
	})
	rc := &rest.Config{Host: "https://" + net.JoinHostPort(o.IP, strconv.Itoa(o.Port)), BearerToken: Token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 2000, Burst: 4000}
	if o.NetNS != "" {
		rc.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := ns.WithNetNSPath(filepath.Join("/var/run/netns", o.NetNS), func(ns.NetNS) error {
				var err error
				conn, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	logTail := func() string {
		b, _ := os.ReadFile(logPath)
		return string(b[max(0, len(b)-4000):])
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		cancel()
		if err == nil && string(body) == "ok" {
			return &Server{Config: rc, CertDir: filepath.Join(dir, "certs")}
		}
		select {
		case <-exited:
			t.Fatalf("kube-apiserver exited: %v\n%s", cmd.ProcessState, logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready: %v\n%s", err, logTail())
		}
		time.Sleep(300 * time.Millisecond)
	}
}
