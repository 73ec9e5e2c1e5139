package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/internal/kubetest"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// writeKubeconfig writes a kubeconfig for the lab's API server at
// https://<ip>:6443 with the static admin token.
func writeKubeconfig(t testing.TB, ip string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: lab, cluster: {server: "https://%s:6443", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %s}}]
contexts: [{name: lab, context: {cluster: lab, user: admin}}]
current-context: lab
`, ip, kubetest.Token)
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startKubeAPIServer runs a real kube-apiserver in the lab's kvstore
// namespace, storing in the cluster's etcd (with the bundle's root
// credentials), and returns a client config that dials inside that
// namespace.
func startKubeAPIServer(t testing.TB, l *lab.Lab) *rest.Config {
	t.Helper()
	return startKubeAPIServerFor(t, l, l.Clusters[0].Name)
}

// startKubeAPIServerFor is startKubeAPIServer for one cluster of a lab.
func startKubeAPIServerFor(t testing.TB, l *lab.Lab, cluster string) *rest.Config {
	t.Helper()
	c, err := l.Cluster(cluster)
	if err != nil {
		t.Fatal(err)
	}
	rc := kubetest.Start(t, kubetest.Options{NetNS: l.KvstoreNS(cluster),
		IP: strings.TrimSuffix(strings.TrimPrefix(c.Kvstore, "https://"), ":2379"), Port: 6443,
		EtcdServers: []string{c.Kvstore}, EtcdCA: filepath.Join(c.Bundle, "ca.pem"),
		EtcdCert: filepath.Join(c.Bundle, "root.pem"), EtcdKey: filepath.Join(c.Bundle, "root-key.pem"),
		ExtraArgs: []string{"--disable-admission-plugins", "ServiceAccount"}}).Config
	// The CRDs are not installed yet: their informers wait for them.
	waitKubeSynced(t, l, cluster, "ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies")
	return rc
}

// waitSeenAlive waits until every other node of node's cluster sees it
// reachable (after a restart: until then their routes and ipcache entries
// for its pods are withdrawn, failure detection having taken the restart
// for a failure).
func waitSeenAlive(t *testing.T, l *lab.Lab, node string) {
	t.Helper()
	self, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range l.Nodes {
		if n.Name == node || n.Cluster != self.Cluster {
			continue
		}
		eventually(t, n.Name+" sees "+node+" reachable", func() bool { return nodeReachable(t, &n, node) })
	}
}

// waitKubeSynced waits until every agent of cluster has the first list of
// each resource it follows but those in unless (its status's waiting
// list). The agents start before the API server answers, and an informer
// whose first lists failed retries with client-go's backoff (30 s at
// most, with a jitter of up to as much again): until then a Pod object's
// labels, and policy objects, have not reached the agent.
func waitKubeSynced(t testing.TB, l *lab.Lab, cluster string, unless ...string) {
	t.Helper()
	for _, n := range l.Nodes {
		if n.Cluster != cluster {
			continue
		}
		var last string
		synced := func() bool {
			out, err := labtest.NodeRun(t, l, n.Name, "filament", "status", "-o", "json")
			var st types.Status
			if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Kubernetes == nil {
				last = fmt.Sprintf("%v %s", err, out)
				return false
			}
			last = strings.Join(st.Kubernetes.Waiting, ",")
			for _, r := range st.Kubernetes.Waiting {
				if !slices.Contains(unless, r) {
					return false
				}
			}
			return true
		}
		for deadline := time.Now().Add(100 * time.Second); !synced(); time.Sleep(500 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s has not the first list of every Kubernetes resource after 100 s: waiting for %s", n.Name, last)
			}
		}
	}
}

// applyYAML creates each document of path (or, with dryRun, has the
// server validate it without storing it: server-side dry run).
func applyYAML(t *testing.T, dyn dynamic.Interface, path string, dryRun bool) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range strings.Split(string(data), "\n---") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(d), &obj); err != nil || obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		opts := metav1.CreateOptions{}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		if _, err := resourceOf(dyn, u).Create(context.Background(), u, opts); err != nil {
			t.Fatalf("%s %s/%s (dry run %v): %v", u.GetKind(), u.GetNamespace(), u.GetName(), dryRun, err)
		}
	}
}

// resourceOf returns the dynamic client's interface for u's resource (in
// u's namespace, if it has one).
func resourceOf(dyn dynamic.Interface, u *unstructured.Unstructured) dynamic.ResourceInterface {
	gvk := u.GroupVersionKind()
	resource := strings.ToLower(gvk.Kind) + "s"
	if gvk.Kind == "NetworkPolicy" {
		resource = "networkpolicies"
	}
	if gvk.Kind == "CiliumNetworkPolicy" {
		resource = "ciliumnetworkpolicies"
	}
	if gvk.Kind == "CiliumClusterwideNetworkPolicy" {
		resource = "ciliumclusterwidenetworkpolicies"
	}
	gvr := schema.GroupVersionResource{Group: gvk.Group, Version: gvk.Version, Resource: resource}
	if ns := u.GetNamespace(); ns != "" {
		return dyn.Resource(gvr).Namespace(ns)
	}
	return dyn.Resource(gvr)
}

// kubeLab is a two-node lab (native routing) in Kubernetes mode: its
// agents follow a real kube-apiserver (started in the lab) in which the
// CRDs of deploy/kube are created; it returns the lab and clients.
func kubeLab(t *testing.T) (*lab.Lab, dynamic.Interface, kubernetes.Interface) {
	t.Helper()
	kubetest.Binary(t)
	kubeconfig := writeKubeconfig(t, "172.30.0.254")
	l := labtest.UpRouting(t, 2, "native", "--kubeconfig", kubeconfig)
	rc := startKubeAPIServer(t, l)
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := filepath.Abs("..")
	applyYAML(t, dyn, filepath.Join(root, "deploy", "kube", "crds.yaml"), false)
	waitKubeSynced(t, l, l.Clusters[0].Name)
	return l, dyn, cs
}

// kubePod creates Pod object default/name with label app=app bound to node
// and then the lab pod (CNI ADD, which takes the labels from the object).
func kubePod(t *testing.T, l *lab.Lab, cs kubernetes.Interface, node, name, app string) *lab.Pod {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "pause"}}}}
	if _, err := cs.CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return labtest.Pod(t, l, node, name)
}

// dbFromWebCCNP is a CiliumClusterwideNetworkPolicy: db admits app=web on
// 5432.
const dbFromWebCCNP = `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: db-from-web}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`

// Kubernetes mode on a real kube-apiserver (built from the module proxy):
// the CRD manifests in deploy/ are accepted; Pod objects bound to lab nodes
// give CNI ADD the pods' labels, or the endpoint when they come after it; CiliumNetworkPolicy and NetworkPolicy
// objects, as users write them, are enforced by the agents on real traffic
// between lab pods, and deleting them lifts the enforcement; a label change
// on a running pod changes its identity and what policy allows it.
func TestKubernetesPoliciesEnforced(t *testing.T) {
	l, dyn, cs := kubeLab(t)
	root, _ := filepath.Abs("..")
	// The example policies of the repository apply unchanged (dry run);
	// the CRDs are served (the agents' informers have listed them).
	applyYAML(t, dyn, filepath.Join(root, "docs", "examples", "allow-web-to-db.yaml"), true)

	// Pod objects bound to lab nodes: CNI ADD (with K8S_POD_NAMESPACE and
	// K8S_POD_NAME) takes their labels from the API server, not from the
	// CNI request, which gives none here.
	db := kubePod(t, l, cs, "n1", "db", "db")
	web := kubePod(t, l, cs, "n2", "web", "web")
	other := kubePod(t, l, cs, "n2", "other", "other")
	for _, ep := range labtest.Endpoints(t, l, "n2") {
		if ep.PodName == "web" && !strings.Contains(ep.Labels.String(), "k8s:app=web") {
			t.Fatalf("web's endpoint labels %s do not come from its Pod object", ep.Labels)
		}
		if ep.PodName == "web" && !strings.Contains(ep.Labels.String(), "io.cilium.k8s.policy.serviceaccount=default") {
			t.Fatalf("web's endpoint labels %s lack the service account", ep.Labels)
		}
	}
	// A pod whose CNI ADD came before its Pod object reached the agent
	// (the ADD waits 5 s, then takes the CNI labels) takes the object's
	// labels when it arrives, not only at its next label change.
	labtest.Pod(t, l, "n1", "late")
	late := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "late", Namespace: "default", Labels: map[string]string{"app": "late"}},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "pause"}}}}
	if _, err := cs.CoreV1().Pods("default").Create(context.Background(), late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the late Pod object's labels reach its endpoint", func() bool {
		for _, ep := range labtest.Endpoints(t, l, "n1") {
			if ep.PodName == "late" {
				return strings.Contains(ep.Labels.String(), "k8s:app=late")
			}
		}
		return false
	})
	serve(t, lab.NetNSPath(db.NetNS), 5432)
	if !reach(t, lab.NetNSPath(other.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("no policy yet, but other cannot reach db")
	}
	// A Kubernetes NetworkPolicy: db admits only app=web on 5432.
	np := dbFromWeb("db")
	if _, err := cs.NetworkingV1().NetworkPolicies("default").Create(context.Background(), np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the NetworkPolicy shuts other out", func() bool { return !reach(t, lab.NetNSPath(other.NetNS), "tcp", db.IP, 5432) })
	if !reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("the NetworkPolicy shut web out too")
	}
	// A label change on the running pod: other becomes app=web, gets a new
	// identity, and the policy lets it in.
	po, err := cs.CoreV1().Pods("default").Get(context.Background(), "other", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	po.Labels["app"] = "web"
	if _, err := cs.CoreV1().Pods("default").Update(context.Background(), po, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "relabelled other reaches db", func() bool { return reach(t, lab.NetNSPath(other.NetNS), "tcp", db.IP, 5432) })
	po, _ = cs.CoreV1().Pods("default").Get(context.Background(), "other", metav1.GetOptions{})
	po.Labels["app"] = "other"
	if _, err := cs.CoreV1().Pods("default").Update(context.Background(), po, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "other, back to app=other, is shut out again", func() bool { return !reach(t, lab.NetNSPath(other.NetNS), "tcp", db.IP, 5432) })
	// Deleted: other is let in again.
	if err := cs.NetworkingV1().NetworkPolicies("default").Delete(context.Background(), "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleting the NetworkPolicy lets other in", func() bool { return reach(t, lab.NetNSPath(other.NetNS), "tcp", db.IP, 5432) })
	// A CiliumNetworkPolicy object (CRD): db admits only app=other now.
	applyYAML(t, dyn, writeTemp(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-other, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`), false)
	eventually(t, "the CiliumNetworkPolicy shuts web out", func() bool { return !reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) })
	if !reach(t, lab.NetNSPath(other.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("the CiliumNetworkPolicy shut other out too")
	}
	// Both nodes hold it (every agent follows the API server).
	for _, on := range []string{"n1", "n2"} {
		if out, err := labtest.NodeRun(t, l, on, "filament", "policy", "get", "default/db-from-other"); err != nil {
			t.Fatalf("%s does not hold the CiliumNetworkPolicy: %v %s", on, err, out)
		}
	}
	// A CiliumClusterwideNetworkPolicy adds web (the allows of all policies
	// selecting db add up).
	applyYAML(t, dyn, writeTemp(t, dbFromWebCCNP), false)
	eventually(t, "the CiliumClusterwideNetworkPolicy lets web in again", func() bool { return reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) })
	if !reach(t, lab.NetNSPath(other.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("other lost access when the clusterwide policy came")
	}
	// A Service with an EndpointSlice (written by hand: no controller
	// manager runs here) is load-balanced by the socket LB.
	kubeService(t, cs, "db", "10.96.0.50", db.IP, "n1")
	eventually(t, "other reaches db through the Service's ClusterIP", func() bool {
		return reach(t, lab.NetNSPath(other.NetNS), "tcp", "10.96.0.50", 5432)
	})
	found := false
	for _, st := range labtest.Services(t, l, "n2") {
		if st.Name == "db" {
			found = len(st.Frontends) == 1 && len(st.Frontends[0].Backends) == 1 && st.Frontends[0].Backends[0].Node == "n1" &&
				st.Frontends[0].Backends[0].Addr.Addr().String() == db.IP
		}
	}
	if !found {
		t.Fatalf("service list on n2 lacks db with its backend: %+v", labtest.Services(t, l, "n2"))
	}

	// A NetworkPolicy named like the CiliumNetworkPolicy (default/
	// db-from-other) is enforced beside it, under its own key, and its
	// deletion leaves the CNP: before, it was refused (and earlier still
	// it replaced the CNP, and its deletion deleted the CNP's policy). It
	// admits web, so with the clusterwide policy deleted web gets in only
	// through it. A second NetworkPolicy made after the deletion is the
	// barrier: the informer hands over one kind's events in order.
	sameName := dbFromWeb("db-from-other")
	if _, err := cs.NetworkingV1().NetworkPolicies("default").Create(context.Background(), sameName, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n1 holds the NetworkPolicy named like the CNP", func() bool {
		out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "default/networkpolicy/db-from-other", "-o", "json")
		return err == nil && strings.Contains(out, "NetworkPolicy")
	})
	ccnp := dyn.Resource(schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"})
	if err := ccnp.Delete(context.Background(), "db-from-web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n1 drops the clusterwide policy", func() bool {
		out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "db-from-web")
		return err != nil && strings.Contains(out, "not found")
	})
	if !reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("the NetworkPolicy named like the CiliumNetworkPolicy is not enforced: web is shut out")
	}
	if !reach(t, lab.NetNSPath(other.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("a NetworkPolicy named like the CiliumNetworkPolicy replaced it: other is shut out")
	}
	applyYAML(t, dyn, writeTemp(t, dbFromWebCCNP), false)
	eventually(t, "n1 holds the clusterwide policy again", func() bool {
		_, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "db-from-web")
		return err == nil
	})
	if err := cs.NetworkingV1().NetworkPolicies("default").Delete(context.Background(), "db-from-other", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	barrier := sameName.DeepCopy()
	barrier.Name, barrier.ResourceVersion = "barrier", ""
	barrier.Spec.PodSelector.MatchLabels = map[string]string{"app": "nothing"}
	if _, err := cs.NetworkingV1().NetworkPolicies("default").Create(context.Background(), barrier, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n1 holds the barrier NetworkPolicy", func() bool {
		_, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "default/networkpolicy/barrier")
		return err == nil
	})
	if out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "default/networkpolicy/db-from-other"); err == nil {
		t.Fatalf("the deleted NetworkPolicy named like the CNP is still held: %s", out)
	}
	if out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "default/db-from-other", "-o", "json"); err != nil || !strings.Contains(out, "CiliumNetworkPolicy") {
		t.Fatalf("deleting the NetworkPolicy named like the CNP took the CNP's policy: %v %s", err, out)
	}
	if !reach(t, lab.NetNSPath(other.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("deleting the NetworkPolicy named like the CiliumNetworkPolicy shut other out")
	}

	// A policy object deleted while n1's agent is down is not enforced
	// after its restart (before, the stored policy stayed for good): with
	// the CNP gone only the clusterwide policy (app=web) admits to db.
	if err := l.StopAgent("n1"); err != nil {
		t.Fatal(err)
	}
	if err := dyn.Resource(schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}).
		Namespace("default").Delete(context.Background(), "db-from-other", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	waitKubeSynced(t, l, l.Clusters[0].Name)
	// n2 took the restart for a failure (its routes to n1's pods are
	// withdrawn until it sees n1 again): until then every connection to
	// db fails at once, which the check that other is shut out took for
	// the policy (a CI run then found web shut out too).
	waitSeenAlive(t, l, "n1")
	eventually(t, "after n1's restart the clusterwide policy admits web", func() bool {
		return reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432)
	})
	eventually(t, "the CNP deleted while n1 was down no longer admits other", func() bool {
		return !reach(t, lab.NetNSPath(other.NetNS), "tcp", db.IP, 5432)
	})
	if !reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("after n1's restart the clusterwide policy no longer admits web")
	}

	// A Service deleted while every agent of the cluster is down is
	// removed once they are back (before, no agent had its delete event
	// and the stored service was load-balanced for good, here and in the
	// clusters that import it).
	// (Once in seven runs this did not answer at the first try, right
	// after n1's restart, before waitSeenAlive: n2 had n1's backends
	// down; eventually all the same.)
	eventually(t, "web reaches db through the Service's ClusterIP", func() bool {
		return reach(t, lab.NetNSPath(web.NetNS), "tcp", "10.96.0.50", 5432)
	})
	for _, n := range []string{"n1", "n2"} {
		if err := l.StopAgent(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := cs.CoreV1().Services("default").Delete(context.Background(), "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n1", "n2"} {
		if err := l.StartAgent(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	waitKubeSynced(t, l, l.Clusters[0].Name)
	waitSeenAlive(t, l, "n1")
	waitSeenAlive(t, l, "n2")
	eventually(t, "the Service deleted while every agent was down leaves the service list", func() bool {
		for _, st := range labtest.Services(t, l, "n2") {
			if st.Name == "db" {
				return false
			}
		}
		return true
	})
	if reach(t, lab.NetNSPath(web.NetNS), "tcp", "10.96.0.50", 5432) {
		t.Fatal("the deleted Service's ClusterIP still reaches db")
	}
	if !reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("web no longer reaches db itself")
	}

	// A Service deleted and another made at once on its ClusterIP (the
	// API server hands freed addresses out again) is load-balanced at
	// once. The race this guards against (an agent's service manager
	// still giving the address to the deleted Service and refusing the
	// new one until the informers' 10-minute resync) is caught by
	// TestManagerFrontendFreeRightAfterDeleteFrom; here the API server's
	// round trips usually let the manager's watch catch up, and binaries
	// from before the fix passed this step in 4 of 4 runs.
	kubeService(t, cs, "db-a", "10.96.0.51", db.IP, "n1")
	eventually(t, "web reaches db through db-a's ClusterIP", func() bool {
		return reach(t, lab.NetNSPath(web.NetNS), "tcp", "10.96.0.51", 5432)
	})
	if err := cs.CoreV1().Services("default").Delete(context.Background(), "db-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubeService(t, cs, "db-b", "10.96.0.51", db.IP, "n1")
	eventually(t, "n2 load-balances db-b, made on deleted db-a's ClusterIP", func() bool {
		for _, st := range labtest.Services(t, l, "n2") {
			if st.Name == "db-b" {
				return true
			}
		}
		return false
	})
	if !reach(t, lab.NetNSPath(web.NetNS), "tcp", "10.96.0.51", 5432) {
		t.Fatal("db-b's ClusterIP does not answer")
	}
}

// kubeService makes Service default/name on ip:5432 ("pg") with an
// EndpointSlice (written by hand: no controller manager runs here) of one
// ready backend on node. The slice comes first, so the Service's own event
// is the last that stores it.
func kubeService(t *testing.T, cs kubernetes.Interface, name, ip, backend, node string) {
	t.Helper()
	ready, port, pg := true, int32(5432), "pg"
	slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name + "-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{backend}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node}},
		Ports:       []discoveryv1.EndpointPort{{Name: &pg, Port: &port}}}
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Create(context.Background(), slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: corev1.ServiceSpec{
		ClusterIP: ip, Ports: []corev1.ServicePort{{Name: "pg", Port: 5432, Protocol: corev1.ProtocolTCP}}}}
	if _, err := cs.CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// dbFromWeb is NetworkPolicy default/name: app=db admits only app=web.
func dbFromWeb(name string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
		Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}}}},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
	}}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "doc.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Two lab clusters, each with its own kube-apiserver: a Service annotated
// service.cilium.io/global in both, with an EndpointSlice per cluster,
// merges into one set of backends, and a client reaches both clusters'.
func TestKubernetesGlobalServiceTwoClusters(t *testing.T) {
	kubetest.Binary(t)
	name := fmt.Sprintf("t%x", time.Now().UnixNano()&0xffffff)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Each cluster's agent follows its own API server (in its kvstore namespace).
	kc := map[string]string{"c1": writeKubeconfig(t, "172.30.1.254"), "c2": writeKubeconfig(t, "172.30.2.254")}
	l, err := lab.Up(ctx, lab.Options{Name: name, Clusters: 2, Nodes: 1, BinDir: labtest.BinDir(t), Routing: "tunnel",
		NodeAgentArgs: map[string][]string{"c1/n1": {"--kubeconfig", kc["c1"]}, "c2/n1": {"--kubeconfig", kc["c2"]}}})
	t.Cleanup(func() {
		if err := lab.Down(name); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	connect(t, l, "c1/n1", "c2")
	backends := map[string]*lab.Pod{}
	for _, c := range []string{"c1", "c2"} {
		rc := startKubeAPIServerFor(t, l, c)
		cs, _ := kubernetes.NewForConfig(rc)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "api-" + c, Namespace: "default", Labels: map[string]string{"app": "api"}},
			Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "pause"}}}}
		if _, err := cs.CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p := labtest.Pod(t, l, c+"/n1", "api-"+c)
		labtest.ServeName(t, lab.NetNSPath(p.NetNS), 8080, c)
		backends[c] = p
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "default", Annotations: map[string]string{"service.cilium.io/global": "true"}},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.60", Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
		if _, err := cs.CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		ready, port, pname, node := true, int32(8080), "http", "n1"
		slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "api-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "api"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{p.IP}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node}},
			Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port}}}
		if _, err := cs.DiscoveryV1().EndpointSlices("default").Create(context.Background(), slice, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	client := labtest.Pod(t, l, "c1/n1", "client")
	eventually(t, "c1 merges c2's backend of the global Service", func() bool {
		for _, st := range labtest.Services(t, l, "c1/n1") {
			if st.Name == "api" && len(st.Clusters) == 2 {
				return true
			}
		}
		return false
	})
	got := labtest.Tally(lab.NetNSPath(client.NetNS), "10.96.0.60:80", 40)
	t.Logf("global Service from c1: %v", got)
	if got["c1"] == 0 || got["c2"] == 0 || got[""] != 0 {
		t.Fatalf("answers %v, want both clusters' backends", got)
	}
}

// A node whose Node object carries spec.podCIDRs takes its pod CIDR from
// there (the cluster pool allocator is the fallback), and the other nodes
// route to it.
func TestKubernetesNodePodCIDR(t *testing.T) {
	kubetest.Binary(t)
	kubeconfig := writeKubeconfig(t, "172.30.0.254")
	l := labtest.UpRouting(t, 2, "native", "--kubeconfig", kubeconfig)
	rc := startKubeAPIServer(t, l)
	cs, _ := kubernetes.NewForConfig(rc)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.200.0/24", PodCIDRs: []string{"10.244.200.0/24"}}}
	if _, err := cs.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := l.StopAgent("n2"); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(context.Background(), "n2"); err != nil {
		t.Fatal(err)
	}
	out, err := labtest.NodeRun(t, l, "n2", "filament", "status", "-o", "json")
	if err != nil || !strings.Contains(out, `"podCIDR": "10.244.200.0/24"`) {
		t.Fatalf("n2's status after restart: %v %s", err, out)
	}
	p2 := labtest.Pod(t, l, "n2", "p2")
	if !strings.HasPrefix(p2.IP, "10.244.200.") {
		t.Fatalf("pod on n2 got %s, not from the Node's pod CIDR", p2.IP)
	}
	labtest.Pod(t, l, "n1", "p1")
	eventually(t, "n1's pod reaches n2's pod in the Node's pod CIDR", func() bool { return labtest.Ping(t, l, "p1", p2.IP) == nil })
}
