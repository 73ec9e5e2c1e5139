package lab_test

import (
	"context"
	"fmt"
	"github.com/filament-net/filament/internal/kubetest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/filament-net/filament/bpf"
	"github.com/filament-net/filament/lab/labtest"
)

// rssKiB reads a process's resident memory.
func rssKiB(b *testing.B, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(line)[1])
			return n
		}
	}
	return 0
}

// BenchmarkKubernetes: (1) from a Pod label change (the API update) until
// the pod's entry in its node's BPF endpoints map carries the new
// identity, p50/p99 over 20 changes, beside the API update round trip
// alone; (2) the agent's resident memory before and after 10,000 pods (of
// its node) and 10,000 services are in its informer caches.
func BenchmarkKubernetes(b *testing.B) {
	kubetest.Binary(b)
	kubeconfig := writeKubeconfig(b, "172.30.0.254")
	l := labtest.UpRouting(b, 1, "native", "--kubeconfig", kubeconfig)
	rc := startKubeAPIServer(b, l)
	cs, _ := kubernetes.NewForConfig(rc)
	ctx := context.Background()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default", Labels: map[string]string{"app": "v0"}},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "pause"}}}}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	p := labtest.Pod(b, l, "n1", "p")
	eps, err := ebpfLoadPinned(labtest.PinDir(l, "n1") + "/endpoints")
	if err != nil {
		b.Fatal(err)
	}
	defer eps.Close()
	identityOf := func() uint32 {
		k := ipcKey(p.IP, 32).Ip
		var v bpf.DatapathEndpointInfo
		if err := eps.Lookup(&k, &v); err != nil {
			return 0
		}
		return v.Identity
	}
	var relabel, api []time.Duration
	for i := 1; i <= 20; i++ {
		before := identityOf()
		cur, err := cs.CoreV1().Pods("default").Get(ctx, "p", metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		cur.Labels["app"] = fmt.Sprintf("v%d", i)
		start := time.Now()
		if _, err := cs.CoreV1().Pods("default").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		api = append(api, time.Since(start))
		for identityOf() == before {
			if time.Since(start) > 30*time.Second {
				b.Fatal("the label change never reached the datapath")
			}
			time.Sleep(100 * time.Microsecond)
		}
		relabel = append(relabel, time.Since(start))
	}
	pct := func(d []time.Duration, q int) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[(len(s)*q-1)/100].Microseconds()) / 1000
	}
	b.ReportMetric(pct(relabel, 50), "label-to-datapath-p50-ms")
	b.ReportMetric(pct(relabel, 99), "label-to-datapath-p99-ms")
	b.ReportMetric(pct(api, 50), "baseline-api-update-p50-ms")

	n1, _ := l.Node("n1")
	before := rssKiB(b, n1.PID)
	var wg sync.WaitGroup
	work := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				cs.CoreV1().Pods("default").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bulk-%d", i), Namespace: "default",
					Labels: map[string]string{"app": "bulk", "i": strconv.Itoa(i)}},
					Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "pause"}}}}, metav1.CreateOptions{})
				cs.CoreV1().Services("default").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bulk-%d", i), Namespace: "default"},
					Spec: corev1.ServiceSpec{ClusterIP: fmt.Sprintf("10.96.%d.%d", 100+i/250, 1+i%250), Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
			}
		}()
	}
	count := 10000
	if v, err := strconv.Atoi(os.Getenv("FILAMENT_BENCH_KUBE_OBJECTS")); err == nil && v > 0 {
		count = v
	}
	start := time.Now()
	for i := 0; i < count; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	b.Logf("created %d pods and %d services in %s", count, count, time.Since(start).Round(time.Millisecond))
	time.Sleep(5 * time.Second) // the informers catch up
	after := rssKiB(b, n1.PID)
	b.ReportMetric(float64(before)/1024, "agent-rss-before-MiB")
	b.ReportMetric(float64(after)/1024, fmt.Sprintf("agent-rss-%d-pods-%d-svcs-MiB", count, count))
}
