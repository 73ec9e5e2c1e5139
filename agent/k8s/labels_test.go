package k8s

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/filament-net/filament/agent/labels"
)

// A pod's own labels cannot pose as its namespace's labels, another
// namespace, cluster or service account (issue 13, item 3): the agent's
// keys come only from the API server's namespace and pod spec.
func TestPodLabelsCannotPoseAsAgentLabels(t *testing.T) {
	w := &Watcher{nsIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})}
	// A namespace label whose key is too long to be carried with the
	// namespace prefix (Kubernetes takes it; no policy can select on it)
	// is left out: before, the pod's labels were refused whole, and no pod
	// of the namespace could start or change identity.
	w.nsIndexer.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a", Labels: map[string]string{"team": "a",
		"a-label-name-that-is-thirty-three": "x"}}})
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
	if _, err := labels.ParseList(w.labelsOf(p)...); err != nil {
		t.Fatalf("the pod's labels are refused: %v", err)
	}
}

// recordedPods is the endpoint manager as a test sees it: each relabel.
type recordedPods struct {
	mu    sync.Mutex
	calls []string
	fail  int // the first fail calls fail
}

func (r *recordedPods) SetPodLabels(_ context.Context, namespace, pod string, labels []string) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, namespace+"/"+pod+" "+strings.Join(labels, ","))
	if r.fail > 0 {
		r.fail--
		return 0, errors.New("kvstore unreachable")
	}
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
		podIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})}
	ctx := context.Background()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "db", Labels: map[string]string{"app": "db"}}}
	w.podIndexer.Add(p)
	// Not before its namespace is in the cache too: found 2026-12-06, a
	// restarted agent whose pods' list came before the namespaces' took
	// every restored endpoint's namespace labels away until then (deny
	// rules on namespace labels stopped matching).
	w.podHandler().OnAdd(p, true)
	w.drainRelabels(ctx)
	if len(rec.calls) != 0 {
		t.Fatalf("relabels after the pod's add, its namespace not cached: %q", rec.calls)
	}
	w.Resync(ctx)
	w.drainRelabels(ctx)
	if len(rec.calls) != 0 {
		t.Fatalf("relabels after Resync, the namespace not cached: %q", rec.calls)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a", Labels: map[string]string{"team": "a"}}}
	w.nsIndexer.Add(ns)
	w.namespaceHandler().OnAdd(ns, true)
	w.drainRelabels(ctx)
	want := "team-a/db k8s:app=db,k8s:io.cilium.k8s.namespace.labels.team=a,k8s:io.cilium.k8s.policy.serviceaccount=default"
	if len(rec.calls) != 1 || rec.calls[0] != want {
		t.Fatalf("relabels after the namespace's add: %q, want [%q]", rec.calls, want)
	}
	w.podHandler().OnAdd(p, true)
	w.drainRelabels(ctx)
	w.Resync(ctx)
	w.drainRelabels(ctx)
	if len(rec.calls) != 3 || rec.calls[1] != want || rec.calls[2] != want {
		t.Fatalf("relabels after the pod's add and Resync: %q, want two more %q", rec.calls, want)
	}
	// An update that changes neither labels nor service account does not.
	q := p.DeepCopy()
	q.Annotations = map[string]string{"x": "y"}
	w.podHandler().OnUpdate(p, q)
	w.drainRelabels(ctx)
	if len(rec.calls) != 3 {
		t.Fatalf("an annotation change relabelled: %q", rec.calls)
	}
}

// withNamespace is an indexer of namespaces holding name (no labels).
func withNamespace(name string) cache.Indexer {
	i := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	i.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	return i
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
	// The cache is not synced at the look (so it finds nothing) and holds
	// the pod at the re-check.
	w := &Watcher{pods: rec, podSynced: func() bool { return false },
		nsIndexer:  withNamespace("default"),
		podIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})}
	w.podIndexer.Add(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "late", Labels: map[string]string{"app": "late"}}})
	go w.runRelabels(ctx)
	done, stop := context.WithCancel(context.Background())
	stop() // no wait
	if _, ok := w.PodLabels(done, "default", "late"); ok {
		t.Fatal("labels of a pod from a cache not synced")
	}
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

// A relabel applies the pod as the cache holds it when the relabel runs,
// not the object its event carried: a Resync walking an old list, or a
// handler that computed labels before the namespace arrived, cannot put
// back labels already replaced.
func TestRelabelAppliesTheCachedPod(t *testing.T) {
	rec := &recordedPods{}
	w := &Watcher{pods: rec, nsIndexer: withNamespace("default"),
		podIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})}
	stale := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", Labels: map[string]string{"role": "admin"}}}
	now := stale.DeepCopy()
	now.Labels = map[string]string{"role": "user"}
	w.podIndexer.Add(now)
	w.relabel(stale.Namespace, stale.Name, false)
	w.drainRelabels(context.Background())
	want := "default/web k8s:io.cilium.k8s.policy.serviceaccount=default,k8s:role=user"
	if got := rec.seen(); len(got) != 1 || got[0] != want {
		t.Fatalf("relabels %q, want [%q]", got, want)
	}
	// A namespace's arrival relabels its pods (through the namespace index).
	w.namespaceHandler().OnAdd(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, true)
	w.drainRelabels(context.Background())
	if got := rec.seen(); len(got) != 2 || got[1] != want {
		t.Fatalf("relabels after the namespace's add %q, want a second %q", got, want)
	}
	// A pod gone from the cache is not relabelled.
	w.podIndexer.Delete(now)
	w.relabel(stale.Namespace, stale.Name, false)
	w.drainRelabels(context.Background())
	if got := rec.seen(); len(got) != 2 {
		t.Fatalf("a pod no longer cached was relabelled: %q", got)
	}
}

// A relabel that fails (the kvstore did not answer) is tried again.
func TestFailedRelabelIsRetried(t *testing.T) {
	defer func(d time.Duration) { relabelFirstRetry = d }(relabelFirstRetry)
	relabelFirstRetry = 10 * time.Millisecond
	rec := &recordedPods{fail: 2}
	w := &Watcher{pods: rec, nsIndexer: withNamespace("default"),
		podIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", Labels: map[string]string{"app": "web"}}}
	w.podIndexer.Add(p)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.runRelabels(ctx)
	w.podHandler().OnAdd(p, true)
	for deadline := time.Now().Add(5 * time.Second); len(rec.seen()) < 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("relabels %q: not tried again until it succeeded", rec.seen())
		}
	}
	time.Sleep(100 * time.Millisecond)
	if got := rec.seen(); len(got) != 3 {
		t.Fatalf("relabels %q, want three (two failed, one done)", got)
	}
}

// fakeRelabel is the endpoint manager as the relabel tests see it: each
// pod has one endpoint, whose identity changes when a relabel brings it
// other labels (as Manager.SetPodLabels reports). calls counts every
// relabel made (each waits on etcd in the agent), changes the
// identity-changing ones, in order.
type fakeRelabel struct {
	mu      sync.Mutex
	labels  map[string]string // pod -> labels applied
	calls   []string          // pods
	changes []string          // pod labels
	fail    map[string]int    // pod -> relabels to fail first
}

func (f *fakeRelabel) SetPodLabels(_ context.Context, namespace, pod string, ls []string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key, joined := namespace+"/"+pod, strings.Join(ls, ",")
	f.calls = append(f.calls, key)
	if f.fail[key] > 0 {
		f.fail[key]--
		return 0, errors.New("kvstore unreachable")
	}
	if f.labels == nil {
		f.labels = map[string]string{}
	}
	if f.labels[key] == joined {
		return 0, nil
	}
	f.labels[key] = joined
	f.changes = append(f.changes, key+" "+joined)
	return 1, nil
}

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Step(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// relabelWatcher is a watcher of namespaces nss relabelling into f, on
// clock c; relabels run when the test calls drainRelabels.
func relabelWatcher(f *fakeRelabel, c *fakeClock, nss ...string) *Watcher {
	w := &Watcher{pods: f, now: c.Now,
		nsIndexer:  cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		podIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})}
	for _, ns := range nss {
		w.nsIndexer.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	}
	return w
}

// patch sets pod namespace/name's labels in the cache and delivers the
// update event (the informer's order: cache first, then handler).
func patch(w *Watcher, namespace, name string, ls map[string]string) {
	key := namespace + "/" + name
	n := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: ls}}
	old, ok, _ := w.podIndexer.GetByKey(key)
	w.podIndexer.Update(n)
	if !ok {
		w.podHandler().OnAdd(n, false)
		return
	}
	w.podHandler().OnUpdate(old, n)
}

// A tenant patching a pod's labels in a loop (each relabel writes and
// deletes an identity and its reference in etcd: about 120 KB of history
// for a label set at the 32 KiB bound, so etcd's quota, which counts
// history until the next compaction, filled in minutes) gets at most
// relabelBurst relabels at once and relabelRate per second after; the
// changes meanwhile collapse into the pod's latest labels, which are
// applied last. Until 2026-12-07 each update event relabelled at once.
// Found 2026-12-07 by a security review.
func TestRelabelStormRateLimitedPerNamespace(t *testing.T) {
	f, c := &fakeRelabel{}, &fakeClock{t: time.Unix(1_000_000, 0)}
	w := relabelWatcher(f, c, "tenant")
	ctx := context.Background()
	const patches = 1000
	for i := range patches {
		patch(w, "tenant", "p", map[string]string{"app": "web", "v": fmt.Sprint(i)})
		w.drainRelabels(ctx)
		c.Step(time.Second / patches)
	}
	// One second went by: the burst and one more at most.
	if n := len(f.changes); n > relabelBurst+1 {
		t.Fatalf("%d identity changes in the storm's second, want at most %d", n, relabelBurst+1)
	}
	// The last labels are applied once the namespace has a token again.
	for range 3 {
		c.Step(time.Second)
		w.drainRelabels(ctx)
	}
	last := fmt.Sprintf("tenant/p k8s:app=web,k8s:io.cilium.k8s.policy.serviceaccount=default,k8s:v=%d", patches-1)
	if got := f.changes[len(f.changes)-1]; got != last {
		t.Fatalf("last labels applied %q, want %q", got, last)
	}
	if n := len(f.changes); n > relabelBurst+3 {
		t.Fatalf("%d identity changes in three seconds, want at most %d", n, relabelBurst+3)
	}
}

// One namespace's label storm does not hold back another namespace's
// relabel on the node: an admin's quarantine=true on a pod is applied
// after at most the storm's burst of relabels (each waits on etcd), not
// after every relabel the storm queued. Until 2026-12-07 the pod events
// relabelled inline, in order, each waiting on etcd, so the victim's
// waited behind all the storm's. Found 2026-12-07 by a security review.
func TestLabelStormDoesNotStarveOtherNamespacesRelabel(t *testing.T) {
	f, c := &fakeRelabel{}, &fakeClock{t: time.Unix(1_000_000, 0)}
	w := relabelWatcher(f, c, "tenant", "victim")
	ctx := context.Background()
	patch(w, "victim", "db", map[string]string{"app": "db"})
	w.drainRelabels(ctx)
	// The storm's events are delivered before the victim's.
	before := len(f.calls)
	const storm = 1000
	for i := range storm {
		patch(w, "tenant", fmt.Sprintf("p%d", i), map[string]string{"app": "web", "v": "1"})
	}
	patch(w, "victim", "db", map[string]string{"app": "db", "quarantine": "true"})
	w.drainRelabels(ctx)
	at := -1
	for i, call := range f.calls[before:] {
		if call == "victim/db" {
			at = i
			break
		}
	}
	if at < 0 || at > relabelBurst {
		t.Fatalf("the victim's relabel came after %d of the storm's (-1: never), want at most %d", at, relabelBurst)
	}
	want := "victim/db k8s:app=db,k8s:io.cilium.k8s.policy.serviceaccount=default,k8s:quarantine=true"
	if !hasChange(f, want) {
		t.Fatalf("the victim's quarantine was not applied: %q", f.changes)
	}
}

func hasChange(f *fakeRelabel, want string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.changes {
		if c == want {
			return true
		}
	}
	return false
}

// A namespace's label change (its admin's, not its pods') relabels all
// its pods on the node at once, past the pacing of its pods' own
// changes, even while a pod of it storms: quarantining a namespace by
// label is not held back by the tenant it quarantines.
func TestNamespaceRelabelIsNotPaced(t *testing.T) {
	f, c := &fakeRelabel{}, &fakeClock{t: time.Unix(1_000_000, 0)}
	w := relabelWatcher(f, c, "tenant")
	ctx := context.Background()
	const pods = 3 * relabelBurst
	for i := range pods {
		patch(w, "tenant", fmt.Sprintf("p%d", i), map[string]string{"app": "web"})
	}
	w.drainRelabels(ctx) // the burst: the namespace has no token left
	for i := range 100 {
		patch(w, "tenant", "p0", map[string]string{"app": "web", "v": fmt.Sprint(i)})
	}
	w.drainRelabels(ctx)
	before := len(f.changes)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "tenant", Labels: map[string]string{"quarantine": "true"}}}
	old, _, _ := w.nsIndexer.GetByKey("tenant")
	w.nsIndexer.Update(ns)
	w.namespaceHandler().OnUpdate(old, ns)
	w.drainRelabels(ctx)
	if n := len(f.changes) - before; n != pods {
		t.Fatalf("%d of the namespace's %d pods relabelled at its label change", n, pods)
	}
	for _, ch := range f.changes[before:] {
		if !strings.Contains(ch, "k8s:io.cilium.k8s.namespace.labels.quarantine=true") {
			t.Fatalf("relabelled without the namespace's label: %q", ch)
		}
	}
}

// The retry of a relabel that is not paced (the agent's re-check, a
// namespace's change) is not paced either: until 2026-12-07 it came back
// as the pod's own change, behind its namespace's storming pods, and an
// admin's label reached the pod a second per storming pod late (found by
// a review).
func TestRelabelRetryKeepsItsExemption(t *testing.T) {
	f, c := &fakeRelabel{fail: map[string]int{}}, &fakeClock{t: time.Unix(1_000_000, 0)}
	w := relabelWatcher(f, c, "tenant")
	ctx := context.Background()
	const pods = 3 * relabelBurst
	for i := range pods {
		patch(w, "tenant", fmt.Sprintf("p%d", i), map[string]string{"app": "web"})
	}
	w.drainRelabels(ctx) // the burst; the other pods wait for their pacing
	// p0 takes new labels in the cache (an exempt re-check will apply
	// them), and its first try fails.
	w.podIndexer.Update(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "p0", Labels: map[string]string{"app": "web", "quarantine": "true"}}})
	f.fail["tenant/p0"] = 1
	w.relabel("tenant", "p0", true)
	w.drainRelabels(ctx)
	// The pod's own change meanwhile does not borrow the pending retry's
	// exemption (the namespace has no token): it waits for the retry,
	// which applies it.
	calls := len(f.calls)
	patch(w, "tenant", "p0", map[string]string{"app": "web", "quarantine": "true", "v": "1"})
	w.drainRelabels(ctx)
	if len(f.calls) != calls {
		t.Fatal("the pod's own change ran at once, unpaced, on the exemption of the pending retry")
	}
	c.mu.Lock()
	c.t = c.t.Add(relabelFirstRetry)
	c.mu.Unlock()
	w.drainRelabels(ctx)
	if !strings.Contains(f.labels["tenant/p0"], "quarantine=true") || !strings.Contains(f.labels["tenant/p0"], "v=1") {
		t.Fatalf("the retry of p0's exempt relabel, due now, was paced behind its namespace's pods: labels %q", f.labels["tenant/p0"])
	}
}
