package kubenode

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filament-net/filament/internal/testutil"
)

// KubeletBinary returns the cached kubelet ($FILAMENT_KUBELET, as make test
// sets it, else ~/.cache/filament/kubelet-v1.37.1; testutil.CachedTool).
func KubeletBinary(t testing.TB) string {
	t.Helper()
	return testutil.CachedTool(t, "FILAMENT_KUBELET", "kubelet-v1.37.1", "kubelet")
}

// KubeletOptions of one kubelet.
type KubeletOptions struct {
	Binary string
	// Dir holds its root directory, configuration, certificates and log
	// (on a filesystem that is not tmpfs, like containerd's).
	Dir string
	// NetNS is the node's network namespace path; the kubelet runs there,
	// so host-network pods get the node's namespace.
	NetNS string
	// NodeName and NodeIP the kubelet registers.
	NodeName, NodeIP string
	// APIServer (https://host:port) and the bearer token it authenticates
	// with.
	APIServer, Token string
	// Containerd's socket.
	RuntimeSocket string
	// CgroupRoot is the cgroup (in every hierarchy, where it must exist)
	// under which the kubelet puts its pods, e.g. "/filament-node-x".
	CgroupRoot string
}

// Kubelet is a running kubelet.
type Kubelet struct {
	o       KubeletOptions
	cmd     *exec.Cmd
	log     *os.File
	exited  chan struct{}
	sysctls map[string]string // as they were before it started
}

// kernelTunables are the machine-wide settings a kubelet without
// protectKernelDefaults writes its own values into (they are not per
// network namespace); Stop puts back what was there.
var kernelTunables = []string{"kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// StartKubelet runs a kubelet with the configuration the test machines
// need (docs/install.md: cgroup v1 with cgroupfs, swap allowed, no disk
// pressure evictions, anonymous access to its own port) and returns once it
// has started; the node shows up in the API server shortly after.
func StartKubelet(o KubeletOptions) (*Kubelet, error) {
	for _, d := range []string{"root", "certs", "pod-logs"} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: test
  user: {token: %q}
contexts:
- name: test
  context: {cluster: test, user: test}
current-context: test
`, o.APIServer, o.Token)
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: %q
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
podLogsDir: %q
address: %q
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "1Mi", nodefs.available: "0%%", imagefs.available: "0%%", nodefs.inodesFree: "0%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
fileCheckFrequency: 5s
resolvConf: ""
serializeImagePulls: false
`, o.CgroupRoot, o.RuntimeSocket, filepath.Join(o.Dir, "pod-logs"), o.NodeIP)
	kc, cfg := filepath.Join(o.Dir, "kubeconfig"), filepath.Join(o.Dir, "config.yaml")
	if err := os.WriteFile(kc, []byte(kubeconfig), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(o.Dir, "kubelet.log"))
	if err != nil {
		return nil, err
	}
	k := &Kubelet{o: o, log: log, exited: make(chan struct{}), sysctls: map[string]string{}}
	for _, p := range kernelTunables {
		if b, err := os.ReadFile("/proc/sys/" + p); err == nil {
			k.sysctls[p] = strings.TrimSpace(string(b))
		}
	}
	k.cmd = exec.Command("nsenter", "--net="+o.NetNS, o.Binary, "--config", cfg, "--kubeconfig", kc,
		"--root-dir", filepath.Join(o.Dir, "root"), "--cert-dir", filepath.Join(o.Dir, "certs"),
		"--hostname-override", o.NodeName, "--node-ip", o.NodeIP, "--v", "2")
	k.cmd.Stdout, k.cmd.Stderr = log, log
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := k.cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	go func() { k.cmd.Wait(); close(k.exited) }()
	return k, nil
}

// Exited is closed when the kubelet exits.
func (k *Kubelet) Exited() <-chan struct{} { return k.exited }

// LogTail returns the last n bytes of the kubelet's log.
func (k *Kubelet) LogTail(n int) string {
	b, _ := os.ReadFile(k.log.Name())
	return string(b[max(0, len(b)-n):])
}

// Stop kills the kubelet (its pods keep running in containerd, whose Stop
// kills them), waits for it, unmounts what it mounted under Dir (the pods'
// secret and projected volumes) and puts back the kernel settings it
// changed.
func (k *Kubelet) Stop() error {
	syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
	<-k.exited
	k.log.Close()
	unmountUnder(k.o.Dir)
	var errs []error
	for p, v := range k.sysctls {
		if err := os.WriteFile("/proc/sys/"+p, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restoring %s=%s: %w", p, v, err))
		}
	}
	return errors.Join(errs...)
}

// RemoveCgroups removes cgroup root (e.g. a kubelet's CgroupRoot) and
// everything under it in every hierarchy (CgroupHierarchies); call it
// after the processes in them (containerd's pods) have gone.
func RemoveCgroups(root string) error {
	if root == "" || root == "/" {
		return nil
	}
	hier, err := CgroupHierarchies()
	if err != nil {
		return err
	}
	var errs []string
	for _, h := range hier {
		var dirs []string
		filepath.WalkDir(filepath.Join(h, root), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		// Children first; a cgroup whose last process is exiting may
		// still be busy for a moment.
		slices.Reverse(dirs)
		for _, d := range dirs {
			var err error
			for range 50 {
				if err = syscall.Rmdir(d); err == nil || os.IsNotExist(err) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", d, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("cgroups left: %s", strings.Join(errs, "; "))
	}
	return nil
}

// CgroupHierarchies returns the mount point of each cgroup hierarchy (v1
// controllers and the unified cgroup2), one per hierarchy: the kernel
// mounts a co-mounted pair once, and links such as cpu -> cpu,cpuacct are
// not mounts.
func CgroupHierarchies() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	var hier []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 2 && (f[2] == "cgroup" || f[2] == "cgroup2") && !slices.Contains(hier, f[1]) {
			hier = append(hier, f[1])
		}
	}
	if len(hier) == 0 {
		return nil, errors.New("no cgroup hierarchy mounted")
	}
	return hier, nil
}

// NetcheckRef is the workload image's reference.
const NetcheckRef = "registry.example/filament-netcheck:test"

// NetcheckImage builds ./netcheck static and writes its image tarball
// (entrypoint netcheck, user 65532).
func NetcheckImage(dir, tarPath string) error {
	bin, err := BuildStatic(dir, "github.com/filament-net/filament/internal/kubenode/netcheck", "netcheck")
	if err != nil {
		return err
	}
	return Image(tarPath, NetcheckRef, []File{{Path: "/netcheck", Source: bin, Mode: 0o755}}, []string{"/netcheck"}, "65532")
}

// LoopbackPlugin installs the reference CNI "loopback" plugin into cniBin:
// containerd 1.6's CRI brings every pod's lo up through it, so nodes carry
// it (kubeadm's from kubernetes-cni). Built from the containernetworking
// plugins module at the version this module requires.
func LoopbackPlugin(cniBin string) error {
	v, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/containernetworking/plugins").Output()
	if err != nil {
		return fmt.Errorf("go list containernetworking/plugins: %w", err)
	}
	cmd := exec.Command("go", "install", "github.com/containernetworking/plugins/plugins/main/loopback@"+strings.TrimSpace(string(v)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOBIN="+cniBin, "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go install loopback: %v\n%s", err, out)
	}
	return nil
}
