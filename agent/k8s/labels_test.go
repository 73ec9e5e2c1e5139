package k8s

import (
	"context"
	"strings"
	"testing"

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
type recordedPods struct{ calls []string }

func (r *recordedPods) SetPodLabels(_ context.Context, namespace, pod string, labels []string) (int, error) {
	r.calls = append(r.calls, namespace+"/"+pod+" "+strings.Join(labels, ","))
	return 1, nil
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
