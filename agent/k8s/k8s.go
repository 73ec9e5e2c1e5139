// Package k8s owns Kubernetes as an input to the agent: client-go informers
// on networking.k8s.io/v1 NetworkPolicy and the cilium.io/v2
// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy custom resources,
// handed to the policy engine exactly as the policy package parses those
// documents. Kubernetes is an input, not the store: the kvstore stays the
// cluster's etcd.
package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/filament-net/filament/agent/policy"
)

// Policies is the policy engine as the watchers feed it.
type Policies interface {
	Import(ps []policy.Policy) (uint64, error)
	Delete(key string) (uint64, error)
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
	synced   []cache.InformerSynced

	podIndexer, nsIndexer cache.Indexer
	podSynced, nsSynced   cache.InformerSynced
}

// Start connects with the kubeconfig at path and starts the informers
// (policies; the pods of node and the namespaces); it returns at once.
func Start(ctx context.Context, kubeconfig, node string, p Policies, pods Pods) (*Watcher, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	w := &Watcher{policies: p, pods: pods}
	typed := informers.NewSharedInformerFactory(cs, 10*time.Minute)
	np := typed.Networking().V1().NetworkPolicies().Informer()
	np.AddEventHandler(w.handler(networkPolicyDoc))
	w.synced = append(w.synced, np.HasSynced)
	nsInf := typed.Core().V1().Namespaces().Informer()
	w.nsIndexer, w.nsSynced = nsInf.GetIndexer(), nsInf.HasSynced
	nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: func(oldObj, obj any) {
		o, n := oldObj.(*corev1.Namespace), obj.(*corev1.Namespace)
		if !maps.Equal(o.Labels, n.Labels) {
			w.relabelNamespace(ctx, n.Name)
		}
	}})
	podFactory := informers.NewSharedInformerFactoryWithOptions(cs, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + node }))
	podInf := podFactory.Core().V1().Pods().Informer()
	w.podIndexer, w.podSynced = podInf.GetIndexer(), podInf.HasSynced
	podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: func(oldObj, obj any) {
		o, n := oldObj.(*corev1.Pod), obj.(*corev1.Pod)
		if !maps.Equal(o.Labels, n.Labels) || o.Spec.ServiceAccountName != n.Spec.ServiceAccountName {
			w.relabel(ctx, n)
		}
	}})
	dynf := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 10*time.Minute)
	for gvr, kind := range map[schema.GroupVersionResource]string{CNP: policy.KindCiliumNetworkPolicy, CCNP: policy.KindCiliumClusterwideNetworkPolicy} {
		inf := dynf.ForResource(gvr).Informer()
		inf.AddEventHandler(w.handler(ciliumDoc(kind)))
		w.synced = append(w.synced, inf.HasSynced)
	}
	typed.Start(ctx.Done())
	podFactory.Start(ctx.Done())
	dynf.Start(ctx.Done())
	slog.Info("following Kubernetes policies and this node's pods", "kubeconfig", kubeconfig, "node", node)
	return w, nil
}

// PodLabels returns the labels of pod namespace/name as endpoint labels
// (the pod's, its namespace's as io.cilium.k8s.namespace.labels.<k>, its
// service account), waiting up to 5 s for the pod to reach the cache.
func (w *Watcher) PodLabels(ctx context.Context, namespace, name string) ([]string, bool) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if w.podSynced() {
			if obj, ok, _ := w.podIndexer.GetByKey(namespace + "/" + name); ok {
				return w.labelsOf(obj.(*corev1.Pod)), true
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			slog.Warn("pod not in the Kubernetes cache; using the CNI labels", "pod", namespace+"/"+name)
			return nil, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *Watcher) labelsOf(p *corev1.Pod) []string {
	var out []string
	for k, v := range p.Labels {
		out = append(out, "k8s:"+k+"="+v)
	}
	if obj, ok, _ := w.nsIndexer.GetByKey(p.Namespace); ok {
		for k, v := range obj.(*corev1.Namespace).Labels {
			out = append(out, "k8s:io.cilium.k8s.namespace.labels."+k+"="+v)
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

func (w *Watcher) relabel(ctx context.Context, p *corev1.Pod) {
	if w.pods == nil {
		return
	}
	if n, err := w.pods.SetPodLabels(ctx, p.Namespace, p.Name, w.labelsOf(p)); err != nil {
		slog.Warn("relabelling a pod's endpoints", "pod", p.Namespace+"/"+p.Name, "err", err)
	} else if n > 0 {
		slog.Info("pod labels changed: new identity", "pod", p.Namespace+"/"+p.Name, "endpoints", n)
	}
}

func (w *Watcher) relabelNamespace(ctx context.Context, namespace string) {
	for _, obj := range w.podIndexer.List() {
		if p := obj.(*corev1.Pod); p.Namespace == namespace {
			w.relabel(ctx, p)
		}
	}
}

// doc turns an object into the policy document the policy package parses.
type doc func(obj any) ([]byte, error)

func (w *Watcher) handler(toDoc doc) cache.ResourceEventHandlerFuncs {
	apply := func(obj any) {
		b, err := toDoc(obj)
		if err != nil {
			slog.Warn("kubernetes policy skipped", "err", err)
			return
		}
		ps, err := policy.Parse(b)
		if err != nil {
			slog.Warn("kubernetes policy rejected", "err", err)
			return
		}
		if _, err := w.policies.Import(ps); err != nil {
			slog.Warn("kubernetes policy not imported", "err", err)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    apply,
		UpdateFunc: func(_, obj any) { apply(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			b, err := toDoc(obj)
			if err != nil {
				return
			}
			ps, err := policy.Parse(b)
			if err != nil {
				return
			}
			for _, p := range ps {
				w.policies.Delete(p.Key())
			}
		},
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
		"apiVersion": "networking.k8s.io/v1", "kind": policy.KindNetworkPolicy,
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
