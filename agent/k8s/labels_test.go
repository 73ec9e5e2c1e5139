package k8s

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// A pod's own labels cannot pose as its namespace's labels, another
// namespace, cluster or service account (issue 13, item 3): the agent's
// keys come only from the API server's namespace and pod spec.
func TestPodLabelsCannotPoseAsAgentLabels(t *testing.T) {
	w := &Watcher{nsIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})}
	w.nsIndexer.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a", Labels: map[string]string{"team": "a"}}})
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "p", Labels: map[string]string{
		"app":                                 "web",
		"io.cilium.k8s.namespace.labels.team": "admin",
		"io.cilium.k8s.policy.serviceaccount": "admin",
		"io.cilium.k8s.policy.cluster":        "west",
		"filament.io/cluster":                 "west",
		"io.kubernetes.pod.namespace":         "kube-system",
	}}}
	got := strings.Join(w.labelsOf(p), ",")
	want := "k8s:app=web,k8s:io.cilium.k8s.namespace.labels.team=a,k8s:io.cilium.k8s.policy.serviceaccount=default"
	if got != want {
		t.Fatalf("labels:\n got %s\nwant %s", got, want)
	}
}

// recordedPods is the endpoint manager as a test sees it: each relabel.
type recordedPods struct {
	mu    sync.Mutex
	calls []string
}

func (r *recordedPods) SetPodLabels(_ context.Context, namespace, pod string, labels []string) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, namespace+"/"+pod+" "+strings.Join(labels, ","))
	return 1, nil
}

func (r *recordedPods) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// A pod whose endpoint was made before the pod reached the cache (the API
// server did not answer at CNI ADD, so the endpoint has the CNI labels)
// or was restored after its labels changed while the agent was down is
// relabelled when the pod reaches the cache, not only at its next change;
// likewise when its namespace (and its labels) reach the cache after it,
// and for every cached pod once the endpoints are restored (Resync).
func TestPodReachingTheCacheRelabelsItsEndpoints(t *testing.T) {
	rec := &recordedPods{}
	w := &Watcher{pods: rec, nsIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		podIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})}
	ctx := context.Background()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "db", Labels: map[string]string{"app": "db"}}}
	w.podIndexer.Add(p)
	w.podHandler(ctx).OnAdd(p, true)
	want := "team-a/db k8s:app=db,k8s:io.cilium.k8s.policy.serviceaccount=default"
	if len(rec.calls) != 1 || rec.calls[0] != want {
		t.Fatalf("relabels after the pod's add: %q, want [%q]", rec.calls, want)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a", Labels: map[string]string{"team": "a"}}}
	w.nsIndexer.Add(ns)
	w.namespaceHandler(ctx).OnAdd(ns, true)
	want = "team-a/db k8s:app=db,k8s:io.cilium.k8s.namespace.labels.team=a,k8s:io.cilium.k8s.policy.serviceaccount=default"
	if len(rec.calls) != 2 || rec.calls[1] != want {
		t.Fatalf("relabels after the namespace's add: %q, want a second %q", rec.calls, want)
	}
	w.Resync(ctx)
	if len(rec.calls) != 3 || rec.calls[2] != want {
		t.Fatalf("relabels after Resync: %q, want a third %q", rec.calls, want)
	}
	// An update that changes neither labels nor service account does not.
	q := p.DeepCopy()
	q.Annotations = map[string]string{"x": "y"}
	w.podHandler(ctx).OnUpdate(p, q)
	if len(rec.calls) != 3 {
		t.Fatalf("an annotation change relabelled: %q", rec.calls)
	}
}

// Waiting names each resource whose first list has not arrived.
func TestWaitingNamesUnsyncedResources(t *testing.T) {
	w := &Watcher{informers: []namedInformer{
		{"pods", func() bool { return true }},
		{"ciliumnetworkpolicies", func() bool { return false }},
		{"services", func() bool { return false }},
	}}
	if got := strings.Join(w.Waiting(), ","); got != "ciliumnetworkpolicies,services" {
		t.Fatalf("waiting %q", got)
	}
}

// A pod that reaches the cache (or changes) between a CNI ADD's look at it
// and the endpoint's creation finds no endpoint to relabel then; the look
// is made again shortly after, and relabels.
func TestPodLookedAtAgainAfterCNIAdd(t *testing.T) {
	defer func(d time.Duration) { podRecheckAfter = d }(podRecheckAfter)
	podRecheckAfter = 10 * time.Millisecond
	rec := &recordedPods{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &Watcher{pods: rec, life: ctx, podSynced: func() bool { return true },
		nsIndexer:  cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		podIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})}
	done, stop := context.WithCancel(context.Background())
	stop() // no wait: the pod is not in the cache
	if _, ok := w.PodLabels(done, "default", "late"); ok {
		t.Fatal("labels of a pod not in the cache")
	}
	w.podIndexer.Add(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "late", Labels: map[string]string{"app": "late"}}})
	want := "default/late k8s:app=late,k8s:io.cilium.k8s.policy.serviceaccount=default"
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		calls := rec.seen()
		if len(calls) == 1 && calls[0] == want {
			return
		}
		if len(calls) > 0 || time.Now().After(deadline) {
			t.Fatalf("relabels %q, want [%q]", calls, want)
		}
	}
}
