// Package k8s owns Kubernetes as an input to the agent: client-go informers
// on networking.k8s.io/v1 NetworkPolicy and the cilium.io/v2
// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy custom resources,
// handed to the policy engine exactly as the policy package parses those
// documents; this node's Pods (their labels, with their namespace's and
// service account, become endpoint labels); Services and EndpointSlices,
// handed to the service manager. Kubernetes is an input, not the store: the kvstore stays the
// cluster's etcd.
package k8s

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/k8s/incluster"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
)

// Policies is the policy engine as the watchers feed it. Scope gives a
// stored policy's scope: the policies of Kubernetes objects have
// policy.ScopeKubernetes.
type Policies interface {
	ImportScoped(scope string, ps []api.Policy) (uint64, error)
	Delete(key string) (uint64, error)
	Get(key string) (api.Policy, error)
	List() []api.Policy
	Scope(key string) (string, error)
}

// The Cilium policy resources.
var (
	CNP  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	CCNP = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
)

// Pods is the endpoint manager as the pod watcher feeds it.
type Pods interface {
	SetPodLabels(ctx context.Context, namespace, pod string, labels []string) (int, error)
}

// Watcher follows the cluster's policies and this node's pods.
type Watcher struct {
	policies Policies
	pods     Pods
	services Services
	// apiServer is the API server's address; informers the resources
	// followed, each with whether its first list has arrived.
	apiServer string
	informers []namedInformer
	// now is the relabels' clock (nil: time.Now).
	now func() time.Time

	errMu     sync.Mutex
	lastErr   string
	lastErrAt time.Time

	// relabels holds the pods to relabel, which one worker
	// (runRelabels) relabels one at a time; made at first use.
	relabelsOnce sync.Once
	relabels     *relabelQueue

	// policyMu orders the policy objects' handlers (three informers);
	// policyKinds are their caches and documents by kind.
	policyMu    sync.Mutex
	policyKinds map[string]policyKind

	svcIndexer, sliceIndexer cache.Indexer
	// podNamespace says which namespace a cluster pod's address is in
	// (false: no pod of the cluster known there); nil: not checked.
	podNamespace func(netip.Addr) (string, bool)
	// conflicted are the Services (namespace/name) whose service was
	// refused because another stored service held its frontend; each
	// removal of a stored service stores them again.
	conflictMu sync.Mutex
	conflicted map[string]bool
	// busy are the Services waiting to be stored again after
	// service.ErrBusy (one timer each; under conflictMu).
	busy map[string]bool
	// removing are the Services whose removal the kvstore failed,
	// waiting to be tried again, with the UIDs of the objects to remove
	// ("" by name) (one timer each; under conflictMu).
	removing map[string]map[string]bool
	// storeMu orders the stores of syncService (run by the handlers, the
	// prune's goroutine and busy timers) with removeService's deletes: a
	// store that read a Service just before its delete event completes
	// before that delete runs, never after it.
	storeMu sync.Mutex

	podIndexer, nsIndexer cache.Indexer
	podSynced, nsSynced   cache.InformerSynced
}

type namedInformer struct {
	resource string
	synced   cache.InformerSynced
}

// policyKind is one kind of policy object: its informer's cache and how
// an object becomes a policy document.
type policyKind struct {
	cache cache.Indexer
	toDoc doc
}

// ClientConfig is the agent's client configuration: from the kubeconfig
// file when one is given, else in-cluster from the pod's ServiceAccount
// (apiServer, host:port, overriding the pod's KUBERNETES_SERVICE_HOST/PORT).
func ClientConfig(kubeconfig, apiServer string) (*rest.Config, error) {
	if kubeconfig == "" {
		return incluster.Source{APIServer: apiServer}.Config()
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// Start connects with cfg and starts the informers (policies; the pods of
// node and the namespaces); it returns at once.
//
// podNamespace names the namespace of a cluster pod's address (the
// cluster's ipcache): an EndpointSlice's address that is another
// namespace's pod is not made a backend.
func Start(ctx context.Context, cfg *rest.Config, node string, p Policies, pods Pods, svcs Services,
	podNamespace func(netip.Addr) (string, bool)) (*Watcher, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	w := &Watcher{policies: p, pods: pods, services: svcs, podNamespace: podNamespace, apiServer: cfg.Host,
		policyKinds: map[string]policyKind{}}
	go w.runRelabels(ctx)
	typed := informers.NewSharedInformerFactory(cs, 10*time.Minute)
	np := typed.Networking().V1().NetworkPolicies().Informer()
	w.followPolicies(ctx, api.KindNetworkPolicy, networkPolicyDoc, np)
	w.follow("networkpolicies", np)
	nsInf := typed.Core().V1().Namespaces().Informer()
	w.nsIndexer, w.nsSynced = nsInf.GetIndexer(), nsInf.HasSynced
	nsInf.AddEventHandler(w.namespaceHandler())
	w.follow("namespaces", nsInf)
	podFactory := informers.NewSharedInformerFactoryWithOptions(cs, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + node }))
	podInf := podFactory.Core().V1().Pods().Informer()
	w.podIndexer, w.podSynced = podInf.GetIndexer(), podInf.HasSynced
	podInf.AddEventHandler(w.podHandler())
	w.follow("pods", podInf)
	dynf := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 10*time.Minute)
	for _, r := range []struct {
		gvr  schema.GroupVersionResource
		kind string
	}{{CNP, api.KindCiliumNetworkPolicy}, {CCNP, api.KindCiliumClusterwideNetworkPolicy}} {
		inf := dynf.ForResource(r.gvr).Informer()
		w.followPolicies(ctx, r.kind, ciliumDoc(r.kind), inf)
		w.follow(r.gvr.Resource, inf)
	}
	if svcs != nil {
		w.followServices(ctx, cs, typed)
	}
	typed.Start(ctx.Done())
	podFactory.Start(ctx.Done())
	dynf.Start(ctx.Done())
	slog.Info("following Kubernetes policies and this node's pods", "apiServer", cfg.Host, "node", node)
	return w, nil
}

func (w *Watcher) follow(resource string, inf cache.SharedIndexInformer) {
	w.informers = append(w.informers, namedInformer{resource, inf.HasSynced})
	inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
		defer cache.DefaultWatchErrorHandler(ctx, r, err)
		if errors.Is(err, io.EOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
			return // a watch closed, or resumed from a list: routine
		}
		w.errMu.Lock()
		w.lastErr, w.lastErrAt = resource+": "+err.Error(), time.Now()
		w.errMu.Unlock()
	})
}

// LastError is the last error of a list or watch (naming its resource)
// and when it came; "" when there was none. The informers retry on their
// own: an error older than the last change seen is likely over.
func (w *Watcher) LastError() (string, time.Time) {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.lastErr, w.lastErrAt
}

// APIServer is the address of the API server the watcher follows.
func (w *Watcher) APIServer() string { return w.apiServer }

// Waiting lists the resources whose first list has not arrived yet (the
// API server has not answered, or a CRD is not installed); their objects
// are not applied until it does. Empty once every first list has arrived
// (their objects are handed to the handlers in order after that, and a
// later loss of the API server does not show here: see LastError).
func (w *Watcher) Waiting() []string {
	var out []string
	for _, i := range w.informers {
		if !i.synced() {
			out = append(out, i.resource)
		}
	}
	return out
}

// podHandler queues a pod's relabel when its labels or service account
// change, and when the pod first reaches the cache: an endpoint created
// while the API server did not answer (CNI labels), or restored after
// labels changed while the agent was down, takes the pod's labels then
// (relabelling endpoints whose labels already match does nothing). Its
// relabels are paced per namespace (relabelQueue).
func (w *Watcher) podHandler() cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if p, ok := obj.(*corev1.Pod); ok {
				w.relabel(p.Namespace, p.Name, false)
			}
		},
		UpdateFunc: func(oldObj, obj any) {
			o, n := oldObj.(*corev1.Pod), obj.(*corev1.Pod)
			if !maps.Equal(o.Labels, n.Labels) || o.Spec.ServiceAccountName != n.Spec.ServiceAccountName {
				w.relabel(n.Namespace, n.Name, false)
			}
		},
	}
}

// namespaceHandler relabels a namespace's pods when its labels change or
// it first reaches the cache (its pods may have come first, without the
// namespace's labels), and drops its policies when it is deleted.
func (w *Watcher) namespaceHandler() cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Namespace); ok {
				w.relabelNamespace(n.Name)
			}
		},
		UpdateFunc: func(oldObj, obj any) {
			o, n := oldObj.(*corev1.Namespace), obj.(*corev1.Namespace)
			if n.DeletionTimestamp != nil {
				w.namespaceGone(n.Name)
				return
			}
			if !maps.Equal(o.Labels, n.Labels) {
				w.relabelNamespace(n.Name)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if n, ok := obj.(*corev1.Namespace); ok {
				w.namespaceGone(n.Name)
			}
		},
	}
}

// Resync relabels the endpoints of every pod in the cache: the agent calls
// it once it has restored the node's endpoints, since pods that reached the
// cache before had no endpoints to relabel.
func (w *Watcher) Resync(context.Context) {
	for _, obj := range w.podIndexer.List() {
		p := obj.(*corev1.Pod)
		w.relabel(p.Namespace, p.Name, true)
	}
}

// podRecheckAfter is how long after a CNI ADD's look at its pod the pod is
// looked at again (see PodLabels).
var podRecheckAfter = 2 * time.Second

// PodLabels returns the labels of pod namespace/name as endpoint labels
// (the pod's, its namespace's as io.cilium.k8s.namespace.labels.<k>, its
// service account), waiting up to 5 s for the pod to reach the cache.
// The pod is looked at again podRecheckAfter later and its endpoints
// relabelled if it differs: the pod's arrival in the cache, or a label
// change, between this look and the endpoint's creation found no endpoint
// to relabel.
func (w *Watcher) PodLabels(ctx context.Context, namespace, name string) ([]string, bool) {
	defer w.recheck(namespace, name)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if w.podSynced() && w.nsCached(namespace) {
			if obj, ok, _ := w.podIndexer.GetByKey(namespace + "/" + name); ok {
				return w.labelsOf(obj.(*corev1.Pod)), true
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			slog.Warn("pod or its namespace not in the Kubernetes cache; using the CNI labels", "pod", namespace+"/"+name)
			return nil, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *Watcher) recheck(namespace, name string) {
	time.AfterFunc(podRecheckAfter, func() { w.relabel(namespace, name, true) })
}

// nsCached says whether namespace is in the namespaces' cache.
func (w *Watcher) nsCached(namespace string) bool {
	_, ok, _ := w.nsIndexer.GetByKey(namespace)
	return ok
}

func (w *Watcher) labelsOf(p *corev1.Pod) []string {
	var out []string
	for k, v := range p.Labels {
		if endpoint.AgentOwnedKey(k) { // a pod must not pose as another namespace or cluster
			slog.Warn("ignoring a pod label whose key the agent sets", "pod", p.Namespace+"/"+p.Name, "key", k)
			continue
		}
		out = append(out, "k8s:"+k+"="+v)
	}
	if obj, ok, _ := w.nsIndexer.GetByKey(p.Namespace); ok {
		for k, v := range obj.(*corev1.Namespace).Labels {
			// A key too long to carry with the prefix (Kubernetes takes
			// names up to 63 characters) is left out: no policy can
			// select on it, and the pod's labels would be refused whole.
			key := "io.cilium.k8s.namespace.labels." + k
			if err := labels.ValidateKey(key); err != nil {
				slog.Warn("ignoring a namespace label no endpoint can carry", "namespace", p.Namespace, "key", k, "err", err)
				continue
			}
			out = append(out, "k8s:"+key+"="+v)
		}
	}
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	out = append(out, "k8s:io.cilium.k8s.policy.serviceaccount="+sa)
	slices.Sort(out)
	return out
}

// relabelRetries bounds the retries of a relabel that failed (the kvstore
// did not answer, say): after 1, 2, 4 ... 30 s, about 2.5 minutes in all.
const relabelRetries = 8

// relabelFirstRetry is the first retry's delay (shorter in tests).
var relabelFirstRetry = time.Second

// relabel queues a relabel of pod namespace/name; exempt: not paced
// (started by the agent or a namespace's change, not by the pod's own).
func (w *Watcher) relabel(namespace, name string, exempt bool) {
	w.relabelQueue().add(namespace+"/"+name, exempt)
}

func (w *Watcher) relabelQueue() *relabelQueue {
	w.relabelsOnce.Do(func() { w.relabels = newRelabelQueue() })
	return w.relabels
}

func (w *Watcher) clock() time.Time {
	if w.now != nil {
		return w.now()
	}
	return time.Now()
}

// runRelabels relabels the queued pods, one at a time, until ctx ends.
// Until 2026-12-07 the pod events relabelled inline, each waiting on
// etcd, with nothing bounding how often a pod changed identity: a tenant
// patching a pod's labels in a loop filled etcd's quota in minutes, and
// its events held back other namespaces' relabels on the node
// (TestRelabelStormRateLimitedPerNamespace,
// TestLabelStormDoesNotStarveOtherNamespacesRelabel).
func (w *Watcher) runRelabels(ctx context.Context) {
	q := w.relabelQueue()
	for {
		w.drainRelabels(ctx)
		var due <-chan time.Time
		var t *time.Timer
		if at, ok := q.nextAt(); ok {
			t = time.NewTimer(at.Sub(w.clock()))
			due = t.C
		}
		select {
		case <-ctx.Done():
		case <-q.wake:
		case <-due:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// drainRelabels relabels the pods ready now, until none is.
func (w *Watcher) drainRelabels(ctx context.Context) {
	q := w.relabelQueue()
	for ctx.Err() == nil {
		key, exempt, ok := q.next(w.clock())
		if !ok {
			return
		}
		w.relabelKey(ctx, key, exempt)
	}
}

// relabelKey gives the endpoints of pod key (namespace/name) the labels of
// the pod and its namespace as the caches hold them when it runs: the last
// to run applies the latest state, whichever event (or Resync, or a
// re-check) queued it. Unless exempt, it waits (queued again) while the
// namespace's identity-changing relabels on the node are past their pace
// (relabelBurst, relabelRate): other namespaces' pods go on meanwhile. A
// failed relabel is tried again later.
func (w *Watcher) relabelKey(ctx context.Context, key string, exempt bool) {
	if w.pods == nil {
		return
	}
	q := w.relabelQueue()
	namespace, name, _ := cache.SplitMetaNamespaceKey(key)
	obj, ok, _ := w.podIndexer.GetByKey(key)
	// Not before its namespace is cached: its labels would lack the
	// namespace's, and a restored endpoint would lose them until the
	// namespace came (its arrival relabels its pods). Until 2026-12-06 a
	// restarted agent whose pods' list came first did that.
	if !ok || !w.nsCached(namespace) {
		q.done(key)
		return
	}
	now := w.clock()
	if !exempt {
		if d := q.wait(namespace, now); d > 0 {
			q.deferUntil(key, now.Add(d), true, false)
			return
		}
	}
	n, err := w.pods.SetPodLabels(ctx, namespace, name, w.labelsOf(obj.(*corev1.Pod)))
	// A failed relabel may have written to etcd as a successful one does.
	if !exempt && (n > 0 || err != nil && !errors.Is(err, endpoint.ErrInvalid)) {
		q.take(namespace, now)
	}
	if err == nil {
		q.done(key)
		if n > 0 {
			slog.Info("pod labels changed: new identity", "pod", key, "endpoints", n)
		}
		return
	}
	attempt := q.failed(key)
	slog.Warn("relabelling a pod's endpoints", "pod", key, "attempt", attempt, "err", err)
	// Labels the agent refuses stay refused.
	if attempt > relabelRetries || errors.Is(err, endpoint.ErrInvalid) {
		q.done(key)
		return
	}
	// From the failure (an attempt against an unreachable etcd takes
	// seconds), not the attempt's start; the retry of a relabel not paced
	// is not paced either (an admin's namespace label stays prompt).
	q.deferUntil(key, w.clock().Add(min(relabelFirstRetry<<(attempt-1), 30*time.Second)), false, exempt)
}

// namespaceGone removes the policy state of a namespace being deleted at
// once, without waiting for its objects' deletions one by one.
func (w *Watcher) namespaceGone(namespace string) {
	w.policyMu.Lock()
	defer w.policyMu.Unlock()
	for _, p := range w.policies.List() {
		if p.Namespace != namespace || p.Clusterwide() {
			continue
		}
		if _, sc := w.stored(p.Key()); sc == policy.ScopeKubernetes || sc == policy.ScopeAgent {
			if _, err := w.policies.Delete(p.Key()); err == nil {
				slog.Info("namespace deleted: its policy removed", "policy", p.Key())
			}
		}
	}
}

// relabelNamespace queues the relabels of namespace's pods, not paced: a
// namespace's labels are its admin's, not its pods'.
func (w *Watcher) relabelNamespace(namespace string) {
	pods, err := w.podIndexer.ByIndex(cache.NamespaceIndex, namespace)
	if err != nil {
		slog.Warn("pods of a namespace not relabelled", "namespace", namespace, "err", err)
		return
	}
	for _, obj := range pods {
		w.relabel(namespace, obj.(*corev1.Pod).Name, true)
	}
}

// doc turns an object into the policy document the policy package parses.
type doc func(obj any) ([]byte, error)

// followPolicies hands the policy objects of kind that inf follows to the
// engine, and once inf has its first list removes the stored policies of
// that kind whose objects are gone (deleted while the agent was down).
func (w *Watcher) followPolicies(ctx context.Context, kind string, toDoc doc, inf cache.SharedIndexInformer) {
	w.policyKinds[kind] = policyKind{inf.GetIndexer(), toDoc}
	inf.AddEventHandler(w.handler(kind, toDoc))
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			w.prune(kind)
		}
	}()
}

// stored returns the kind and scope of the stored policy with key (kind
// "" when none is stored).
func (w *Watcher) stored(key string) (kind, scope string) {
	p, err := w.policies.Get(key)
	if err != nil {
		return "", ""
	}
	scope, _ = w.policies.Scope(key)
	return p.Kind, scope
}

// fromKubernetes returns the kind of the stored policy with key if a
// Kubernetes object gave it (scope policy.ScopeKubernetes), else "".
func (w *Watcher) fromKubernetes(key string) string {
	if kind, scope := w.stored(key); scope == policy.ScopeKubernetes {
		return kind
	}
	return ""
}

// handler applies the policy objects of one kind. A policy's key has its
// kind's (api.KeyOf), so a NetworkPolicy and a CiliumNetworkPolicy of the
// same namespace and name are two policies, both enforced (until
// 2026-12-04 they shared a key: one was refused, or, before that, the
// later replaced the earlier and deleting either removed both). An object
// that does not parse leaves what was stored for it; its deletion removes
// that (it was kept before).
func (w *Watcher) handler(kind string, toDoc doc) cache.ResourceEventHandlerFuncs {
	apply := func(obj any) {
		w.policyMu.Lock()
		defer w.policyMu.Unlock()
		w.applyLocked(kind, toDoc, obj)
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    apply,
		UpdateFunc: func(_, obj any) { apply(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			key, err := policyKey(kind, obj)
			if err != nil {
				return
			}
			w.policyMu.Lock()
			defer w.policyMu.Unlock()
			if w.fromKubernetes(key) != kind {
				return // stored from the CLI, or not at all
			}
			w.removeLocked(key, kind, "its object is deleted")
		},
	}
}

// policyKey is the key (api.KeyOf) of the policy a policy object of kind
// gives.
func policyKey(kind string, obj any) (string, error) {
	m, err := apimeta.Accessor(obj)
	if err != nil {
		return "", err
	}
	return api.KeyOf(kind, m.GetNamespace(), m.GetName()), nil
}

func (w *Watcher) applyLocked(kind string, toDoc doc, obj any) {
	key, err := policyKey(kind, obj)
	if err != nil {
		slog.Warn("kubernetes policy skipped", "kind", kind, "err", err)
		return
	}
	if _, scope := w.stored(key); scope == policy.ScopeCluster || scope == policy.ScopeLocal {
		slog.Warn("kubernetes policy not enforced: a policy imported with the CLI has the same kind, namespace and name (rename one)",
			"policy", key, "kind", kind)
		return
	}
	b, err := toDoc(obj)
	if err != nil {
		slog.Warn("kubernetes policy skipped", "policy", key, "kind", kind, "err", err)
		return
	}
	ps, err := api.Parse(b)
	if err != nil {
		slog.Warn("kubernetes policy rejected", "policy", key, "kind", kind, "err", err)
		return
	}
	if _, err := w.policies.ImportScoped(policy.ScopeKubernetes, ps); err != nil {
		slog.Warn("kubernetes policy not imported", "policy", key, "kind", kind, "err", err)
	}
}

// removeLocked deletes the stored policy with key (of kind).
func (w *Watcher) removeLocked(key, kind, why string) {
	if _, err := w.policies.Delete(key); err != nil {
		slog.Warn("kubernetes policy not removed", "policy", key, "kind", kind, "err", err)
		return
	}
	slog.Info("kubernetes policy removed: "+why, "policy", key, "kind", kind)
}

// prune removes the stored policies of kind that no object in its cache
// gives: deleted while the agent was down, they had no delete event (and
// were enforced on until 2026-12-03).
func (w *Watcher) prune(kind string) {
	w.policyMu.Lock()
	defer w.policyMu.Unlock()
	for _, p := range w.policies.List() {
		key := p.Key()
		if w.fromKubernetes(key) != kind {
			continue
		}
		if _, ok, _ := w.policyKinds[kind].cache.GetByKey(cache.NewObjectName(p.Namespace, p.Name).String()); ok {
			continue
		}
		w.removeLocked(key, kind, "its object is gone")
	}
}

// meta keeps only the fields a policy document has: the API server's own
// (uid, resourceVersion, managedFields, ...) are not policy.
func meta(name, namespace string, labels map[string]string) map[string]any {
	m := map[string]any{"name": name}
	if namespace != "" {
		m["namespace"] = namespace
	}
	if len(labels) > 0 {
		m["labels"] = labels
	}
	return m
}

func networkPolicyDoc(obj any) ([]byte, error) {
	np, ok := obj.(*networkingv1.NetworkPolicy)
	if !ok {
		return nil, fmt.Errorf("not a NetworkPolicy: %T", obj)
	}
	return json.Marshal(map[string]any{
		"apiVersion": "networking.k8s.io/v1", "kind": api.KindNetworkPolicy,
		"metadata": meta(np.Name, np.Namespace, np.Labels), "spec": np.Spec,
	})
}

func ciliumDoc(kind string) doc {
	return func(obj any) ([]byte, error) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return nil, fmt.Errorf("not a %s: %T", kind, obj)
		}
		d := map[string]any{"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta(u.GetName(), u.GetNamespace(), u.GetLabels())}
		for _, f := range []string{"spec", "specs"} {
			if v, ok := u.Object[f]; ok {
				d[f] = v
			}
		}
		return json.Marshal(d)
	}
}

// NodeInfo reads Node name from the API server (at most 5 s): its IPv4 pod
// CIDR (spec.podCIDRs, or spec.podCIDR; invalid when it has none) and its
// InternalIP address (invalid when none).
func NodeInfo(ctx context.Context, cfg *rest.Config, name string) (netip.Prefix, netip.Addr, error) {
	var cidr netip.Prefix
	var addr netip.Addr
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = 5 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return cidr, addr, err
	}
	n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return cidr, addr, fmt.Errorf("node %s: %w", name, err)
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() && !cidr.IsValid() {
			cidr = p.Masked()
		}
	}
	for _, a := range n.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() && a.Type == corev1.NodeInternalIP && !addr.IsValid() {
			addr = ip
		}
	}
	return cidr, addr, nil
}
