package kube_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/filament-net/filament/internal/kubenode"
	"github.com/filament-net/filament/internal/testutil"
)

// The real-node fallback (issue 20 part 3; docs/install.md says why no
// kubelet runs here yet): containerd runs the rendered DaemonSet's pod
// through its CRI API, as a kubelet would, with the pod spec as written
// (host network, pod securityContext, each container's command, args,
// env, capabilities, AppArmor, mounts and propagation) in a network
// namespace standing for the node, from an image without a shell whose
// default user is 65532. The install-cni init container installs the
// plugin and conflist, the agent remounts /proc/sys and passes its startup
// probe (`filament status`, through CRI exec), and `filament-agent
// uninstall`, run as a container of the same spec, leaves no device, pin
// or CNI file behind. What differs from the manifest, because no API
// server or cluster etcd runs here: the agent's kvstore and Kubernetes
// flags (--etcd-*, --gossip-key-file, --k8s-in-cluster) are replaced by
// its embedded etcd and --memberlist-port=0, and hostPath volumes point
// at directories of the test.
func TestAgentPodInContainerd(t *testing.T) {
	testutil.RequireRoot(t)
	docs := readDocs(t, manifestPath())
	dsDoc, cm := find(docs, "DaemonSet", "filament"), find(docs, "ConfigMap", "filament-cni-config")
	if dsDoc == nil || cm == nil {
		t.Fatal("no DaemonSet filament or ConfigMap filament-cni-config")
	}
	var ds appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(dsDoc.Object, &ds); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	suffix := randHex(t)

	// The node: a network namespace with an underlay address.
	node := "fnode-" + suffix
	run(t, "ip", "netns", "add", node)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", node).Run() })
	run(t, "ip", "netns", "add", node+"-peer")
	t.Cleanup(func() { exec.Command("ip", "netns", "del", node+"-peer").Run() })
	run(t, "ip", "link", "add", "fn"+suffix, "netns", node, "type", "veth", "peer", "name", "eth0", "netns", node+"-peer")
	run(t, "ip", "-n", node, "link", "set", "fn"+suffix, "name", "eth0")
	run(t, "ip", "-n", node, "addr", "add", "198.18.0.1/24", "dev", "eth0")
	run(t, "ip", "-n", node, "link", "set", "eth0", "up")
	run(t, "ip", "-n", node, "link", "set", "lo", "up")
	netnsPath := "/var/run/netns/" + node

	// Host directories for the pod's volumes.
	host, dirs := hostDirs(t, "state", "run", "cni-bin", "cni-conf", "cni-config", "lib-modules", "logs")
	bpf := sharedBPFFS(t, host)
	// HostToContainer propagation needs a shared (or slave) mount, as
	// systemd makes / and so /sys/fs/bpf and /var/run/netns; here / is
	// private, so each gets a shared mount of its own.
	netnsDir := filepath.Join(host, "netns")
	if err := os.Mkdir(netnsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", netnsDir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(netnsDir, unix.MNT_DETACH) })
	if err := unix.Mount("", netnsDir, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	// A cgroup2 directory of the test's own: the socket load balancer
	// attaches there, not to the machine's root.
	cg := "/sys/fs/cgroup/unified/filament-node-" + suffix
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Skipf("skipped: no writable cgroup2 at /sys/fs/cgroup/unified: %v", err)
	}
	t.Cleanup(func() { os.Remove(cg) })
	data, _, _ := unstructured.NestedStringMap(cm.Object, "data")
	for k, v := range data {
		if err := os.WriteFile(filepath.Join(dirs["cni-config"], k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	volumes := map[string]string{
		"bpf-maps": bpf, "cgroup": cg, "netns": netnsDir, "state": dirs["state"], "run": dirs["run"],
		"lib-modules": dirs["lib-modules"], "cni-bin": dirs["cni-bin"], "cni-conf": dirs["cni-conf"], "cni-config": dirs["cni-config"],
	}

	// The images: the pause image and one of static binaries, no shell,
	// user 65532.
	imgDir := t.TempDir()
	pauseTar := filepath.Join(imgDir, "pause.tar")
	if err := kubenode.PauseImage(imgDir, pauseTar); err != nil {
		t.Fatal(err)
	}
	// The product image (deploy/image, as make image builds it) for this
	// machine's platform, with the binaries the agent pod runs.
	agentTar, ref := productImage(t, imgDir, "ghcr.io/filament-net/filament:node-test", []string{"filament-agent", "filament", "filament-cni"})
	cdir := nodeDir(t, "filament-node-")
	ctd, err := kubenode.StartContainerd(cdir, dirs["cni-bin"], dirs["cni-conf"], netnsPath)
	if errors.Is(err, kubenode.ErrMissing) && os.Getenv("FILAMENT_REQUIRE_PRIVILEGED") != "1" {
		t.Skipf("skipped: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctd.Stop)
	for _, tar := range []string{pauseTar, agentTar} {
		if _, err := ctd.Ctr("images", "import", tar); err != nil {
			t.Fatal(err)
		}
	}
	cri, err := kubenode.DialCRI(ctd.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cri.Close) // after the pods' removal, registered below

	// The agent's pod, its spec as rendered but for the kvstore and
	// Kubernetes flags (see above).
	spec := ds.Spec.Template.Spec.DeepCopy()
	for i := range spec.Containers {
		c := &spec.Containers[i]
		if c.Name != "agent" {
			continue
		}
		var args []string
		for _, a := range c.Args {
			if strings.HasPrefix(a, "--etcd-") || strings.HasPrefix(a, "--gossip-key-file") || a == "--k8s-in-cluster" {
				continue
			}
			args = append(args, a)
		}
		c.Args = append(args, "--memberlist-port=0", "--embedded-etcd-unsafe-no-fsync")
		var mounts = c.VolumeMounts[:0]
		for _, m := range c.VolumeMounts {
			if m.Name != "etcd-tls" && m.Name != "gossip-key" {
				mounts = append(mounts, m)
			}
		}
		c.VolumeMounts = mounts
		// This machine's root lacks CAP_SYS_RESOURCE (its bounding set),
		// so no container may be given it: runc fails "unable to apply
		// caps". The agent needs it only on kernels before 5.11.
		if c.SecurityContext != nil && c.SecurityContext.Capabilities != nil && !hostHasCap(t, unix.CAP_SYS_RESOURCE) {
			t.Log("the host's bounding set lacks CAP_SYS_RESOURCE: the agent container runs without it")
			c.SecurityContext.Capabilities.Add = slices.DeleteFunc(c.SecurityContext.Capabilities.Add, func(c corev1.Capability) bool { return c == "SYS_RESOURCE" })
		}
	}
	pod := kubenode.Pod{Name: "filament-" + suffix, Namespace: "kube-system", UID: suffix, Spec: *spec, Image: ref,
		Env: map[string]string{"NODE_NAME": "node-" + suffix, "NODE_IP": "198.18.0.1"}, Volumes: volumes, LogDir: dirs["logs"]}
	sandbox, ids, err := cri.Run(ctx, pod)
	if sandbox != "" {
		t.Cleanup(func() { cri.Remove(context.Background(), sandbox) })
	}
	if err != nil {
		t.Fatalf("%v\nlogs: %s", err, containerLogs(dirs["logs"]))
	}
	// install-cni put the plugin and the conflist on the "node".
	for _, f := range []string{filepath.Join(dirs["cni-bin"], "filament"), filepath.Join(dirs["cni-conf"], "10-filament.conflist")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("install-cni: %v", err)
		}
	}
	// The startup probe's command through CRI exec, as the kubelet runs it.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		out, err := cri.Exec(ctx, ids["agent"], spec.Containers[0].StartupProbe.Exec.Command...)
		if err == nil {
			t.Logf("startup probe passed:\n%s", out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("startup probe: %v\nlogs: %s", err, containerLogs(dirs["logs"]))
		}
		time.Sleep(time.Second)
	}
	if l := containerLogs(dirs["logs"]); !strings.Contains(l, "remounted read-write") {
		t.Errorf("the agent did not log its /proc/sys remount:\n%s", l)
	}
	out, _ := exec.Command("ip", "-n", node, "-br", "link").CombinedOutput()
	if !strings.Contains(string(out), "filament_host") {
		t.Errorf("no filament_host in the node namespace:\n%s", out)
	}
	if err := cri.Remove(ctx, sandbox); err != nil {
		t.Fatal(err)
	}

	// Uninstall as a pod of the same spec, the agent's container running
	// `filament-agent uninstall` with the agent's paths.
	un := spec.DeepCopy()
	un.InitContainers = nil
	un.Containers[0].Command = []string{"filament-agent", "uninstall", "--cni-bin-dir=/host/cni-bin", "--cni-conf-dir=/host/cni-conf",
		"--bpf-root=/sys/fs/bpf", "--state-dir=/var/lib/filament", "--api-socket=/var/run/filament/agent.sock"}
	un.Containers[0].Args = []string{"--cluster-pool=" + argValue(spec.Containers[0].Args, "--cluster-pool")}
	un.Containers[0].StartupProbe, un.Containers[0].LivenessProbe, un.Containers[0].ReadinessProbe = nil, nil, nil
	un.Containers[0].VolumeMounts = append(un.Containers[0].VolumeMounts, spec.InitContainers[0].VolumeMounts...)
	un.InitContainers = []corev1.Container{un.Containers[0]}
	un.InitContainers[0].Name = "uninstall"
	un.Containers = nil
	unPod := pod
	unPod.Name, unPod.UID, unPod.Spec = "filament-uninstall-"+suffix, suffix+"-u", *un
	sb2, _, err := cri.Run(ctx, unPod)
	if sb2 != "" {
		t.Cleanup(func() { cri.Remove(context.Background(), sb2) })
	}
	if err != nil {
		t.Fatalf("uninstall: %v\nlogs: %s", err, containerLogs(dirs["logs"]))
	}
	checkNodeClean(t, node, bpf, dirs)
}

// checkNodeClean: after an uninstall, the node's namespace has no
// filament_* device and no route into the cluster pool, and no pin, CNI
// file or state is left in the node's directories.
func checkNodeClean(t *testing.T, node, bpf string, dirs map[string]string) {
	t.Helper()
	out, _ := exec.Command("ip", "-n", node, "-br", "link").CombinedOutput()
	for _, d := range []string{"filament_host", "filament_net", "filament_vxlan"} {
		if strings.Contains(string(out), d) {
			t.Errorf("%s left on the node:\n%s", d, out)
		}
	}
	out, _ = exec.Command("ip", "-n", node, "route", "show", "table", "all").CombinedOutput()
	if strings.Contains(string(out), "10.244.") {
		t.Errorf("routes into the cluster pool left on the node:\n%s", out)
	}
	for _, p := range []string{filepath.Join(bpf, "filament"), filepath.Join(dirs["cni-bin"], "filament"),
		filepath.Join(dirs["cni-conf"], "10-filament.conflist")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left after uninstall", p)
		}
	}
	if ents, _ := os.ReadDir(dirs["state"]); len(ents) != 0 {
		t.Errorf("state dir holds %d entries after uninstall", len(ents))
	}
}

// nodeDir makes a directory under /var/tmp (containerd's root must not be
// on tmpfs: overlayfs refuses it), removed at cleanup unless the test
// failed and FILAMENT_KEEP_NODE is set.
func nodeDir(t *testing.T, prefix string) string {
	t.Helper()
	cdir, err := os.MkdirTemp("/var/tmp", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("FILAMENT_KEEP_NODE") != "" {
			t.Logf("kept %s", cdir)
			return
		}
		os.RemoveAll(cdir)
	})
	return cdir
}

// hostDirs makes a directory of the test with a subdirectory per name
// (for hostPath volumes) and returns it and the subdirectories by name.
func hostDirs(t *testing.T, names ...string) (string, map[string]string) {
	t.Helper()
	host := t.TempDir()
	dirs := map[string]string{}
	for _, v := range names {
		dirs[v] = filepath.Join(host, v)
		if err := os.MkdirAll(dirs[v], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return host, dirs
}

// sharedBPFFS mounts a bpffs of the test's own at <host>/bpf (unmounted at
// cleanup) as a shared mount: a HostToContainer source must be shared or
// slave, as systemd makes /sys/fs/bpf, and / is private here.
func sharedBPFFS(t *testing.T, host string) string {
	t.Helper()
	bpf := filepath.Join(host, "bpf")
	if err := os.Mkdir(bpf, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", bpf, "bpf", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(bpf, unix.MNT_DETACH) })
	if err := unix.Mount("", bpf, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	return bpf
}

// hostHasCap: capability cap is in this process's bounding set.
func hostHasCap(t *testing.T, cap int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n&(1<<cap) != 0
		}
	}
	t.Fatal("no CapBnd in /proc/self/status")
	return false
}

func randHex(t *testing.T) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func argValue(args []string, flag string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}
