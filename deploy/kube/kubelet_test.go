package kube_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"testing"
	"time"

	ocispec "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	"github.com/filament-net/filament/deploy/image"
	"github.com/filament-net/filament/internal/kubenode"
	"github.com/filament-net/filament/internal/kubetest"
	"github.com/filament-net/filament/internal/testutil"
)

// The chart on a real node (issue 20 part 3): a real kube-apiserver, a
// real kubelet and containerd with runc, all on this machine. The node is
// a network namespace (198.18.0.1) where the kubelet and containerd run;
// the control plane another (198.18.0.2) with the kube-apiserver and its
// etcd. The rendered manifests (deploy/kube/filament.yaml) are created in
// the API server as they are but for what docs/install.md tells a user
// without kube-proxy to set and what keeps the test off the machine's own
// directories (forNode says each). Nothing runs controllers here, so the
// test stands in for the ones it needs: it creates the DaemonSet's and the
// Deployment's pod bound to the node (the DaemonSet controller and the
// scheduler), the namespaces' default ServiceAccount and kube-root-ca.crt
// (the ServiceAccount and root-CA publisher controllers), and the web
// Service's EndpointSlice (the EndpointSlice controller). The kubelet does
// the rest as on any node: it pulls nothing (the images are imported), runs
// the clustermesh-apiserver and the agent with their probes, and then the
// pods of the test through the CNI plugin the agent installed. Checked:
// the agent pod gets Ready; two pods on the node talk; a Service's cluster
// IP reaches both backends; a NetworkPolicy admits one client and drops
// another; pods keep their network and policy while the agent's pod is
// replaced, and the new agent networks a new pod; and the chart's
// uninstall DaemonSet (uninstall=true), started while the agent still
// runs, waits for it to stop and then leaves no device, pin, route, CNI
// file or state.
func TestChartOnKubelet(t *testing.T) {
	testutil.RequireRoot(t)
	kubeletBin := kubenode.KubeletBinary(t)
	kubetest.Binary(t)
	docs := readDocs(t, manifestPath())
	// Ends before go test's own timeout (which would skip every cleanup).
	deadline := time.Now().Add(12 * time.Minute)
	if d, ok := t.Deadline(); ok && d.Add(-2*time.Minute).Before(deadline) {
		deadline = d.Add(-2 * time.Minute)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	suffix := randHex(t)
	nodeName, nodeIP, cpIP := "node-"+suffix, "198.18.0.1", "198.18.0.2"

	// The node and the control plane: two namespaces on one link.
	node, cp := "fknode-"+suffix, "fkcp-"+suffix
	for _, n := range []string{node, cp} {
		run(t, "ip", "netns", "add", n)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
		run(t, "ip", "-n", n, "link", "set", "lo", "up")
	}
	run(t, "ip", "link", "add", "fk"+suffix, "netns", node, "type", "veth", "peer", "name", "eth0", "netns", cp)
	run(t, "ip", "-n", node, "link", "set", "fk"+suffix, "name", "eth0")
	for n, ip := range map[string]string{node: nodeIP, cp: cpIP} {
		run(t, "ip", "-n", n, "addr", "add", ip+"/24", "dev", "eth0")
		run(t, "ip", "-n", n, "link", "set", "eth0", "up")
	}
	// A kubelet wants a default route to find its node's address.
	run(t, "ip", "-n", node, "route", "add", "default", "via", cpIP)
	nodeNS := "/var/run/netns/" + node

	bins := agentBinaries(t)
	// The control plane: an etcd (filament-clustermesh-apiserver without a
	// bundle is a plain embedded etcd) and the kube-apiserver on it.
	etcdDir := t.TempDir()
	etcd := exec.Command("ip", "netns", "exec", cp, filepath.Join(bins, "filament-clustermesh-apiserver"),
		"--listen-client-url=http://"+cpIP+":2379", "--listen-peer-url=http://127.0.0.1:2380",
		"--data-dir="+filepath.Join(etcdDir, "data"), "--unsafe-no-fsync")
	etcdLog, err := os.Create(filepath.Join(etcdDir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	etcd.Stdout, etcd.Stderr = etcdLog, etcdLog
	if err := etcd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { etcd.Process.Kill(); etcd.Wait(); etcdLog.Close() })
	srv := kubetest.Start(t, kubetest.Options{NetNS: cp, IP: cpIP, Port: 6443, EtcdServers: []string{"http://" + cpIP + ":2379"}})
	cs, err := kubernetes.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
	ca, err := os.ReadFile(filepath.Join(srv.CertDir, "apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	standInNamespaces(ctx, t, cs, string(ca), "default", namespace)

	// The cluster's clustermesh bundle, as deploy/README.md has users make
	// it: the Service's cluster IP and the node the apiserver runs on.
	bundle := t.TempDir()
	if out, err := exec.Command(filepath.Join(bins, "filament"), "--bundle", bundle, "clustermesh", "enable",
		"--cluster-name", "default", "--cluster-id", "1", "--apiserver-ip", "10.96.0.250", "--apiserver-ip", nodeIP).CombinedOutput(); err != nil {
		t.Fatalf("clustermesh enable: %v\n%s", err, out)
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "filament-clustermesh-bundle", Namespace: namespace}, Data: map[string][]byte{}}
	ents, err := os.ReadDir(bundle)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			b, err := os.ReadFile(filepath.Join(bundle, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			sec.Data[e.Name()] = b
		}
	}
	if _, err := cs.CoreV1().Secrets(namespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The node's directories: bpffs, the CNI directories, the agent's
	// state and socket, all the test's own.
	host, dirs := hostDirs(t, "state", "run", "cni-bin", "cni-conf")
	bpf := sharedBPFFS(t, host)
	dirs["bpf-maps"] = bpf
	// The kubelet's pods live under a cgroup of the test's own in every
	// hierarchy; the agent's socket load balancer attaches to its cgroup2.
	cgRoot := "/filament-node-" + suffix
	hier, err := kubenode.CgroupHierarchies()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := kubenode.RemoveCgroups(cgRoot); err != nil {
			t.Error(err)
		}
	})
	for _, h := range hier {
		if err := os.Mkdir(filepath.Join(h, cgRoot), 0o755); err != nil {
			if os.Getenv("FILAMENT_REQUIRE_PRIVILEGED") == "1" {
				t.Fatal(err)
			}
			t.Skipf("skipped: cannot create cgroup %s: %v", filepath.Join(h, cgRoot), err)
		}
		if _, err := os.Stat(filepath.Join(h, "cgroup.controllers")); err == nil {
			dirs["cgroup"] = filepath.Join(h, cgRoot) // the cgroup2 hierarchy
		}
	}
	if dirs["cgroup"] == "" {
		t.Fatalf("no cgroup2 hierarchy among %v: the socket load balancer needs one", hier)
	}

	if err := kubenode.LoopbackPlugin(dirs["cni-bin"]); err != nil {
		t.Fatal(err)
	}
	// containerd (state on /var/tmp: overlayfs refuses tmpfs) and images.
	cdir := nodeDir(t, "filament-kubelet-")
	// containerd keeps pods' network namespaces where a node's does,
	// /var/run/netns/cni-*, the path the CNI plugin hands the agent, which
	// sees the node's /var/run/netns (a shared mount here, as on systemd
	// hosts) at the same path. Those of its sandboxes it leaves behind
	// (only after a failure) go at cleanup.
	if err := os.Mkdir(filepath.Join(cdir, "containerd"), 0o700); err != nil {
		t.Fatal(err)
	}
	ctd, err := kubenode.StartContainerd(filepath.Join(cdir, "containerd"), dirs["cni-bin"], dirs["cni-conf"], nodeNS)
	if err != nil {
		if os.Getenv("FILAMENT_REQUIRE_PRIVILEGED") != "1" && strings.Contains(err.Error(), kubenode.ErrMissing.Error()) {
			t.Skipf("skipped: %v", err)
		}
		t.Fatal(err)
	}
	tars, ref := buildImages(t, containerImage(t, docs))
	for _, tar := range tars {
		if _, err := ctd.Ctr("images", "import", tar); err != nil {
			ctd.Stop()
			t.Fatal(err)
		}
	}
	cri, err := kubenode.DialCRI(ctd.Socket)
	if err != nil {
		ctd.Stop()
		t.Fatal(err)
	}
	kl, err := kubenode.StartKubelet(kubenode.KubeletOptions{Binary: kubeletBin, Dir: filepath.Join(cdir, "kubelet"), NetNS: nodeNS,
		NodeName: nodeName, NodeIP: nodeIP, APIServer: srv.Config.Host, Token: kubetest.Token,
		RuntimeSocket: ctd.Socket, CgroupRoot: cgRoot})
	if err != nil {
		cri.Close()
		ctd.Stop()
		t.Fatal(err)
	}
	// Stopped in this order: the kubelet, the pods (containerd), the
	// kubelet's log links, then (registered earlier) the cgroups.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubelet log (tail):\n%s", kl.LogTail(6000))
		}
		if err := kl.Stop(); err != nil {
			t.Error(err)
		}
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		left, _ := cri.SandboxNetns(sctx)
		scancel()
		cri.Close()
		ctd.Stop()
		for _, p := range left {
			if strings.HasPrefix(p, "/var/run/netns/cni-") || strings.HasPrefix(p, "/run/netns/cni-") {
				unix.Unmount(p, unix.MNT_DETACH)
				os.Remove(p)
			}
		}
		removeLogLinks(filepath.Join(cdir, "kubelet"))
	})
	eventually(t, "node "+nodeName+" registered", 90*time.Second, func() error {
		select {
		case <-kl.Exited():
			t.Fatalf("kubelet exited:\n%s", kl.LogTail(6000))
		default:
		}
		_, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		return err
	})

	// The release, with the changes forNode lists.
	var ds *appsv1.DaemonSet
	var dep *appsv1.Deployment
	for _, d := range docs {
		switch d.GetKind() {
		case "DaemonSet":
			ds = &appsv1.DaemonSet{}
			convert(t, d, ds)
			forNode(t, &ds.Spec.Template.Spec, dirs, nodeIP, cpIP)
			setImage(&ds.Spec.Template.Spec, ref)
			d = toUnstructured(t, ds)
		case "Deployment":
			dep = &appsv1.Deployment{}
			convert(t, d, dep)
			setImage(&dep.Spec.Template.Spec, ref)
			d = toUnstructured(t, dep)
		case "ConfigMap":
			if d.GetName() == "filament-cni-config" {
				for k, v := range mustStringMap(t, d, "data") {
					unstructured.SetNestedField(d.Object, strings.ReplaceAll(v, "/var/run/filament/", dirs["run"]+"/"), "data", k)
				}
			}
		}
		if err := c.create(ctx, d, false); err != nil {
			t.Fatalf("create %s: %v", describe(d), err)
		}
	}
	if ds == nil || dep == nil {
		t.Fatal("no DaemonSet or Deployment in the manifests")
	}
	// The DaemonSet controller and the scheduler: each pod bound to the node.
	cmPod := bindPod(ctx, t, cs, namespace, "filament-clustermesh-apiserver-"+suffix, dep.Spec.Template, nodeName)
	agentPod := bindPod(ctx, t, cs, namespace, "filament-"+suffix, ds.Spec.Template, nodeName)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pods:\n%s", podSummary(context.Background(), cs))
			t.Logf("container logs:\n%s", containerLogs(filepath.Join(cdir, "kubelet", "pod-logs")))
		}
	})
	waitReady(ctx, t, cs, namespace, cmPod, 3*time.Minute)
	waitReady(ctx, t, cs, namespace, agentPod, 3*time.Minute)
	for _, f := range []string{filepath.Join(dirs["cni-bin"], "filament"), filepath.Join(dirs["cni-conf"], "10-filament.conflist")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("install-cni: %v", err)
		}
	}

	// Pods the kubelet starts get their network from Filament.
	web := map[string]string{"app": "web"}
	for _, p := range []struct {
		name   string
		labels map[string]string
	}{{"web-a", web}, {"web-b", web}, {"client", map[string]string{"role": "client"}},
		{"stranger", map[string]string{"role": "stranger"}}} {
		pod := netcheckPod(p.name, p.labels, nodeName)
		if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ips := map[string]string{}
	for _, n := range []string{"web-a", "web-b", "client", "stranger"} {
		ips[n] = waitReady(ctx, t, cs, "default", n, 2*time.Minute)
	}
	t.Logf("pod IPs: %v", ips)
	get := func(from, url string) (string, error) {
		id, err := cri.ContainerID(ctx, "default", from, "main")
		if err != nil {
			return "", err
		}
		out, err := cri.Exec(ctx, id, "/netcheck", "get", url)
		return strings.TrimSpace(out), err
	}
	// blocked: netcheck itself ran and failed for want of an answer (a
	// policy drop times out), not the exec or the container lookup.
	blocked := func(from, url string) error {
		out, err := get(from, url)
		if err == nil {
			return fmt.Errorf("%s reached %s: %q", from, url, out)
		}
		if !errors.Is(err, kubenode.ErrExitStatus) || !strings.Contains(strings.ToLower(out), "timeout") {
			return fmt.Errorf("%s to %s: not a dropped connection: %v", from, url, err)
		}
		return nil
	}
	for _, from := range []string{"client", "stranger"} {
		eventually(t, from+" reaches web-a's pod IP", time.Minute, func() error {
			out, err := get(from, "http://"+ips["web-a"]+":8080/")
			if err == nil && out != "web-a" {
				return fmt.Errorf("answered %q, want web-a", out)
			}
			return err
		})
	}

	// A Service: its cluster IP reaches both backends.
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: web, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	standInEndpointSlice(ctx, t, cs, svc, []string{ips["web-a"], ips["web-b"]}, 8080)
	seen := map[string]bool{}
	eventually(t, "the Service's cluster IP "+svc.Spec.ClusterIP+" reaches web-a and web-b", time.Minute, func() error {
		out, err := get("client", "http://"+svc.Spec.ClusterIP+"/")
		if err != nil {
			return err
		}
		if out != "web-a" && out != "web-b" {
			return fmt.Errorf("answered %q", out)
		}
		seen[out] = true
		if len(seen) < 2 {
			return fmt.Errorf("only %v answered so far", seen)
		}
		return nil
	})

	// A NetworkPolicy: the web pods admit the client only.
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "web-from-client"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: web},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}}}}}}
	if _, err := cs.NetworkingV1().NetworkPolicies("default").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the NetworkPolicy drops the stranger", time.Minute, func() error {
		return blocked("stranger", "http://"+ips["web-a"]+":8080/")
	})
	for _, url := range []string{"http://" + ips["web-a"] + ":8080/", "http://" + ips["web-b"] + ":8080/", "http://" + svc.Spec.ClusterIP + "/"} {
		if out, err := get("client", url); err != nil {
			t.Errorf("client to %s under the policy: %v %s", url, err, out)
		}
	}
	if err := blocked("stranger", "http://"+svc.Spec.ClusterIP+"/"); err != nil {
		t.Errorf("the Service under the policy: %v", err)
	}

	// An upgrade's restart (docs/install.md, Upgrade): the agent's pod goes
	// and a new one comes (as a DaemonSet rolls it). While no agent runs,
	// the pods keep their network and their policy (programs and maps stay
	// pinned); the new agent restores its endpoints and networks a new pod.
	if err := cs.CoreV1().Pods(namespace).Delete(ctx, agentPod, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the agent's pod gone", 2*time.Minute, func() error {
		_, err := cs.CoreV1().Pods(namespace).Get(ctx, agentPod, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	if out, err := get("client", "http://"+svc.Spec.ClusterIP+"/"); err != nil {
		t.Errorf("client to the Service with no agent running: %v %s", err, out)
	}
	if err := blocked("stranger", "http://"+ips["web-a"]+":8080/"); err != nil {
		t.Errorf("with no agent running: %v", err)
	}
	agentPod = bindPod(ctx, t, cs, namespace, "filament-"+suffix+"-2", ds.Spec.Template, nodeName)
	waitReady(ctx, t, cs, namespace, agentPod, 3*time.Minute)
	if _, err := cs.CoreV1().Pods("default").Create(ctx, netcheckPod("web-c", web, nodeName), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ips["web-c"] = waitReady(ctx, t, cs, "default", "web-c", 2*time.Minute)
	eventually(t, "client reaches web-c after the agent's restart", time.Minute, func() error {
		out, err := get("client", "http://"+ips["web-c"]+":8080/")
		if err == nil && out != "web-c" {
			return fmt.Errorf("answered %q, want web-c", out)
		}
		return err
	})
	if err := blocked("stranger", "http://"+ips["web-c"]+":8080/"); err != nil {
		t.Errorf("web-c, a new web pod under the policy: %v", err)
	}

	// Uninstall as docs/install.md says: drain the node (the pods that use
	// Filament's network go first), then `helm upgrade --set
	// uninstall=true`, which replaces the agents' DaemonSet with
	// filament-uninstall (deploy/kube/filament-uninstall.yaml). The
	// uninstall pod starts while the agent still runs (as when the two
	// controllers race) and must wait for it.
	grace := int64(0)
	for _, p := range []string{"web-a", "web-b", "web-c", "client", "stranger"} {
		cs.CoreV1().Pods("default").Delete(ctx, p, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	}
	// Gone from the API server is not gone from the node: the kubelet
	// tears the sandboxes down (CNI DEL through the agent) afterwards.
	eventually(t, "pods in default gone from the node", 2*time.Minute, func() error {
		n, err := cri.Sandboxes(ctx, "default")
		if err == nil && n > 0 {
			err = fmt.Errorf("%d sandboxes left", n)
		}
		return err
	})
	unDocs := readDocs(t, uninstallManifestPath())
	unDoc := find(unDocs, "DaemonSet", "filament-uninstall")
	if unDoc == nil {
		t.Fatal("no DaemonSet filament-uninstall in filament-uninstall.yaml")
	}
	var unDS appsv1.DaemonSet
	convert(t, unDoc, &unDS)
	forNode(t, &unDS.Spec.Template.Spec, dirs, nodeIP, cpIP)
	setImage(&unDS.Spec.Template.Spec, ref)
	if err := c.create(ctx, toUnstructured(t, &unDS), false); err != nil {
		t.Fatalf("create %s: %v", describe(unDoc), err)
	}
	unPod := bindPod(ctx, t, cs, namespace, "filament-uninstall-"+suffix, unDS.Spec.Template, nodeName)
	unLogs := filepath.Join(cdir, "kubelet", "pod-logs", namespace+"_"+unPod+"_*", "uninstall")
	eventually(t, "the uninstall container waits for the agent", 2*time.Minute, func() error {
		if l := containerLogs(unLogs); !strings.Contains(l, "waiting up to") {
			return fmt.Errorf("log so far: %q", l)
		}
		return nil
	})
	if err := cs.AppsV1().DaemonSets(namespace).Delete(ctx, ds.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().Pods(namespace).Delete(ctx, agentPod, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitReady(ctx, t, cs, namespace, unPod, 3*time.Minute)
	unLog := containerLogs(unLogs)
	t.Logf("uninstall:\n%s", unLog)
	for _, want := range []string{"removed CNI /host/cni-conf/10-filament.conflist", "removed directory /sys/fs/bpf/filament"} {
		if !strings.Contains(unLog, want) {
			t.Errorf("the uninstall container's log lacks %q", want)
		}
	}
	checkNodeClean(t, node, bpf, dirs)
}

// forNode changes the agent's pod spec as this node needs, each change
// what a user without kube-proxy sets (docs/install.md) or what keeps the
// test off the machine's own directories:
//   - --etcd-endpoints: the clustermesh-apiserver at its node's IP
//     (kvstore.etcd.endpoints), since nothing translates the Service's
//     cluster IP before the agent runs;
//   - --k8s-api-server: the API server's real address
//     (agent.kubernetes.apiServerHost), for the same reason;
//   - hostPath volumes: directories of the test (bpffs, cgroup, state,
//     socket, CNI directories) instead of the machine's; /lib/modules
//     and /var/run/netns stay the node's (the latter as /run/netns);
//   - SYS_RESOURCE: left out where the machine's root lacks it (see
//     TestAgentPodInContainerd).
func forNode(t *testing.T, spec *corev1.PodSpec, dirs map[string]string, nodeIP, apiIP string) {
	t.Helper()
	for i := range spec.Containers {
		c := &spec.Containers[i]
		if c.Name != "agent" {
			continue
		}
		for j, a := range c.Args {
			if strings.HasPrefix(a, "--etcd-endpoints=") {
				c.Args[j] = "--etcd-endpoints=https://" + nodeIP + ":2379"
			}
		}
		c.Args = append(c.Args, "--k8s-api-server="+apiIP+":6443")
		if c.SecurityContext != nil && c.SecurityContext.Capabilities != nil && !hostHasCap(t, unix.CAP_SYS_RESOURCE) {
			c.SecurityContext.Capabilities.Add = slices.DeleteFunc(c.SecurityContext.Capabilities.Add, func(c corev1.Capability) bool { return c == "SYS_RESOURCE" })
		}
	}
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
		if v.HostPath == nil {
			continue
		}
		if d, ok := dirs[v.Name]; ok {
			v.HostPath.Path = d
		} else if v.Name == "netns" {
			// The same directory, named without the /var/run link:
			// containerd checks that a HostToContainer source is on a
			// shared mount by its literal path, and / is private here
			// (systemd makes it shared).
			p, err := filepath.EvalSymlinks(v.HostPath.Path)
			if err != nil {
				t.Fatal(err)
			}
			v.HostPath.Path = p
		} else if v.Name != "lib-modules" {
			t.Fatalf("hostPath volume %s (%s) has no directory of the test", v.Name, v.HostPath.Path)
		}
	}
}

// standInNamespaces does what the ServiceAccount and root-CA publisher
// controllers do: a default ServiceAccount and the kube-root-ca.crt
// ConfigMap (the API server's CA, here its self-signed certificate) in
// each namespace.
func standInNamespaces(ctx context.Context, t *testing.T, cs kubernetes.Interface, ca string, namespaces ...string) {
	t.Helper()
	for _, ns := range namespaces {
		eventually(t, "namespace "+ns, 30*time.Second, func() error {
			_, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			return err
		})
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
			metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"},
			Data: map[string]string{"ca.crt": ca}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
}

// bindPod does what a controller and the scheduler do for one replica:
// a pod from tmpl, bound to node.
func bindPod(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string, tmpl corev1.PodTemplateSpec, node string) string {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: tmpl.Labels, Annotations: tmpl.Annotations},
		Spec: *tmpl.Spec.DeepCopy()}
	p.Spec.NodeName = node
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("pod %s: %v", name, err)
	}
	return name
}

// standInEndpointSlice does what the EndpointSlice controller does for svc:
// one slice of ready addresses.
func standInEndpointSlice(ctx context.Context, t *testing.T, cs kubernetes.Interface, svc *corev1.Service, ips []string, port int32) {
	t.Helper()
	ready := true
	es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: svc.Name + "-stand-in", Namespace: svc.Namespace,
		Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name}}, AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: &svc.Spec.Ports[0].Name, Port: &port}}}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(svc.Namespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// netcheckPod: the workload, serving its name on 8080.
func netcheckPod(name string, labels map[string]string, node string) *corev1.Pod {
	grace := int64(0)
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: &grace, Containers: []corev1.Container{{
			Name: "main", Image: kubenode.NetcheckRef, ImagePullPolicy: corev1.PullNever, Command: []string{"/netcheck", "serve", ":8080"},
			Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		}}}}
}

// waitReady waits for the pod's Ready condition and returns its IP.
func waitReady(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string, timeout time.Duration) string {
	t.Helper()
	var ip string
	eventually(t, "pod "+ns+"/"+name+" Ready", timeout, func() error {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				ip = p.Status.PodIP
				return nil
			}
		}
		return fmt.Errorf("phase %s, conditions %+v, containers %+v", p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
	})
	return ip
}

func podSummary(ctx context.Context, cs kubernetes.Interface) string {
	l, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range l.Items {
		fmt.Fprintf(&b, "%s/%s %s %s %+v\n", p.Namespace, p.Name, p.Status.Phase, p.Status.PodIP, p.Status.ContainerStatuses)
	}
	return b.String()
}

// containerLogs: every log under the directories matching pattern (the
// kubelet's pod log directory, or some pods' in it).
func containerLogs(pattern string) string {
	var b strings.Builder
	dirs, _ := filepath.Glob(pattern)
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				b.WriteString("== " + p + "\n" + kubenode.ReadLog(p) + "\n")
			}
			return nil
		})
	}
	return b.String()
}

// removeLogLinks removes the links the kubelet made in /var/log/containers
// (a fixed path) to logs under dir.
func removeLogLinks(dir string) {
	ents, _ := os.ReadDir("/var/log/containers")
	for _, e := range ents {
		p := filepath.Join("/var/log/containers", e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			os.Remove(p)
		}
	}
}

// containerImage: the image the manifests' pods run.
func containerImage(t *testing.T, docs []*unstructured.Unstructured) string {
	t.Helper()
	ds := find(docs, "DaemonSet", "filament")
	if ds == nil {
		t.Fatal("no DaemonSet filament")
	}
	img, _, _ := unstructured.NestedString(container(ds, "containers", "agent"), "image")
	if img == "" {
		t.Fatal("the agent container names no image")
	}
	return img
}

// buildImages writes the pause image, the product image (productImage,
// tagged ref unless FILAMENT_IMAGE_TAR says otherwise) and the workload's
// image, and returns their tarballs and the product image's reference.
func buildImages(t *testing.T, ref string) ([]string, string) {
	t.Helper()
	dir := t.TempDir()
	pause, work := filepath.Join(dir, "pause.tar"), filepath.Join(dir, "netcheck.tar")
	if err := kubenode.PauseImage(dir, pause); err != nil {
		t.Fatal(err)
	}
	if err := kubenode.NetcheckImage(dir, work); err != nil {
		t.Fatal(err)
	}
	product, ref := productImage(t, dir, ref, image.Binaries)
	return []string{pause, product, work}, ref
}

// productImage writes the product image (deploy/image, as `make image`
// builds it) for this machine's platform with bins, tagged ref, as an OCI
// archive in dir, and returns it and ref; FILAMENT_IMAGE_TAR (with
// FILAMENT_IMAGE_REF, its tag) takes `make image`'s tarball instead.
func productImage(t *testing.T, dir, ref string, bins []string) (string, string) {
	t.Helper()
	if tar := os.Getenv("FILAMENT_IMAGE_TAR"); tar != "" {
		ref := os.Getenv("FILAMENT_IMAGE_REF")
		if ref == "" {
			t.Fatal("FILAMENT_IMAGE_TAR needs FILAMENT_IMAGE_REF (the reference it is tagged with)")
		}
		return tar, ref
	}
	binDir := filepath.Join(dir, "bin")
	for _, b := range bins {
		if _, err := kubenode.BuildStatic(binDir, "github.com/filament-net/filament/cmd/"+b, b); err != nil {
			t.Fatal(err)
		}
	}
	plat := ocispec.Platform{OS: "linux", Architecture: goruntime.GOARCH}
	idx, err := image.Build(image.Options{Name: ref, Version: "node-test", Created: time.Unix(0, 0), Binaries: bins,
		Platforms: []ocispec.Platform{plat}, Dirs: map[string]string{"linux/" + goruntime.GOARCH: binDir}})
	if err != nil {
		t.Fatal(err)
	}
	layout, tar := filepath.Join(dir, "layout"), filepath.Join(dir, "filament.tar")
	if err := image.WriteLayout(layout, idx, ref); err != nil {
		t.Fatal(err)
	}
	if err := image.WriteArchive(tar, layout, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	return tar, ref
}

// setImage points every container of spec at ref.
func setImage(spec *corev1.PodSpec, ref string) {
	for i := range spec.InitContainers {
		spec.InitContainers[i].Image = ref
	}
	for i := range spec.Containers {
		spec.Containers[i].Image = ref
	}
}

func convert(t *testing.T, u *unstructured.Unstructured, out any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, out); err != nil {
		t.Fatal(err)
	}
}

func toUnstructured(t *testing.T, obj any) *unstructured.Unstructured {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	// The typed object carries no status worth sending; drop the empty one.
	unstructured.RemoveNestedField(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	return u
}

func mustStringMap(t *testing.T, u *unstructured.Unstructured, field string) map[string]string {
	t.Helper()
	m, _, err := unstructured.NestedStringMap(u.Object, field)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
