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
	"time"

	networkingv1 "k8s.io/api/networking/v1"
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

// Watcher follows the cluster's policies.
type Watcher struct {
	policies Policies
	synced   []cache.InformerSynced
}

// Start connects with the kubeconfig at path and starts the informers; it
// returns once their caches are filled (or ctx ends).
func Start(ctx context.Context, kubeconfig string, p Policies) (*Watcher, error) {
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
	w := &Watcher{policies: p}
	typed := informers.NewSharedInformerFactory(cs, 10*time.Minute)
	np := typed.Networking().V1().NetworkPolicies().Informer()
	np.AddEventHandler(w.handler(networkPolicyDoc))
	w.synced = append(w.synced, np.HasSynced)
	dynf := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 10*time.Minute)
	for gvr, kind := range map[schema.GroupVersionResource]string{CNP: policy.KindCiliumNetworkPolicy, CCNP: policy.KindCiliumClusterwideNetworkPolicy} {
		inf := dynf.ForResource(gvr).Informer()
		inf.AddEventHandler(w.handler(ciliumDoc(kind)))
		w.synced = append(w.synced, inf.HasSynced)
	}
	typed.Start(ctx.Done())
	dynf.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), w.synced...) {
		return nil, fmt.Errorf("kubernetes: informer caches did not sync: %w", ctx.Err())
	}
	slog.Info("following Kubernetes policies", "kubeconfig", kubeconfig)
	return w, nil
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
