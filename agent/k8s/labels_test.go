package k8s

import (
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
