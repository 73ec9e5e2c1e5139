package k8s

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/filament-net/filament/agent/service"
)

// storedServices is a service store as the kvstore keeps it: each service
// with the revision of its last write.
type storedServices struct {
	svcs map[string]*service.Service
	revs map[string]int64
	rev  int64
	// failDeletes fails that many DeleteFrom calls of a key.
	failDeletes map[string]int
	// busy answers that many Upserts of a key with service.ErrBusy.
	busy map[string]int
	// failUpserts fails that many Upserts of a key.
	failUpserts map[string]int
	upserts     int // Upsert calls
	mu          sync.Mutex
}

func (f *storedServices) Upsert(_ context.Context, s *service.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.upserts++
	if k := s.Metadata.Namespace + "/" + s.Metadata.Name; f.busy[k] > 0 {
		f.busy[k]--
		return fmt.Errorf("%w: again", service.ErrBusy)
	}
	if k := s.Metadata.Namespace + "/" + s.Metadata.Name; f.failUpserts[k] > 0 {
		f.failUpserts[k]--
		return errors.New("kvstore: unavailable")
	}
	if f.svcs == nil {
		f.svcs, f.revs = map[string]*service.Service{}, map[string]int64{}
	}
	key := s.Metadata.Namespace + "/" + s.Metadata.Name
	for k, o := range f.svcs {
		if k != key && o.Spec.ClusterIP != "" && o.Spec.ClusterIP == s.Spec.ClusterIP {
			return fmt.Errorf("%w: %s belongs to service %s", service.ErrConflict, o.Spec.ClusterIP, k)
		}
	}
	f.rev++
	f.svcs[key], f.revs[key] = s, f.rev
	return nil
}

func (f *storedServices) DeleteFrom(_ context.Context, namespace, name, source string, rev int64, uid string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := namespace + "/" + name
	if f.failDeletes[key] > 0 {
		f.failDeletes[key]--
		return false, errors.New("kvstore: unavailable")
	}
	s, ok := f.svcs[key]
	if !ok || s.Metadata.Annotations[service.SourceAnnotation] != source || (rev != 0 && f.revs[key] != rev) {
		return false, nil
	}
	if su := s.Metadata.Annotations[service.UIDAnnotation]; uid != "" && su != "" && su != uid {
		return false, nil
	}
	delete(f.svcs, key)
	return true, nil
}

func (f *storedServices) Stored(context.Context) ([]service.Stored, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []service.Stored
	for key, s := range f.svcs {
		out = append(out, service.Stored{Namespace: s.Metadata.Namespace, Name: s.Metadata.Name,
			Source: s.Metadata.Annotations[service.SourceAnnotation], Revision: f.revs[key]})
	}
	return out, nil
}

func (f *storedServices) keys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.svcs))
}

func serviceWatcher(f *storedServices) *Watcher {
	return &Watcher{services: f, svcIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		sliceIndexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byService: sliceService})}
}

func clusterIPService(name, ip string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Annotations: map[string]string{"team": "a"}},
		Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
}

// A Service's service is stored with the Kubernetes source mark (and of
// its own annotations only those the service model reads: since
// 2026-12-07 not its small ones either), and the informer's object keeps
// its own annotations; its backends come from its
// EndpointSlices only.
func TestServiceStoredWithItsSource(t *testing.T) {
	f := &storedServices{}
	w := serviceWatcher(f)
	ks := clusterIPService("web", "10.96.0.10")
	w.svcIndexer.Add(ks)
	port, name := int32(8080), "http"
	for i, svc := range []string{"web", "other"} {
		w.sliceIndexer.Add(&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: svc + "-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc}}, AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{[]string{"10.0.0.5", "10.0.0.6"}[i]}}},
			Ports:     []discoveryv1.EndpointPort{{Name: &name, Port: &port}}})
	}
	w.serviceHandler(context.Background()).OnAdd(ks, false)
	s := f.svcs["default/web"]
	if s == nil {
		t.Fatalf("stored: %v", f.keys())
	}
	if _, team := s.Metadata.Annotations["team"]; s.Metadata.Annotations[service.SourceAnnotation] != service.SourceKubernetes || team {
		t.Fatalf("stored annotations %v", s.Metadata.Annotations)
	}
	if _, ok := ks.Annotations[service.SourceAnnotation]; ok {
		t.Fatal("the informer's Service object got the mark")
	}
	if len(s.Backends) != 1 || s.Backends[0].IP != "10.0.0.5" || s.Spec.Ports[0].TargetPort != 8080 {
		t.Fatalf("backends %+v ports %+v", s.Backends, s.Spec.Ports)
	}
}

// A Service changed to ExternalName is removed (it stayed stored and
// load-balanced before); its deletion removes it too, but neither
// removes a service stored with the CLI under the same name (one that no
// Service event has replaced yet).
func TestServiceNoLongerLoadBalancedIsRemoved(t *testing.T) {
	f := &storedServices{}
	w := serviceWatcher(f)
	ctx := context.Background()
	h := w.serviceHandler(ctx)
	web := clusterIPService("web", "10.96.0.10")
	w.svcIndexer.Add(web)
	h.OnAdd(web, false)
	ext := web.DeepCopy()
	ext.Spec.ClusterIP, ext.Spec.Type, ext.Spec.ExternalName = "", corev1.ServiceTypeExternalName, "example.com"
	w.svcIndexer.Update(ext)
	h.OnUpdate(web, ext)
	if len(f.svcs) != 0 {
		t.Fatalf("a Service made ExternalName stays stored: %v", f.keys())
	}

	f.Upsert(ctx, &service.Service{Metadata: service.Metadata{Namespace: "default", Name: "cli"}})
	cli := clusterIPService("cli", "10.96.0.11")
	h.OnDelete(cli)
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "default/cli", Obj: cli})
	if f.svcs["default/cli"] == nil {
		t.Fatal("a Service's deletion removed the service stored with the CLI under its name")
	}
	db := clusterIPService("db", "10.96.0.12")
	w.svcIndexer.Add(db)
	h.OnAdd(db, false)
	w.svcIndexer.Delete(db)
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "default/db", Obj: db})
	if f.svcs["default/db"] != nil {
		t.Fatal("a deleted Service (final state unknown) stays stored")
	}
}

// Once the caches have their first list, the stored services of Service
// objects that are gone are removed: deleted while every agent was down,
// no delete event came for them. One the cache lacks but the API server
// has (made just now; another agent stored it) stays, one stored again
// after the question stays, and so do the CLI's.
func TestServiceGoneWhileDownIsPruned(t *testing.T) {
	f := &storedServices{}
	w := serviceWatcher(f)
	ctx := context.Background()
	for _, n := range []string{"kept", "gone", "late", "restored", "headless"} {
		w.services.Upsert(ctx, &service.Service{Metadata: service.Metadata{Namespace: "default", Name: n,
			Annotations: map[string]string{service.SourceAnnotation: service.SourceKubernetes}}})
	}
	w.services.Upsert(ctx, &service.Service{Metadata: service.Metadata{Namespace: "default", Name: "cli"}})
	w.svcIndexer.Add(clusterIPService("kept", "10.96.0.10"))
	w.svcIndexer.Add(clusterIPService("headless", corev1.ClusterIPNone))
	var asked []string
	exists := func(_ context.Context, namespace, name string) (bool, error) {
		asked = append(asked, namespace+"/"+name)
		switch name {
		case "late":
			return true, nil
		case "restored":
			// Another agent stores it again while this one asks.
			f.Upsert(ctx, &service.Service{Metadata: service.Metadata{Namespace: "default", Name: "restored",
				Annotations: map[string]string{service.SourceAnnotation: service.SourceKubernetes}}})
		}
		return false, nil
	}
	w.pruneServices(ctx, exists)
	if got, want := f.keys(), []string{"default/cli", "default/kept", "default/late", "default/restored"}; !slices.Equal(got, want) {
		t.Fatalf("stored after the prune: %v, want %v", got, want)
	}
	slices.Sort(asked)
	if want := []string{"default/gone", "default/headless", "default/late", "default/restored"}; !slices.Equal(asked, want) {
		t.Fatalf("asked the API server about %v, want %v", asked, want)
	}
}

// A Service that took the ClusterIP of one deleted while every agent was
// down is refused while the stale service holds it, and stored once the
// prune removes that (before, it waited for its next event: the
// informer's resync, 10 minutes).
func TestServiceRefusedForAStaleFrontendIsStoredAfterThePrune(t *testing.T) {
	f := &storedServices{}
	w := serviceWatcher(f)
	ctx := context.Background()
	stale := &service.Service{Metadata: service.Metadata{Namespace: "default", Name: "gone",
		Annotations: map[string]string{service.SourceAnnotation: service.SourceKubernetes}}}
	stale.Spec.ClusterIP = "10.96.0.10"
	if err := f.Upsert(ctx, stale); err != nil {
		t.Fatal(err)
	}
	web := clusterIPService("web", "10.96.0.10")
	w.svcIndexer.Add(web)
	w.serviceHandler(ctx).OnAdd(web, true)
	if f.svcs["default/web"] != nil {
		t.Fatal("the fake stored two services on one ClusterIP")
	}
	w.pruneServices(ctx, func(context.Context, string, string) (bool, error) { return false, nil })
	if want := []string{"default/web"}; !slices.Equal(f.keys(), want) {
		t.Fatalf("stored after the prune: %v, want %v", f.keys(), want)
	}
	if len(w.conflicted) != 0 {
		t.Fatalf("still marked refused: %v", w.conflicted)
	}
}

// A prune step that fails (the API server's answer, the kvstore's
// delete) is tried again until it is done: before, it waited for the
// agent's next start.
func TestServicePruneRetriesFailedSteps(t *testing.T) {
	defer func(d time.Duration) { pruneRetry = d }(pruneRetry)
	pruneRetry = time.Millisecond
	f := &storedServices{failDeletes: map[string]int{"default/kv-down": 2}}
	w := serviceWatcher(f)
	ctx := context.Background()
	for _, n := range []string{"api-down", "kv-down", "gone"} {
		f.Upsert(ctx, &service.Service{Metadata: service.Metadata{Namespace: "default", Name: n,
			Annotations: map[string]string{service.SourceAnnotation: service.SourceKubernetes}}})
	}
	apiFails := 3
	exists := func(_ context.Context, _, name string) (bool, error) {
		if name == "api-down" && apiFails > 0 {
			apiFails--
			return false, errors.New("connection refused")
		}
		return false, nil
	}
	w.pruneServices(ctx, exists)
	if len(f.svcs) != 0 || apiFails != 0 || f.failDeletes["default/kv-down"] != 0 {
		t.Fatalf("stored after the prune: %v (API failures left %d, kvstore failures left %v)", f.keys(), apiFails, f.failDeletes)
	}
}

// A Service refused because other services kept changing under its store
// (service.ErrBusy) is stored again shortly, not only at its next event,
// by one pending retry however many of its stores were refused.
func TestServiceRefusedAsBusyIsStoredAgain(t *testing.T) {
	defer func(d time.Duration) { busyRetry = d }(busyRetry)
	busyRetry = 5 * time.Millisecond
	f := &storedServices{busy: map[string]int{"default/web": 3}}
	w := serviceWatcher(f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ks := clusterIPService("web", "10.96.0.10")
	w.svcIndexer.Add(ks)
	h := w.serviceHandler(ctx)
	for range 3 {
		h.OnAdd(ks, false)
	}
	for deadline := time.Now().Add(10 * time.Second); !slices.Equal(f.keys(), []string{"default/web"}); {
		if time.Now().After(deadline) {
			t.Fatalf("stored: %v, want default/web once the store is no longer busy", f.keys())
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * busyRetry) // a second retry would have run by now
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.upserts != 4 {
		t.Fatalf("%d stores, want 4: three refused and one retry", f.upserts)
	}
}

// A Service deleted and made again under its name, the new one already
// stored (by another agent), is not removed by a lagging delete event of
// the old object: the stored service's UID is the new object's. Before,
// any delete event of the name removed it until its next store.
func TestLaggingDeleteLeavesServiceMadeAgain(t *testing.T) {
	f := &storedServices{}
	w := serviceWatcher(f)
	ctx := context.Background()
	h := w.serviceHandler(ctx)
	old := clusterIPService("web", "10.96.0.10")
	old.UID = "first"
	w.svcIndexer.Add(old)
	h.OnAdd(old, false)
	again := clusterIPService("web", "10.96.0.10")
	again.UID = "second"
	w.svcIndexer.Update(again)
	h.OnUpdate(old, again) // another agent's store, as far as the kvstore is concerned
	h.OnDelete(old)        // this agent's lagging delete event of the first object
	if s := f.svcs["default/web"]; s == nil || s.Metadata.Annotations[service.UIDAnnotation] != "second" {
		t.Fatalf("stored after the old object's delete event: %v, want the new object's service", f.keys())
	}
	h.OnDelete(again)
	if len(f.keys()) != 0 {
		t.Fatalf("stored after the new object's delete event: %v", f.keys())
	}
}

// A Service's delete that the kvstore failed is tried again until it is
// done; one made again under its name meanwhile is stored, not removed.
// Before, the failure was logged and the service stayed stored (and
// load-balanced on every node) until an agent's next start.
func TestServiceFailedRemovalIsTriedAgain(t *testing.T) {
	defer func(d time.Duration) { pruneRetry = d }(pruneRetry)
	pruneRetry = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := &storedServices{failDeletes: map[string]int{"default/web": 3, "default/api": 2}}
	w := serviceWatcher(f)
	h := w.serviceHandler(ctx)
	web, api := clusterIPService("web", "10.96.0.10"), clusterIPService("api", "10.96.0.11")
	web.UID, api.UID = "web-1", "api-1"
	for _, ks := range []*corev1.Service{web, api} {
		w.svcIndexer.Add(ks)
		h.OnAdd(ks, false)
	}
	// web is deleted; api is made headless, then made again.
	w.svcIndexer.Delete(web)
	h.OnDelete(web)
	headless := api.DeepCopy()
	headless.Spec.ClusterIP = corev1.ClusterIPNone
	w.svcIndexer.Update(headless)
	h.OnUpdate(api, headless)
	for deadline := time.Now().Add(10 * time.Second); len(f.keys()) != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("stored: %v, want none once the kvstore takes the deletes (failures left %v)", f.keys(), f.failDeletes)
		}
		time.Sleep(time.Millisecond)
	}
	// api's removal (made headless) fails, and api is load-balanced again
	// before the retry: the retry stores it rather than removing it by
	// name.
	f.failDeletes["default/api"] = 1
	w.svcIndexer.Update(api)
	h.OnUpdate(headless, api)
	w.svcIndexer.Update(headless)
	h.OnUpdate(api, headless)
	w.svcIndexer.Update(api)
	h.OnUpdate(headless, api)
	time.Sleep(100 * time.Millisecond) // the retry has run by now
	if !slices.Equal(f.keys(), []string{"default/api"}) {
		t.Fatalf("stored: %v, want default/api, load-balanced again", f.keys())
	}
}

// A Service deleted (its removal failed), made again and deleted again
// (failed too) before the retry: the retry removes whichever object's
// service is stored, the first's when the second's store failed too.
// Before, the retry kept only the latest object, whose UID the stored
// service does not carry when its store failed, and the first stayed.
func TestServiceRetriedRemovalsAreEveryObject(t *testing.T) {
	defer func(d time.Duration) { pruneRetry = d }(pruneRetry)
	pruneRetry = 20 * time.Millisecond
	for _, storeFails := range []bool{false, true} {
		t.Run(fmt.Sprintf("second store fails %v", storeFails), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			f := &storedServices{failDeletes: map[string]int{"default/web": 2}, failUpserts: map[string]int{}}
			w := serviceWatcher(f)
			h := w.serviceHandler(ctx)
			for i, uid := range []string{"web-1", "web-2"} {
				ks := clusterIPService("web", "10.96.0.10")
				ks.UID = types.UID(uid)
				if i == 1 && storeFails {
					f.mu.Lock()
					f.failUpserts["default/web"] = 1
					f.mu.Unlock()
				}
				w.svcIndexer.Add(ks)
				h.OnAdd(ks, false)
				w.svcIndexer.Delete(ks)
				h.OnDelete(ks)
			}
			for deadline := time.Now().Add(10 * time.Second); len(f.keys()) != 0; {
				if time.Now().After(deadline) {
					t.Fatalf("stored: %v, want none: both objects are deleted", f.keys())
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
}

// A hand-written EndpointSlice cannot make a Service of one namespace a
// way into another namespace's pods (Kubernetes's CVE-2021-25740): an
// address that is a pod of another namespace is left out, with a slice
// targetRef claiming that namespace or none; the namespace's own pods,
// and addresses that are no known pod (a node's, one outside the
// cluster), stay.
func TestSliceCannotNameAnotherNamespacesPod(t *testing.T) {
	f := &storedServices{}
	w := serviceWatcher(f)
	w.podNamespace = func(a netip.Addr) (string, bool) {
		ns, ok := map[string]string{"10.0.0.5": "default", "10.0.1.9": "payments", "10.0.1.10": "payments"}[a.String()]
		return ns, ok
	}
	ks := clusterIPService("web", "10.96.0.10")
	w.svcIndexer.Add(ks)
	w.sliceIndexer.Add(&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-1",
		Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}, AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.5", "10.0.1.9"}},
			{Addresses: []string{"10.0.1.10"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "web-x"}},
			{Addresses: []string{"172.30.0.3", "192.0.2.8"}},
		}})
	w.serviceHandler(context.Background()).OnAdd(ks, false)
	s := f.svcs["default/web"]
	if s == nil {
		t.Fatalf("stored: %v", f.keys())
	}
	var got []string
	for _, b := range s.Backends {
		got = append(got, b.IP)
	}
	if want := []string{"10.0.0.5", "172.30.0.3", "192.0.2.8"}; !slices.Equal(got, want) {
		t.Errorf("backends %v, want %v (another namespace's pods left out)", got, want)
	}
}

// A Service whose annotations are large has its stored service keep only
// the annotations the service model reads (and the agent's marks): until
// 2026-12-07 every annotation was copied into the kvstore, up to 256 KiB
// a Service, and each change of one made a new value of that size, so a
// namespace rewriting one could fill the cluster's etcd to its quota
// (found by a review). Small ones are kept as agents always kept them
// (TestServiceStoredWithItsSource): agents of two versions store one value.
func TestServiceKeepsOnlyHonouredAnnotations(t *testing.T) {
	f := &storedServices{}
	w := serviceWatcher(f)
	ks := clusterIPService("web", "10.96.0.10")
	ks.Annotations["tenant.example/blob"] = strings.Repeat("x", 250<<10)
	ks.Annotations[service.AnnotationGlobal] = "true"
	ks.Annotations[service.AnnotationFailover] = service.FailoverGraded
	w.svcIndexer.Add(ks)
	ctx := context.Background()
	w.syncService(ctx, "default", "web")
	s := f.svcs["default/web"]
	if s == nil {
		t.Fatal("not stored")
	}
	want := map[string]string{service.AnnotationGlobal: "true", service.AnnotationFailover: service.FailoverGraded,
		service.SourceAnnotation: service.SourceKubernetes, service.UIDAnnotation: string(ks.UID)}
	if !maps.Equal(s.Metadata.Annotations, want) {
		t.Errorf("stored annotations %v, want %v", maps.Keys(s.Metadata.Annotations), want)
	}
	before := f.upserts
	ks2 := ks.DeepCopy()
	ks2.Annotations["tenant.example/blob"] = strings.Repeat("y", 250<<10)
	w.svcIndexer.Update(ks2)
	w.syncService(ctx, "default", "web")
	if got := f.svcs["default/web"]; !maps.Equal(got.Metadata.Annotations, want) {
		t.Errorf("after a change of an annotation no agent reads: %d upserts, annotations %v", f.upserts-before, got.Metadata.Annotations)
	}
}

// wideService is a Service of n named ports (targetPort by name, as
// Deployments write them) and one EndpointSlice of its pods, each port
// at portOf(i) in the slice.
func wideService(w *Watcher, n, pods int, portOf func(i int) int32) *corev1.Service {
	ks := clusterIPService("wide", "10.96.0.20")
	ks.Spec.Ports = nil
	var ports []discoveryv1.EndpointPort
	for i := range n {
		name := fmt.Sprintf("p%d", i)
		ks.Spec.Ports = append(ks.Spec.Ports, corev1.ServicePort{Name: name, Port: int32(1000 + i), Protocol: corev1.ProtocolTCP})
		ports = append(ports, discoveryv1.EndpointPort{Name: &name, Port: ptr(portOf(i))})
	}
	var eps []discoveryv1.Endpoint
	for p := range pods {
		eps = append(eps, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.0.0.%d", p+1)}})
	}
	w.svcIndexer.Add(ks)
	w.sliceIndexer.Add(&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "wide-1",
		Labels: map[string]string{discoveryv1.LabelServiceName: "wide"}}, AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: eps, Ports: ports})
	return ks
}

func ptr[T any](v T) *T { return &v }

// A Service of 4,000 ports whose 16 pods all have the slice's ports is
// stored with the ports once, in the service's target ports, not in every
// backend: under 256 KiB, each backend's port for each service port as
// before. Until 2026-12-07 each backend carried the slice's whole port
// map (1.8 MB a value, every change a revision of that size, which
// filled etcd's quota when an annotation was flipped in a loop).
func TestStoredServiceValueBounded(t *testing.T) {
	f := &storedServices{}
	w := serviceWatcher(f)
	portOf := func(i int) int32 { return int32(20000 + i) }
	wideService(w, 4000, 16, portOf)
	w.syncService(context.Background(), "default", "wide")
	s := f.svcs["default/wide"]
	if s == nil {
		t.Fatal("not stored")
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 256<<10 {
		t.Errorf("stored value %d bytes, want at most %d", len(data), 256<<10)
	}
	if len(s.Backends) != 16 {
		t.Fatalf("%d backends, want 16", len(s.Backends))
	}
	for _, b := range s.Backends {
		for i, p := range s.Spec.Ports {
			if got := b.BackendPort(p); got != uint16(portOf(i)) {
				t.Fatalf("backend %s port %s: %d, want %d", b.IP, p.Name, got, portOf(i))
			}
		}
	}
}

// Two slices of one Service whose ports differ keep, in each backend
// whose port differs from the service's, its own: only what all backends
// share goes to the service's target ports.
func TestBackendPortsDifferingFromTheServiceKept(t *testing.T) {
	f := &storedServices{}
	w := serviceWatcher(f)
	wideService(w, 2, 1, func(i int) int32 { return int32(8080 + i) })
	name0, name1 := "p0", "p1"
	w.sliceIndexer.Add(&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "wide-2",
		Labels: map[string]string{discoveryv1.LabelServiceName: "wide"}}, AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.0.1.1"}}},
		Ports:     []discoveryv1.EndpointPort{{Name: &name0, Port: ptr(int32(8080))}, {Name: &name1, Port: ptr(int32(9091))}}})
	w.syncService(context.Background(), "default", "wide")
	s := f.svcs["default/wide"]
	if s == nil {
		t.Fatal("not stored")
	}
	want := map[string][]uint16{"10.0.0.1": {8080, 8081}, "10.0.1.1": {8080, 9091}}
	for _, b := range s.Backends {
		got := []uint16{b.BackendPort(s.Spec.Ports[0]), b.BackendPort(s.Spec.Ports[1])}
		if !slices.Equal(got, want[b.IP]) {
			t.Errorf("backend %s ports %v, want %v", b.IP, got, want[b.IP])
		}
	}
	if len(s.Backends[0].Ports)+len(s.Backends[1].Ports) > 2 {
		t.Errorf("backend ports %v and %v: the port all share (p0) is kept in the backends", s.Backends[0].Ports, s.Backends[1].Ports)
	}
}
