package endpoint_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipam"
	"github.com/filament-net/filament/internal/testutil"
)

// fakePlumber records devices instead of touching the kernel.
type fakePlumber struct {
	devices      map[string]bool
	down         map[string]bool // devices set down
	failOn       string
	failTeardown bool
	failDown     bool // SetUp(_, false) fails
}

func (f *fakePlumber) Setup(_ context.Context, r endpoint.PlumbRequest) (endpoint.PlumbResult, error) {
	if r.ContainerID == f.failOn {
		return endpoint.PlumbResult{}, errors.New("plumbing failed")
	}
	f.devices[r.HostIfName] = true
	return endpoint.PlumbResult{MAC: "02:00:00:00:00:01", HostIfIndex: len(f.devices)}, nil
}
func (f *fakePlumber) Teardown(name string) error {
	if f.failTeardown {
		return errors.New("device busy")
	}
	delete(f.devices, name)
	return nil
}
func (f *fakePlumber) Present(name string) bool { return f.devices[name] }
func (f *fakePlumber) SetUp(name string, _ netip.Addr, up bool) error {
	if !up && f.failDown {
		return errors.New("device busy")
	}
	if f.down == nil {
		f.down = map[string]bool{}
	}
	f.down[name] = !up
	return nil
}

type env struct {
	m       *endpoint.Manager
	pool    *ipam.Pool
	ids     *identity.Allocator
	plumber *fakePlumber
	dir     string
	netns   string
}

func newEnv(t *testing.T, dir string, ep []string, plumber *fakePlumber) *env {
	t.Helper()
	return newEnvHooks(t, dir, ep, plumber, nil)
}

// newEnvHooks is newEnv with the datapath hooks h (nil: none).
func newEnvHooks(t *testing.T, dir string, ep []string, plumber *fakePlumber, h endpoint.Hooks) *env {
	t.Helper()
	kv := testutil.Connect(t, ep)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	lease, err := kv.GrantLease(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := identity.NewAllocator(ctx, kv, identity.AllocatorConfig{ClusterID: 1, ClusterName: "default", Node: "n1", Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := ipam.New("10.9.0.0/24")
	m, err := endpoint.NewManager(endpoint.Config{StateDir: dir, Pool: pool, Identities: ids, Plumber: plumber, Hooks: h})
	if err != nil {
		t.Fatal(err)
	}
	netns := filepath.Join(dir, "netns")
	os.WriteFile(netns, nil, 0o600)
	return &env{m: m, pool: pool, ids: ids, plumber: plumber, dir: dir, netns: netns}
}

func req(e *env, cid string, labels ...string) endpoint.CreateRequest {
	return endpoint.CreateRequest{ContainerID: cid, IfName: "eth0", NetNS: e.netns, Namespace: "default", PodName: cid, Labels: labels}
}

func TestCreateDeleteRestore(t *testing.T) {
	ep := testutil.Etcd(t)
	dir := t.TempDir()
	e := newEnv(t, dir, ep, &fakePlumber{devices: map[string]bool{}})
	ctx := context.Background()
	a, err := e.m.Create(ctx, req(e, "a", "app=web"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.m.Create(ctx, req(e, "b", "app=web"))
	if err != nil {
		t.Fatal(err)
	}
	if a.IPv4 == b.IPv4 || a.Identity != b.Identity || a.ID == b.ID || a.Gateway.String() != "10.9.0.1" {
		t.Fatalf("a %+v b %+v", a, b)
	}
	byIP := func(m *endpoint.Manager, ep endpoint.Endpoint, want bool) {
		t.Helper()
		if id, ok := m.ByIP(ep.IPv4); ok != want || ok && id != ep.ID {
			t.Fatalf("ByIP(%s) = %d, %v; want %d, %v", ep.IPv4, id, ok, ep.ID, want)
		}
	}
	byIP(e.m, a, true)
	byIP(e.m, b, true)
	if id, ok := e.m.ByIP(netip.Addr{}); ok {
		t.Fatalf("ByIP of no address: %d", id)
	}
	if v, _ := a.Labels.Get("io.kubernetes.pod.namespace"); v != "default" {
		t.Fatalf("namespace label missing: %v", a.Labels)
	}
	// A restarted manager (new process: new pool, new allocator) gets the same state back.
	e2 := newEnv(t, dir, ep, e.plumber)
	n, err := e2.m.Restore(ctx)
	if err != nil || n != 2 {
		t.Fatalf("restore: %d %v", n, err)
	}
	got, err := e2.m.Lookup("a", "eth0")
	if err != nil || got.IPv4 != a.IPv4 || got.Identity != a.Identity || got.State != endpoint.StateReady {
		t.Fatalf("restored a: %+v %v", got, err)
	}
	byIP(e2.m, a, true)
	if e2.pool.Used() != 2 {
		t.Fatalf("restored pool uses %d", e2.pool.Used())
	}
	if c, _ := e2.m.Create(ctx, req(e2, "c", "app=db")); c.IPv4 == a.IPv4 || c.IPv4 == b.IPv4 {
		t.Fatalf("restored pool handed out %s again", c.IPv4)
	}
	// A device that vanished while the agent was down shows as disconnected.
	delete(e.plumber.devices, b.HostIfName)
	e3 := newEnv(t, dir, ep, e.plumber)
	e3.m.Restore(ctx)
	if got, _ := e3.m.Lookup("b", "eth0"); got.State != endpoint.StateDisconnected {
		t.Fatalf("b after its device vanished: %s", got.State)
	}
	byIP(e3.m, b, true) // disconnected, still its address's
	if deleted, err := e3.m.DeleteByContainer(ctx, "b", "eth0"); err != nil || !deleted {
		t.Fatalf("delete b: %v %v", deleted, err)
	}
	byIP(e3.m, b, false)
	byIP(e3.m, a, true)
	if deleted, err := e3.m.DeleteByContainer(ctx, "b", "eth0"); err != nil || deleted {
		t.Fatalf("second delete of b: %v %v", deleted, err)
	}
	if err := e3.m.Delete(ctx, 999); !errors.Is(err, endpoint.ErrNotFound) {
		t.Fatalf("delete unknown: %v", err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "endpoints", "*")); len(files) != 2 {
		t.Fatalf("records after delete: %v", files)
	}
}

// A failure half-way leaves nothing: no address, no identity reference, no device, no record.
func TestCreateRollsBack(t *testing.T) {
	ep := testutil.Etcd(t)
	dir := t.TempDir()
	e := newEnv(t, dir, ep, &fakePlumber{devices: map[string]bool{}, failOn: "bad"})
	ctx := context.Background()
	if _, err := e.m.Create(ctx, req(e, "bad", "app=rollback")); err == nil {
		t.Fatal("create with failing plumbing succeeded")
	}
	if e.pool.Used() != 0 || len(e.plumber.devices) != 0 || len(e.m.List()) != 0 {
		t.Fatalf("left behind: used=%d devices=%v endpoints=%d", e.pool.Used(), e.plumber.devices, len(e.m.List()))
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "endpoints", "*")); len(files) != 0 {
		t.Fatalf("records left: %v", files)
	}
	ls, _ := req(e, "x", "app=rollback").Validate()
	if e.ids.Holds(ls) != 0 {
		t.Fatal("identity reference left behind")
	}
}

func TestCreateValidates(t *testing.T) {
	e := newEnv(t, t.TempDir(), testutil.Etcd(t), &fakePlumber{devices: map[string]bool{}})
	ctx := context.Background()
	cases := map[string]endpoint.CreateRequest{
		"containerID": {ContainerID: "", IfName: "eth0", NetNS: e.netns},
		"ifName":      {ContainerID: "c", IfName: "this-name-is-too-long", NetNS: e.netns},
		"netns":       {ContainerID: "c", IfName: "eth0", NetNS: "/nonexistent/ns"},
		// The node's own namespace (the agent's): the pod's routes, its
		// default route among them, and its socket LB registration went
		// to the node until 2026-12-07.
		"netns ":    {ContainerID: "c", IfName: "eth9", NetNS: "/proc/self/ns/net"},
		"netns  ":   {ContainerID: "c", IfName: "eth9", NetNS: "/proc/thread-self/ns/net"},
		"bad key!":  {ContainerID: "c", IfName: "eth0", NetNS: e.netns, Labels: []string{"bad key!=x"}},
		"namespace": {ContainerID: "c", IfName: "eth0", NetNS: e.netns, Namespace: "Not/Valid"},
		// Published in the pod's ipcache entry, which other nodes refuse
		// past 253 bytes: the pod would be unknown everywhere else.
		"podName": {ContainerID: "c", IfName: "eth0", NetNS: e.netns, Namespace: "default", PodName: strings.Repeat("p", 254)},
	}
	for field, r := range cases {
		_, err := e.m.Create(ctx, r)
		if !errors.Is(err, endpoint.ErrInvalid) || !contains(err.Error(), strings.TrimSpace(field)) {
			t.Errorf("%s: want ErrInvalid naming it, got %v", field, err)
		}
	}
	if e.pool.Used() != 0 {
		t.Fatal("rejected requests consumed addresses")
	}
	if _, err := e.m.Create(ctx, req(e, "dup")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Create(ctx, req(e, "dup")); !errors.Is(err, endpoint.ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if e.pool.Used() != 1 {
		t.Fatalf("duplicate consumed an address: used=%d", e.pool.Used())
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// Relabelling a pod's endpoints takes a new identity, persists it (a
// restart restores the new labels) and releases the old one; the same
// labels again change nothing; an invalid label is refused untouched.
func TestSetPodLabels(t *testing.T) {
	dir := t.TempDir()
	ep := testutil.Etcd(t)
	e := newEnv(t, dir, ep, &fakePlumber{devices: map[string]bool{}})
	ctx := context.Background()
	created, err := e.m.Create(ctx, req(e, "pod1", "app=web"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := e.m.SetPodLabels(ctx, "default", "pod1", []string{"app=db"})
	if err != nil || n != 1 {
		t.Fatalf("relabel: %d %v", n, err)
	}
	got, _ := e.m.Get(created.ID)
	if got.Identity == created.Identity || !contains(got.Labels.String(), "app=db") {
		t.Fatalf("after relabel: %+v", got)
	}
	if n, _ := e.m.SetPodLabels(ctx, "default", "pod1", []string{"app=db"}); n != 0 {
		t.Fatal("unchanged labels relabelled")
	}
	if _, err := e.m.SetPodLabels(ctx, "default", "pod1", []string{"bad label=x"}); err == nil {
		t.Fatal("an invalid label was accepted")
	}
	if again, _ := e.m.Get(created.ID); again.Identity != got.Identity {
		t.Fatal("a refused relabel changed the endpoint")
	}
	// The old identity went back (no endpoint holds app=web any more).
	if err := e.ids.Release(ctx, created.Labels); err == nil {
		t.Fatal("the old identity was still referenced")
	}
	// A restarted manager restores the new labels.
	e2 := newEnv(t, dir, ep, e.plumber)
	if _, err := e2.m.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if r, _ := e2.m.Get(created.ID); r.Identity != got.Identity {
		t.Fatalf("restored %+v, want identity %d", r, got.Identity)
	}
}

// A deleted endpoint's ID is not handed out again at once: flows the
// datapath reported for the old pod and the agent records later (its
// monitor queue lagging) are named by the endpoint ID, and with the
// lowest free ID reused, the old pod's last flows carried the new pod's
// name and namespace (found 2026-12-06 by reading). IDs now go round all
// 65,535 before one comes back.
func TestEndpointIDsNotReusedAtOnce(t *testing.T) {
	ep := testutil.Etcd(t)
	e := newEnv(t, t.TempDir(), ep, &fakePlumber{devices: map[string]bool{}})
	ctx := context.Background()
	seen := map[uint16]string{}
	for _, cid := range []string{"a", "b", "c", "d"} {
		x, err := e.m.Create(ctx, req(e, cid, "app=web"))
		if err != nil {
			t.Fatal(err)
		}
		if was, ok := seen[x.ID]; ok {
			t.Fatalf("endpoint %s got ID %d, endpoint %s's, deleted just before", cid, x.ID, was)
		}
		seen[x.ID] = cid
		if _, err := e.m.DeleteByContainer(ctx, cid, "eth0"); err != nil {
			t.Fatal(err)
		}
	}
}
