package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// manyBackends is service ns/name on clusterIP cip with ports ports (a
// nodePort each when nodePort) and n backends.
func manyBackends(ns, name, cip string, ports, n int, nodePort bool) *Service {
	s := &Service{}
	s.Metadata.Name, s.Metadata.Namespace, s.Spec.ClusterIP = name, ns, cip
	for i := range ports {
		p := Port{Name: fmt.Sprintf("p%d", i), Port: uint16(80 + i)}
		if nodePort {
			s.Spec.Type, p.NodePort = "NodePort", uint16(30000+i)
		}
		s.Spec.Ports = append(s.Spec.Ports, p)
	}
	base := netip.MustParseAddr("10.0.0.1")
	for range n {
		s.Backends = append(s.Backends, Backend{IP: base.String()})
		base = base.Next()
	}
	return s
}

// A namespace's services together hold at most MaxNamespaceSlots of
// the node's load-balancer slots (lb_slots, shared by every service of
// the node): one past it is refused whole, naming the namespace and the
// bound, and the namespace's other services, and other namespaces', are
// as they were. Before 2026-12-05 nothing bounded them: one tenant's
// Service with many ports and hand-written backends filled the map, and
// every later service write of every namespace failed.
func TestNamespaceServiceBudget(t *testing.T) {
	m, _ := newManager(t, "random")
	ctx := context.Background()
	if err := m.Upsert(ctx, manyBackends("tenant", "a", "10.96.1.1", 2, 20000, false)); err != nil {
		t.Fatal(err)
	}
	err := m.Upsert(ctx, manyBackends("tenant", "b", "10.96.1.2", 2, 20000, false))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(fmt.Sprint(err), `"tenant"`) || !strings.Contains(fmt.Sprint(err), "65536") {
		t.Fatalf("a namespace's services over its slots: %v", err)
	}
	if _, ok := m.local["tenant/b"]; ok {
		t.Error("the refused service was stored")
	}
	if _, ok := m.local["tenant/a"]; !ok {
		t.Error("the namespace's other service went")
	}
	if err := m.Upsert(ctx, manyBackends("other", "c", "10.96.1.3", 2, 20000, false)); err != nil {
		t.Errorf("another namespace's service refused: %v", err)
	}
	// The service's own earlier version does not count against it.
	if err := m.Upsert(ctx, manyBackends("tenant", "a", "10.96.1.1", 2, 30000, false)); err != nil {
		t.Errorf("a service replaced within the namespace's slots refused: %v", err)
	}
	// NodePort frontends hold slots on each of the node's addresses (2).
	if err := m.Upsert(ctx, manyBackends("np", "d", "10.96.1.4", 1, 22000, true)); err == nil {
		t.Error("a NodePort service of 22,000 backends on three frontends (66,000 slots) was stored")
	}
	// One frontend's count is 16 bits in the datapath.
	if err := manyBackends("big", "e", "10.96.1.5", 1, 65536, false).Validate(); err == nil || !strings.Contains(err.Error(), "backends") {
		t.Errorf("a service of 65,536 backends: %v", err)
	}
}

// A service written to the kvstore directly (by a holder of its
// credentials, not through an agent's Upsert) is held to the same
// namespace budget when the agents read it: one that would take its
// namespace past it is ignored, and the namespace's services read before
// it stay. Until 2026-12-05 only Upsert checked, so such a write could
// fill every node's lb_slots.
func TestNamespaceServiceBudgetOfStoredServices(t *testing.T) {
	ctx := context.Background()
	m, kv := etcdManager(t)
	put := func(s *Service) {
		t.Helper()
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := kv.Put(ctx, m.key(s), b, 0); err != nil {
			t.Fatal(err)
		}
	}
	stored := func(key string) bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		_, ok := m.local[key]
		return ok
	}
	put(manyBackends("tenant", "a", "10.96.1.1", 2, 20000, false))
	waitFor(t, func() bool { return stored("tenant/a") })
	put(manyBackends("tenant", "b", "10.96.1.2", 2, 20000, false))
	put(manyBackends("other", "c", "10.96.1.3", 1, 10, false))
	waitFor(t, func() bool { return stored("other/c") })
	if stored("tenant/b") {
		t.Error("a stored service past its namespace's budget was taken")
	}
	if !stored("tenant/a") {
		t.Error("the namespace's earlier service went")
	}
	m.mu.Lock()
	use := m.nsUse["tenant"].slots
	m.mu.Unlock()
	if use != 40000 {
		t.Errorf("tenant holds %d slots, want 40000 (a's)", use)
	}
}

// A frontend holds an lb_services entry (65,536 per node, shared by every
// service of the node) whatever its backends, and a Maglev frontend a
// Maglev table (lb_maglev, 1,024 per node): a namespace's services hold at
// most MaxNamespaceFrontends and MaxNamespaceMaglev of them. Found
// 2026-12-05 by reading the service manager: the budget counted only
// slots (one per backend per frontend), so a tenant's Services with many
// ports and no backends, or ~1,024 one-backend Maglev frontends, filled
// the node's maps and every other namespace's new frontends failed.
func TestNamespaceFrontendBudget(t *testing.T) {
	ctx := context.Background()
	m, _ := newManager(t, "random")
	if err := m.Upsert(ctx, manyBackends("tenant", "a", "10.96.2.1", 10000, 0, false)); err != nil {
		t.Fatal(err)
	}
	err := m.Upsert(ctx, manyBackends("tenant", "b", "10.96.2.2", 10000, 0, false))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(fmt.Sprint(err), `"tenant"`) || !strings.Contains(fmt.Sprint(err), "frontends") {
		t.Fatalf("a namespace's services over its frontends: %v", err)
	}
	if err := m.Upsert(ctx, manyBackends("other", "c", "10.96.2.3", 10000, 0, false)); err != nil {
		t.Errorf("another namespace's service refused: %v", err)
	}
	// NodePort frontends count on each of the node's addresses (2).
	if err := m.Upsert(ctx, manyBackends("np", "d", "10.96.2.4", 6000, 0, true)); err == nil {
		t.Error("a NodePort service of 6,000 ports (18,000 frontends) was stored")
	}

	mg, _ := newManager(t, "maglev")
	if err := mg.Upsert(ctx, manyBackends("tenant", "a", "10.96.3.1", 200, 1, false)); err != nil {
		t.Fatal(err)
	}
	err = mg.Upsert(ctx, manyBackends("tenant", "b", "10.96.3.2", 100, 1, false))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(fmt.Sprint(err), "Maglev") {
		t.Fatalf("a namespace's Maglev frontends over its share: %v", err)
	}
	// A service of the random algorithm holds no Maglev table.
	if err := mg.Upsert(ctx, withAlgorithm(manyBackends("tenant", "c", "10.96.3.3", 100, 1, false), "random")); err != nil {
		t.Errorf("a random-algorithm service refused for Maglev tables: %v", err)
	}
}

func withAlgorithm(s *Service, alg string) *Service {
	s.Spec.LoadBalancerAlgorithm = alg
	return s
}

// A service whose stored value would pass its bound (StoredBytes,
// StoredBytesPerPort, StoredBytesPerBackend) is refused, naming the service and the size; its
// earlier version stays. Until
// 2026-12-07 any size was stored, each change a revision of that size
// (1.8 MB a Service of 4,000 ports whose 16 backends each carried every
// port), which filled etcd's quota and refused every write of the
// cluster.
func TestOversizedServiceRefused(t *testing.T) {
	m, _ := newManager(t, "random")
	ctx := context.Background()
	small := manyBackends("tenant", "wide", "10.96.1.1", 4000, 16, false)
	if err := m.Upsert(ctx, small); err != nil {
		t.Fatal(err)
	}
	big := manyBackends("tenant", "wide", "10.96.1.1", 4000, 16, false)
	for i := range big.Backends {
		big.Backends[i].Ports = map[string]uint16{}
		for _, p := range big.Spec.Ports {
			big.Backends[i].Ports[p.Name] = p.Port + 1000
		}
	}
	err := m.Upsert(ctx, big)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(fmt.Sprint(err), "tenant/wide") || !strings.Contains(fmt.Sprint(err), "776192") {
		t.Fatalf("an oversized service: %v", err)
	}
	if got := m.local["tenant/wide"]; got == nil || len(got.Backends[0].Ports) != 0 {
		t.Error("the refused version replaced the stored one")
	}
}

// Namespaces together leave room for the others: past each namespace's
// first NamespaceFloorSlots, they share TenantSlots of a node's lb_slots
// (half; the remote clusters' backends hold a quarter), and a namespace's
// service that would take them past it is refused, naming the bound, while
// another namespace's small service is still stored. Until 2026-12-07 each
// namespace was bounded alone (a quarter of each map): four namespaces
// filled lb_slots, and every other namespace's new services failed.
func TestNamespacesLeaveRoomForOthers(t *testing.T) {
	m, _ := newManager(t, "random")
	ctx := context.Background()
	var refused []string
	for i, ns := range []string{"t1", "t2", "t3", "t4"} {
		err := m.Upsert(ctx, manyBackends(ns, "fill", fmt.Sprintf("10.96.4.%d", i+1), 2, 32000, false))
		switch {
		case err == nil:
		case errors.Is(err, ErrInvalid) && strings.Contains(fmt.Sprint(err), fmt.Sprint(TenantSlots)):
			refused = append(refused, ns)
		default:
			t.Fatalf("namespace %s: %v", ns, err)
		}
	}
	if len(refused) != 2 {
		t.Errorf("namespaces refused %v, want t3 and t4 (two of 64,000 slots fill the tenants' share)", refused)
	}
	m.mu.Lock()
	total := 0
	for _, u := range m.nsUse {
		total += u.slots
	}
	m.mu.Unlock()
	if max := 262144 - MaxRemoteBackends; total > max {
		t.Errorf("namespaces hold %d slots, more than lb_slots leaves beside the remote clusters' share (%d)", total, max)
	}
	if err := m.Upsert(ctx, manyBackends("small", "web", "10.96.4.9", 2, 100, false)); err != nil {
		t.Errorf("another namespace's small service refused: %v", err)
	}
	// A change that adds nothing to the share is never refused for it.
	if err := m.Upsert(ctx, manyBackends("t1", "fill", "10.96.4.1", 2, 31000, false)); err != nil {
		t.Errorf("a namespace's service made smaller refused: %v", err)
	}

	// Small namespaces past the floors' reserve (64 of them at their
	// floor) take what the share has left.
	small, _ := newManager(t, "random")
	for i := range 70 {
		ns := fmt.Sprintf("team%d", i)
		if err := small.Upsert(ctx, manyBackends(ns, "web", fmt.Sprintf("10.96.5.%d", i+1), 2, 512, false)); err != nil {
			t.Fatalf("namespace %s at its floor: %v", ns, err)
		}
	}
}
