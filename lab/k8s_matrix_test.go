package lab_test

import (
	"context"
	"fmt"
	"github.com/filament-net/filament/internal/kubetest"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// The sig-network reachability matrix: namespaces x, y, z × pods a, b, c,
// ports 80 and 81, TCP and UDP, checked on real traffic for a set of
// NetworkPolicies against the matrix each should give.

type mPod struct {
	ns, name, ip, path string
}

func (p mPod) String() string { return p.ns + "/" + p.name }

type probe struct {
	from, to mPod
	port     int
	proto    string
}

func (pr probe) String() string {
	return fmt.Sprintf("%s -> %s %s/%d", pr.from, pr.to, pr.proto, pr.port)
}

// probeOnce reports whether from reaches to on port/proto (TCP: connect;
// UDP: an echoed datagram).
func probeOnce(pr probe) bool {
	ok := false
	ns.WithNetNSPath(pr.from.path, func(ns.NetNS) error {
		addr := net.JoinHostPort(pr.to.ip, strconv.Itoa(pr.port))
		if pr.proto == "tcp" {
			c, err := net.DialTimeout("tcp4", addr, 1200*time.Millisecond)
			if err == nil {
				c.Close()
				ok = true
			}
			return nil
		}
		c, err := net.Dial("udp4", addr)
		if err != nil {
			return nil
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(1200 * time.Millisecond))
		buf := make([]byte, 16)
		for i := 0; i < 2 && !ok; i++ { // one retry: the first datagram may race the ARP
			c.Write([]byte("ping"))
			if _, err := c.Read(buf); err == nil {
				ok = true
			}
		}
		return nil
	})
	return ok
}

// matrix probes every pair (not a pod to itself) concurrently.
func matrix(pods []mPod) map[probe]bool {
	var probes []probe
	for _, f := range pods {
		for _, to := range pods {
			if f == to {
				continue
			}
			for _, port := range []int{80, 81} {
				for _, proto := range []string{"tcp", "udp"} {
					probes = append(probes, probe{f, to, port, proto})
				}
			}
		}
	}
	out := make(map[probe]bool, len(probes))
	var mu sync.Mutex
	work := make(chan probe)
	var wg sync.WaitGroup
	for range 48 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pr := range work {
				r := probeOnce(pr)
				mu.Lock()
				out[pr] = r
				mu.Unlock()
			}
		}()
	}
	for _, pr := range probes {
		work <- pr
	}
	close(work)
	wg.Wait()
	return out
}

// diff lists the probes whose result is not what want says.
func diff(got map[probe]bool, want func(probe) bool) []string {
	var out []string
	for pr, ok := range got {
		if ok != want(pr) {
			out = append(out, fmt.Sprintf("%s: got %v, want %v", pr, ok, !ok))
		}
	}
	sort.Strings(out)
	return out
}

func TestNetworkPolicyReachabilityMatrix(t *testing.T) {
	kubetest.Binary(t)
	kubeconfig := writeKubeconfig(t, "172.30.0.254")
	l := labtest.UpRouting(t, 2, "native", "--kubeconfig", kubeconfig)
	rc := startKubeAPIServer(t, l)
	cs, _ := kubernetes.NewForConfig(rc)
	ctx := context.Background()
	var pods []mPod
	i := 0
	for _, ns := range []string{"x", "y", "z"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"ns": ns}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"a", "b", "c"} {
			node := []string{"n1", "n2"}[i%2]
			i++
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + name, Namespace: ns, Labels: map[string]string{"pod": name}},
				Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "pause"}}}}
			if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			p, err := l.AddPodInNamespace(node, ns+"-"+name, ns, nil)
			if err != nil {
				t.Fatal(err)
			}
			mp := mPod{ns: ns, name: name, ip: p.IP, path: lab.NetNSPath(p.NetNS)}
			serve(t, mp.path, 80)
			serve(t, mp.path, 81)
			pods = append(pods, mp)
		}
	}
	tcp := corev1.ProtocolTCP
	port80 := intstr.FromInt32(80)
	cases := []struct {
		name     string
		policies []networkingv1.NetworkPolicy
		allowed  func(probe) bool
	}{
		{"no policy: everything", nil, func(probe) bool { return true }},
		{"deny all ingress in x",
			[]networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Name: "deny", Namespace: "x"},
				Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}},
			func(pr probe) bool { return pr.to.ns != "x" }},
		{"x/a admits pod=b of its namespace on TCP 80 only",
			[]networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Name: "a-from-b", Namespace: "x"},
				Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port80}}}}}}},
			func(pr probe) bool {
				if pr.to.String() != "x/a" {
					return true
				}
				return pr.from.String() == "x/b" && pr.port == 80 && pr.proto == "tcp"
			}},
		{"x/a admits every pod of namespace y",
			[]networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Name: "a-from-y", Namespace: "x"},
				Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"ns": "y"}}}}}}}}},
			func(pr probe) bool { return pr.to.String() != "x/a" || pr.from.ns == "y" }},
		{"y/c may send nothing (egress deny all)",
			[]networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Name: "c-no-egress", Namespace: "y"},
				Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "c"}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}}},
			func(pr probe) bool { return pr.from.String() != "y/c" }},
	}
	for _, c := range cases {
		for _, np := range c.policies {
			if _, err := cs.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, &np, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		var bad []string
		deadline := time.Now().Add(20 * time.Second)
		for {
			bad = diff(matrix(pods), c.allowed)
			if len(bad) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Second)
		}
		if len(bad) > 0 {
			t.Fatalf("%s: %d of 288 probes differ from the expected matrix:\n%s", c.name, len(bad), strings.Join(bad[:min(len(bad), 20)], "\n"))
		}
		t.Logf("%s: the 288 probes match", c.name)
		for _, np := range c.policies {
			if err := cs.NetworkingV1().NetworkPolicies(np.Namespace).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Deleting a namespace removes its policy state at once (no
	// controller manager runs here to delete its objects one by one).
	deny := cases[1].policies[0]
	if _, err := cs.NetworkingV1().NetworkPolicies("x").Create(ctx, &deny, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ya, xa := pods[3], pods[0]
	eventually(t, "x shut off again", func() bool { return !probeOnce(probe{ya, xa, 80, "tcp"}) })
	if out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "x/networkpolicy/deny"); err != nil {
		t.Fatalf("n1 does not hold namespace x's NetworkPolicy under x/networkpolicy/deny: %v %s", err, out)
	}
	if err := cs.CoreV1().Namespaces().Delete(ctx, "x", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, on := range []string{"n1", "n2"} {
		eventually(t, "namespace x's policy gone from "+on, func() bool {
			out, err := labtest.NodeRun(t, l, on, "filament", "policy", "get", "x/networkpolicy/deny")
			return err != nil && strings.Contains(out, "not found")
		})
	}
	eventually(t, "x/a reachable once namespace x is deleted", func() bool { return probeOnce(probe{ya, xa, 80, "tcp"}) })
}
