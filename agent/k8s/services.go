package k8s

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/filament-net/filament/agent/service"
)

// Services is the service manager as the service watcher feeds it. The
// services stored from Service objects carry service.SourceAnnotation
// (service.SourceKubernetes); DeleteFrom removes a stored service only if
// it has that source (and, rev not 0, is still at that revision; uid not
// "", is that object's or carries no UID).
type Services interface {
	Upsert(ctx context.Context, s *service.Service) error
	DeleteFrom(ctx context.Context, namespace, name, source string, rev int64, uid string) (bool, error)
	Stored(ctx context.Context) ([]service.Stored, error)
}

// byService indexes EndpointSlices by their service's namespace/name.
const byService = "service"

// followServices follows Services and EndpointSlices into the service
// manager and, once both have their first list, removes the stored
// services whose object is gone (deleted while every agent was down).
func (w *Watcher) followServices(ctx context.Context, cs kubernetes.Interface, typed informers.SharedInformerFactory) {
	svcInf := typed.Core().V1().Services().Informer()
	sliceInf := typed.Discovery().V1().EndpointSlices().Informer()
	if err := sliceInf.AddIndexers(cache.Indexers{byService: sliceService}); err != nil {
		panic(err) // only before the informer starts, as here
	}
	w.svcIndexer, w.sliceIndexer = svcInf.GetIndexer(), sliceInf.GetIndexer()
	w.follow("services", svcInf)
	w.follow("endpointslices", sliceInf)
	svcInf.AddEventHandler(w.serviceHandler(ctx))
	onSlice := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if es, ok := obj.(*discoveryv1.EndpointSlice); ok {
			w.syncService(ctx, es.Namespace, es.Labels[discoveryv1.LabelServiceName])
		}
	}
	sliceInf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: onSlice, UpdateFunc: func(_, o any) { onSlice(o) }, DeleteFunc: onSlice})
	exists := func(ctx context.Context, namespace, name string) (bool, error) {
		s, err := cs.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		return loadBalanced(s), nil
	}
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), svcInf.HasSynced, sliceInf.HasSynced) {
			w.pruneServices(ctx, exists)
		}
	}()
}

// serviceHandler stores a Service's service and removes it when the
// Service is deleted or stops being load-balanced.
func (w *Watcher) serviceHandler(ctx context.Context) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if s, ok := obj.(*corev1.Service); ok {
				w.syncService(ctx, s.Namespace, s.Name)
			}
		},
		UpdateFunc: func(old, obj any) {
			o, _ := old.(*corev1.Service)
			s, ok := obj.(*corev1.Service)
			if !ok {
				return
			}
			if o != nil && loadBalanced(o) && !loadBalanced(s) {
				// Made headless or ExternalName: nothing to load-balance
				// any more (it stayed stored before).
				// By name: a Service made again headless under its name (a
				// relist after a missed delete) is still the one to remove.
				w.removeAndRetry(ctx, s.Namespace, s.Name, "", "its Service is no longer load-balanced")
				return
			}
			w.syncService(ctx, s.Namespace, s.Name)
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if s, ok := obj.(*corev1.Service); ok {
				w.removeAndRetry(ctx, s.Namespace, s.Name, string(s.UID), "its Service is deleted")
			}
		},
	}
}

func sliceService(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || es.Labels[discoveryv1.LabelServiceName] == "" {
		return nil, nil
	}
	return []string{es.Namespace + "/" + es.Labels[discoveryv1.LabelServiceName]}, nil
}

// loadBalanced: the Service has a ClusterIP (not headless, not
// ExternalName).
func loadBalanced(s *corev1.Service) bool {
	return s.Spec.ClusterIP != "" && s.Spec.ClusterIP != corev1.ClusterIPNone
}

// removeService removes the stored service namespace/name if a Service
// object made it (at revision rev, when not 0; the object with uid, when
// not "", so a lagging delete event of an object made again since leaves
// the new one's); the error is the kvstore's (logged here).
func (w *Watcher) removeService(ctx context.Context, namespace, name string, rev int64, uid, why string) error {
	w.storeMu.Lock()
	done, err := w.removeServiceLocked(ctx, namespace, name, rev, uid, why)
	w.storeMu.Unlock()
	if done {
		w.retryConflicted(ctx)
	}
	return err
}

// removeServiceLocked is removeService with storeMu held, but for the retry of
// the conflicted Services, which the caller runs (after storeMu) if done.
func (w *Watcher) removeServiceLocked(ctx context.Context, namespace, name string, rev int64, uid, why string) (bool, error) {
	done, err := w.services.DeleteFrom(ctx, namespace, name, service.SourceKubernetes, rev, uid)
	switch {
	case err != nil:
		slog.Warn("kubernetes service not removed", "service", namespace+"/"+name, "why", why, "err", err)
	case done:
		slog.Info("kubernetes service removed: "+why, "service", namespace+"/"+name)
	}
	return done, err
}

// removeAndRetry is removeService for an event (rev 0, the object uid, or
// "" for by name): a removal the kvstore failed is tried again, backing
// off from pruneRetry to 30 s, until it is done, or until a load-balanced
// Service of the name is back (which is then stored, over what the failed
// removals left, and tried again while that store fails). Each pending
// name keeps every object whose removal failed (a Service made again and
// deleted again before the retry: each is removed), in one timer per
// name; the retry checks the informer and removes under storeMu, so a
// Service made load-balanced again is stored, not removed after its
// store. Before 2026-12-04 the failure was logged only, and the service
// stayed stored, load-balanced on every node, until an agent's next
// start.
func (w *Watcher) removeAndRetry(ctx context.Context, namespace, name, uid, why string) {
	if w.removeService(ctx, namespace, name, 0, uid, why) == nil || ctx.Err() != nil {
		return
	}
	key := namespace + "/" + name
	w.conflictMu.Lock()
	defer w.conflictMu.Unlock()
	pending := w.removing[key] != nil
	if w.removing == nil {
		w.removing = map[string]map[string]bool{}
	}
	if !pending {
		w.removing[key] = map[string]bool{}
	}
	w.removing[key][uid] = true
	if !pending {
		w.retryRemoval(ctx, namespace, name, why, pruneRetry)
	}
}

// retryRemoval tries the pending removals of namespace/name again after
// wait (see removeAndRetry); w.removing[namespace/name] stays set while a
// timer is pending or running.
func (w *Watcher) retryRemoval(ctx context.Context, namespace, name, why string, wait time.Duration) {
	key := namespace + "/" + name
	time.AfterFunc(wait, func() {
		if ctx.Err() != nil {
			return
		}
		w.conflictMu.Lock()
		uids := slices.Sorted(maps.Keys(w.removing[key]))
		w.conflictMu.Unlock()
		var removed, failed bool
		var settled []string // done, or not this object's to remove
		w.storeMu.Lock()
		if obj, ok, _ := w.svcIndexer.GetByKey(key); ok && loadBalanced(obj.(*corev1.Service)) {
			err := w.syncLocked(ctx, namespace, name)
			if failed = err != nil && !errors.Is(err, service.ErrConflict) && !errors.Is(err, service.ErrBusy); !failed {
				settled = uids
			}
		} else {
			for _, uid := range uids {
				done, err := w.removeServiceLocked(ctx, namespace, name, 0, uid, why)
				removed = removed || done
				if err != nil {
					failed = true
				} else {
					settled = append(settled, uid)
				}
			}
		}
		w.storeMu.Unlock()
		if removed {
			w.retryConflicted(ctx)
		}
		w.conflictMu.Lock()
		for _, uid := range settled {
			delete(w.removing[key], uid)
		}
		again := len(w.removing[key]) > 0
		if !again {
			delete(w.removing, key)
		}
		w.conflictMu.Unlock()
		if again {
			next := min(wait*2, 30*time.Second)
			if !failed { // only removals failed after this one read the set
				next = pruneRetry
			}
			w.retryRemoval(ctx, namespace, name, why, next)
		}
	})
}

// setConflicted marks (or unmarks) the Service namespace/name as refused
// for a frontend another stored service holds.
func (w *Watcher) setConflicted(key string, refused bool) {
	w.conflictMu.Lock()
	defer w.conflictMu.Unlock()
	if !refused {
		delete(w.conflicted, key)
		return
	}
	if w.conflicted == nil {
		w.conflicted = map[string]bool{}
	}
	w.conflicted[key] = true
}

// retryConflicted stores again the Services refused for a frontend
// another stored service held: a removal may have freed it. Before, one
// that took the ClusterIP of a Service deleted while every agent was down
// was refused until its next event (the informer's resync: 10 minutes),
// since the prune came after its first store.
func (w *Watcher) retryConflicted(ctx context.Context) {
	w.conflictMu.Lock()
	keys := slices.Sorted(maps.Keys(w.conflicted))
	w.conflictMu.Unlock()
	for _, key := range keys {
		ns, name, _ := strings.Cut(key, "/")
		w.syncService(ctx, ns, name)
	}
}

// pruneServices removes the stored services that a Service object made
// and that no load-balanced Service object gives any more: deleted while
// every agent of the cluster was down, they had no delete event, and
// other clusters kept load-balancing to their backends (until
// 2026-12-03). The cache may be behind a Service made just now (another
// agent may have stored it already), so a service the cache lacks is
// removed only if the API server itself has no such Service (exists),
// and only at the revision listed before that question: one stored again
// since stays.
func (w *Watcher) pruneServices(ctx context.Context, exists func(ctx context.Context, namespace, name string) (bool, error)) {
	var stored []service.Stored
	for wait := pruneRetry; ; wait = min(wait*2, 30*time.Second) {
		var err error
		if stored, err = w.services.Stored(ctx); err == nil {
			break
		}
		slog.Warn("kubernetes services: stored services not listed, trying again", "in", wait, "err", err)
		if !sleepCtx(ctx, wait) {
			return
		}
	}
	// A check or removal that failed (API server or kvstore unreachable)
	// is tried again, backing off, until it is done: before 2026-12-04 it
	// waited for the agent's next start.
	for wait := pruneRetry; len(stored) > 0; wait = min(wait*2, 30*time.Second) {
		var failed []service.Stored
		for _, st := range stored {
			if ctx.Err() != nil {
				return
			}
			if !w.pruneOne(ctx, st, exists) {
				failed = append(failed, st)
			}
		}
		if stored = failed; len(stored) > 0 {
			slog.Warn("kubernetes services: some stored services not checked for removal, trying again", "services", len(stored), "in", wait)
			if !sleepCtx(ctx, wait) {
				return
			}
		}
	}
}

// pruneRetry is the first wait before a failed step of the prune is tried
// again (doubling to 30 s).
var pruneRetry = time.Second

// pruneOne removes st if a Service object made it and no load-balanced
// Service gives it any more; it reports false if a call failed.
func (w *Watcher) pruneOne(ctx context.Context, st service.Stored, exists func(ctx context.Context, namespace, name string) (bool, error)) bool {
	if st.Source != service.SourceKubernetes {
		return true
	}
	key := st.Namespace + "/" + st.Name
	if obj, ok, _ := w.svcIndexer.GetByKey(key); ok && loadBalanced(obj.(*corev1.Service)) {
		return true
	}
	lb, err := exists(ctx, st.Namespace, st.Name)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			slog.Warn("kubernetes service not checked for removal", "service", key, "err", err)
		}
		return false
	}
	if lb {
		return true
	}
	return w.removeService(ctx, st.Namespace, st.Name, st.Revision, "", "its Service is gone") == nil
}

// sleepCtx waits d or until ctx ends; it reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// syncService converts a Service and its EndpointSlices into the service
// model (frontends, backends with state and node, the mesh annotations)
// and stores it; services without a ClusterIP (headless, ExternalName)
// are not load-balanced.
func (w *Watcher) syncService(ctx context.Context, namespace, name string) {
	if name == "" {
		return
	}
	w.storeMu.Lock()
	defer w.storeMu.Unlock()
	w.syncLocked(ctx, namespace, name)
}

// syncLocked is syncService with storeMu held; the error is the store's
// (logged here; nil when there is nothing to store).
func (w *Watcher) syncLocked(ctx context.Context, namespace, name string) error {
	key := namespace + "/" + name
	obj, ok, _ := w.svcIndexer.GetByKey(key)
	if !ok || !loadBalanced(obj.(*corev1.Service)) {
		w.setConflicted(key, false)
		return nil
	}
	ks := obj.(*corev1.Service)
	// The object's annotations, marked; the service keeps only those the
	// model reads (service.KubernetesForm, below): the rest is a tenant's
	// bytes, whose every change would be a new revision of the whole value
	// that the kvstore keeps until compaction. Until 2026-12-07 all were
	// copied (until that morning whatever their size, later up to 16 KiB),
	// so flipping one in a loop filled the cluster's etcd to its quota
	// (TestServiceKeepsOnlyHonouredAnnotations). A value an earlier
	// version stored with them all means the same to this version (the
	// manager's put finds it stored).
	ann := maps.Clone(ks.Annotations)
	if ann == nil {
		ann = map[string]string{}
	}
	ann[service.SourceAnnotation] = service.SourceKubernetes
	ann[service.UIDAnnotation] = string(ks.UID)
	s := &service.Service{APIVersion: "filament.io/v1", Kind: "Service",
		Metadata: service.Metadata{Name: ks.Name, Namespace: ks.Namespace, Annotations: ann}}
	s.Spec.ClusterIP = ks.Spec.ClusterIP
	s.Spec.Type = "ClusterIP"
	if ks.Spec.Type == corev1.ServiceTypeNodePort || ks.Spec.Type == corev1.ServiceTypeLoadBalancer {
		s.Spec.Type = "NodePort"
	}
	if ks.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		s.Spec.SessionAffinity = "ClientIP"
		if c := ks.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			s.Spec.SessionAffinityConfig = &service.SessionAffinityConfig{ClientIP: &service.ClientIPConfig{TimeoutSeconds: c.ClientIP.TimeoutSeconds}}
		}
	}
	for _, p := range ks.Spec.Ports {
		sp := service.Port{Name: p.Name, Protocol: string(p.Protocol), Port: uint16(p.Port), NodePort: uint16(p.NodePort)}
		if p.TargetPort.IntValue() > 0 {
			sp.TargetPort = uint16(p.TargetPort.IntValue())
		}
		s.Spec.Ports = append(s.Spec.Ports, sp)
	}
	ess, _ := w.sliceIndexer.ByIndex(byService, namespace+"/"+name)
	w.addBackends(key, s, ess)
	// The form this version stores: only the annotations read, and the
	// ports every backend shares once (until 2026-12-07 each backend
	// carried its slice's whole port map: 4,000 ports and 16 pods made a
	// 1 MB value, TestStoredServiceValueBounded).
	s.KubernetesForm()
	slices.SortFunc(s.Backends, func(a, b service.Backend) int { return strings.Compare(a.IP, b.IP) })
	err := w.services.Upsert(ctx, s)
	w.setConflicted(key, errors.Is(err, service.ErrConflict))
	if err != nil {
		slog.Warn("kubernetes service not stored", "service", key, "err", err)
	}
	if errors.Is(err, service.ErrBusy) {
		w.retryBusy(ctx, namespace, name)
	}
	return err
}

// addBackends adds to s (of Service key) the backends of its
// EndpointSlices ess: each address once, with its endpoint's state and
// node, and its slice's ports when the service has several (folded
// after, Service.FoldPorts).
func (w *Watcher) addBackends(key string, s *service.Service, ess []any) {
	seen := map[string]bool{}
	for _, o := range ess {
		es := o.(*discoveryv1.EndpointSlice)
		if es.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		ports := map[string]uint16{}
		for _, p := range es.Ports {
			if p.Port != nil && p.Name != nil && *p.Name != "" {
				ports[*p.Name] = uint16(*p.Port)
			}
		}
		for _, ep := range es.Endpoints {
			state := service.StateActive
			if c := ep.Conditions; c.Terminating != nil && *c.Terminating {
				state = service.StateTerminating
			} else if c.Ready != nil && !*c.Ready {
				state = service.StateMaintenance
			}
			for _, a := range ep.Addresses {
				if seen[a] {
					continue
				}
				seen[a] = true
				if why := w.foreignPod(s.Metadata.Namespace, a); why != "" {
					slog.Warn("an EndpointSlice's address left out", "service", key, "slice", es.Name, "address", a, "reason", why)
					continue
				}
				b := service.Backend{IP: a, State: state}
				if ep.NodeName != nil {
					b.Node = *ep.NodeName
				}
				if len(ports) > 0 && len(s.Spec.Ports) > 1 {
					b.Ports = ports
				} else if len(es.Ports) == 1 && es.Ports[0].Port != nil && len(s.Spec.Ports) == 1 {
					s.Spec.Ports[0].TargetPort = uint16(*es.Ports[0].Port)
				}
				s.Backends = append(s.Backends, b)
			}
		}
	}
}

// foreignPod says why address a of an EndpointSlice of a Service in
// namespace is not made a backend ("" if it is): it is a pod of another
// namespace. Slices are written by hand too (Kubernetes's
// CVE-2021-25740), and whatever the slice's targetRef says, the address
// would make that namespace's Service, a NodePort from any node, a way
// to the other namespace's pod. Addresses no pod of the cluster holds (a
// node's, for host-network pods; one outside the cluster) stay; a remote
// cluster's pod counts as its namespace's, and one of a namespace not
// known here (podNamespace's "") as another namespace's.
func (w *Watcher) foreignPod(namespace, a string) string {
	if w.podNamespace == nil {
		return ""
	}
	ip, err := netip.ParseAddr(a)
	if err != nil {
		return ""
	}
	ns, ok := w.podNamespace(ip)
	switch {
	case !ok || ns == namespace:
		return ""
	case ns == "":
		return "a remote cluster's pod of a namespace not known here"
	}
	return "a pod of namespace " + ns
}

// retryBusy stores the Service namespace/name again after busyRetry and a
// random part of it (other services kept changing under its store:
// rather than at its next event), with the Service as it is then; one
// pending retry per Service.
func (w *Watcher) retryBusy(ctx context.Context, namespace, name string) {
	key := namespace + "/" + name
	w.conflictMu.Lock()
	defer w.conflictMu.Unlock()
	if w.busy[key] {
		return
	}
	if w.busy == nil {
		w.busy = map[string]bool{}
	}
	w.busy[key] = true
	time.AfterFunc(busyRetry+rand.N(busyRetry), func() {
		w.conflictMu.Lock()
		delete(w.busy, key)
		w.conflictMu.Unlock()
		if ctx.Err() == nil {
			w.syncService(ctx, namespace, name)
		}
	})
}

// busyRetry is about how long a Service refused with service.ErrBusy
// waits before it is stored again.
var busyRetry = time.Second
