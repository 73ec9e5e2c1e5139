package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"

	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/internal/testutil"
)

// inOwnNamespaces marks the test process that runs in namespaces of its own.
const inOwnNamespaces = "FILAMENT_DAEMON_TEST_NAMESPACES"

// TestMain runs the package's tests, as root, in a network and mount
// namespace of their own (unshare), so the agent's devices, BPF pins and
// listeners never touch the machine's.
func TestMain(m *testing.M) {
	if os.Geteuid() != 0 || os.Getenv(inOwnNamespaces) != "" {
		os.Exit(m.Run())
	}
	cmd := exec.Command("unshare", append([]string{"--net", "--mount", "--propagation", "private", "--"}, os.Args...)...)
	cmd.Env = append(os.Environ(), inOwnNamespaces+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.ExitCode())
		}
		os.Stderr.WriteString("unshare: " + err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(0)
}

// testConfig is an agent on its own: embedded etcd, a fresh bpffs, the
// state dir and socket in dir, no socket load balancing (it attaches to
// the cgroup root, which a mount namespace does not make private).
func testConfig(t *testing.T, dir string) config.Config {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	bpffs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("bpf", bpffs, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(bpffs, syscall.MNT_DETACH) })
	cfg := config.Default()
	cfg.NodeName, cfg.StateDir, cfg.APISocket, cfg.BPFRoot = "daemon-test", filepath.Join(dir, "state"), filepath.Join(dir, "agent.sock"), bpffs
	cfg.SocketLB = false
	cfg.EmbeddedEtcd.UnsafeNoFsync = true
	return cfg
}

// The agent starts every step against its embedded etcd, answers on its
// socket, and stops cleanly when its context ends: Run returns nil, the
// socket is gone and no goroutine is left behind.
func TestRunAndStop(t *testing.T) {
	testutil.RequireRoot(t)
	if os.Getenv(inOwnNamespaces) == "" {
		t.Fatal("not in namespaces of its own")
	}
	cfg := testConfig(t, t.TempDir())
	before := goleak.IgnoreCurrent()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case <-a.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Run ended before the agent was ready: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("agent not ready after 60 s")
	}
	var st struct {
		NodeName string `json:"nodeName"`
		Kvstore  struct {
			Embedded bool `json:"embedded"`
			Healthy  bool `json:"healthy"`
		} `json:"kvstore"`
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", cfg.APISocket)
	}}}
	resp, err := hc.Get("http://agent/v1/status")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	hc.CloseIdleConnections()
	if err != nil || st.NodeName != "daemon-test" || !st.Kvstore.Embedded || !st.Kvstore.Healthy {
		cancel()
		t.Fatalf("status: %+v %v", st, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return 30 s after its context ended")
	}
	if _, err := os.Stat(cfg.APISocket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("API socket left behind: %v", err)
	}
	testutil.NoLeaks(t, before)
	if err := a.Run(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("a second Run: %v, want ErrStopped", err)
	}
}

// New refuses a bad configuration before anything is created.
func TestNewRefusesBadConfig(t *testing.T) {
	cfg := config.Default()
	cfg.Routing = "carrier-pigeon"
	if _, err := New(cfg); !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("New: %v, want %v", err, config.ErrInvalid)
	}
}

// The node's ephemeral ports are checked against the NodePort SNAT range,
// whose start is the datapath's (bpf/lib/lb.h LB_SNAT_PORT_MIN).
func TestSNATOverlap(t *testing.T) {
	h, err := os.ReadFile("../../bpf/lib/lb.h")
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^#define LB_SNAT_PORT_MIN (\d+)$`).FindSubmatch(h); m == nil || string(m[1]) != strconv.Itoa(snatPortMin) {
		t.Fatalf("bpf/lib/lb.h's LB_SNAT_PORT_MIN is not snatPortMin (%d): %q", snatPortMin, m)
	}
	for _, c := range []struct {
		in   string
		warn bool
	}{{"32768\t60999\n", false}, {"1024 65535", true}, {"32768\t61000", true}, {"garbage", false}, {"", false}} {
		if got := snatOverlap(c.in) != ""; got != c.warn {
			t.Errorf("%q: warns %v, want %v", c.in, got, c.warn)
		}
	}
}
