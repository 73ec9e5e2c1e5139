package endpoint_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/internal/testutil"
)

// datapathHooks is the datapath as the hooks leave it: each endpoint up
// with the identity of its last EndpointUp, or absent. A failing
// EndpointUp has done its work before it fails (a map written, then the
// next write refused), as the engine's can.
type datapathHooks struct {
	mu   sync.Mutex
	up   map[uint16]identity.NumericIdentity
	fail int // the next fail EndpointUp calls fail
}

func (d *datapathHooks) EndpointUp(_ context.Context, ep endpoint.Endpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.up[ep.ID] = ep.Identity
	if d.fail > 0 {
		d.fail--
		return errors.New("map full")
	}
	return nil
}

func (d *datapathHooks) EndpointDown(ep endpoint.Endpoint) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.up, ep.ID)
}

func (d *datapathHooks) state(id uint16) (identity.NumericIdentity, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ident, ok := d.up[id]
	return ident, ok
}

// A failed datapath update leaves the datapath as the manager has the
// endpoint: a refused relabel keeps the old identity there too (before,
// the datapath kept what the failed update had written: the new identity,
// released at once, or nothing, the pod unenforced), and a refused create
// leaves nothing behind (before, the entries of the released address),
// and a delete whose device could not be removed leaves the endpoint
// enforced, as the manager still lists it (before, its programs were
// detached and its pod ran unenforced until the DEL was tried again).
func TestFailedDatapathUpdateLeavesItAsTheManagerHasIt(t *testing.T) {
	d, plumber, e, ep := hookedWeb(t)
	ctx := context.Background()
	d.mu.Lock()
	d.fail = 1
	d.mu.Unlock()
	if _, err := e.m.SetPodLabels(ctx, "default", "web", []string{"k8s:app=admin"}); err == nil {
		t.Fatal("relabel succeeded with the datapath refusing it")
	}
	got, _ := e.m.Get(ep.ID)
	if ident, up := d.state(ep.ID); !up || ident != got.Identity || got.Identity != ep.Identity {
		t.Fatalf("after a refused relabel the datapath has identity %d (up %v), the manager %d; want the old %d in both", ident, up, got.Identity, ep.Identity)
	}

	d.mu.Lock()
	d.fail = 1
	d.mu.Unlock()
	if _, err := e.m.Create(ctx, req(e, "api", "app=api")); err == nil {
		t.Fatal("create succeeded with the datapath refusing it")
	}
	d.mu.Lock()
	if len(d.up) != 1 {
		t.Fatalf("after a refused create the datapath has endpoints %v, want only %d", d.up, ep.ID)
	}
	d.mu.Unlock()

	plumber.failTeardown = true
	if err := e.m.Delete(ctx, ep.ID); err == nil {
		t.Fatal("delete succeeded with its device left")
	}
	if _, err := e.m.Get(ep.ID); err != nil {
		t.Fatalf("the manager dropped an endpoint whose delete failed: %v", err)
	}
	if ident, up := d.state(ep.ID); !up || ident != ep.Identity {
		t.Fatalf("after a failed delete the datapath has identity %d (up %v), want %d: the endpoint is still listed", ident, up, ep.Identity)
	}
}

// An identity renumbered after the node's lease was lost (its old number
// taken by another label set meanwhile: identity.Allocator.OnRenumber)
// moves the node's endpoints of that label set to the new number, in the
// datapath and in their records; other endpoints, that number's new
// label set's included, stay. Until 2026-12-06 they kept the old number,
// which every node resolved to the other label set, until they changed.
func TestRenumberMovesTheLabelSetsEndpoints(t *testing.T) {
	d := &datapathHooks{up: map[uint16]identity.NumericIdentity{}}
	dir := t.TempDir()
	etcd := testutil.Etcd(t)
	e := newEnvHooks(t, dir, etcd, &fakePlumber{devices: map[string]bool{}}, d)
	ctx := context.Background()
	web, err := e.m.Create(ctx, req(e, "web", "app=web"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := e.m.Create(ctx, req(e, "db", "app=db"))
	if err != nil {
		t.Fatal(err)
	}
	const renumbered = identity.NumericIdentity(0x10_0999)
	ls, err := e.ids.WithCluster(web.Labels)
	if err != nil {
		t.Fatal(err)
	}
	// A stranger with the same number but other labels is not moved.
	other, _ := e.ids.WithCluster(db.Labels)
	if n := e.m.Renumber(ctx, other, web.Identity, renumbered); n != 0 {
		t.Fatalf("renumbering another label set moved %d endpoints", n)
	}
	if n := e.m.Renumber(ctx, ls, web.Identity, renumbered); n != 1 {
		t.Fatalf("renumbered %d endpoints, want 1", n)
	}
	if got, _ := e.m.Get(web.ID); got.Identity != renumbered {
		t.Errorf("the endpoint has identity %d, want %d", got.Identity, renumbered)
	}
	if ident, up := d.state(web.ID); !up || ident != renumbered {
		t.Errorf("the datapath has identity %d (up %v), want %d", ident, up, renumbered)
	}
	if got, _ := e.m.Get(db.ID); got.Identity != db.Identity {
		t.Errorf("another label set's endpoint moved to %d", got.Identity)
	}
	// The record holds the new number (a restart keeps it).
	b, err := os.ReadFile(filepath.Join(dir, "endpoints", fmt.Sprintf("%d.json", web.ID)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), fmt.Sprintf(`"identity": %d`, renumbered)) {
		t.Errorf("the record after the renumbering: %s", b)
	}
}

// One endpoint whose datapath cannot be restored does not stop the
// restore, and its pod gets no packet through: until 2026-12-07 its error
// ended Restore, which the agent takes as fatal, so the node crash-looped
// (no new pods, no policy updates for any). Its host device is now held
// down before what the failed try wrote is taken back (taking the
// programs off a device left up let the pod through unenforced: tried and
// taken back the same day), and the next restore that sets its datapath
// up brings the device up again.
func TestRestoreHoldsAFailedEndpointDown(t *testing.T) {
	dir := t.TempDir()
	ep := testutil.Etcd(t)
	plumber := &fakePlumber{devices: map[string]bool{}}
	e := newEnv(t, dir, ep, plumber)
	ctx := context.Background()
	a, err := e.m.Create(ctx, req(e, "a", "app=a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.m.Create(ctx, req(e, "b", "app=b"))
	if err != nil {
		t.Fatal(err)
	}
	d := &datapathHooks{up: map[uint16]identity.NumericIdentity{}, fail: 1}
	e2 := newEnvHooks(t, dir, ep, plumber, d)
	n, err := e2.m.Restore(ctx)
	if err != nil {
		t.Fatalf("restore stopped at a datapath failure: %v", err)
	}
	if n != 2 {
		t.Fatalf("%d endpoints restored, want 2", n)
	}
	var held endpoint.Endpoint
	for _, id := range []uint16{a.ID, b.ID} {
		got, err := e2.m.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		_, up := d.state(id)
		switch got.State {
		case endpoint.StateHeld:
			held = got
			if !plumber.down[got.HostIfName] || up {
				t.Errorf("held endpoint %d: device down %v, datapath up %v; want down, taken back", id, plumber.down[got.HostIfName], up)
			}
		case endpoint.StateReady:
			if plumber.down[got.HostIfName] || !up {
				t.Errorf("ready endpoint %d: device down %v, datapath up %v", id, plumber.down[got.HostIfName], up)
			}
		default:
			t.Errorf("endpoint %d %s", id, got.State)
		}
	}
	if held.ID == 0 {
		t.Fatal("no endpoint held after a datapath failure")
	}
	// The next start sets it up and brings its device up.
	d3 := &datapathHooks{up: map[uint16]identity.NumericIdentity{}}
	e3 := newEnvHooks(t, dir, ep, plumber, d3)
	if _, err := e3.m.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := e3.m.Get(held.ID); got.State != endpoint.StateReady || plumber.down[held.HostIfName] {
		t.Fatalf("after a restore that set it up: %s, device down %v", got.State, plumber.down[held.HostIfName])
	}
	// A device that cannot be held down ends the restore, as before.
	d4 := &datapathHooks{up: map[uint16]identity.NumericIdentity{}, fail: 1}
	plumber.failDown = true
	e4 := newEnvHooks(t, dir, ep, plumber, d4)
	if _, err := e4.m.Restore(ctx); err == nil {
		t.Fatal("restore went on past an endpoint it could neither set up nor hold down")
	}
	plumber.failDown = false
	// Their DELs clean them up.
	for _, cid := range []string{"a", "b"} {
		if _, err := e3.m.DeleteByContainer(ctx, cid, "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	if e3.pool.Used() != 0 {
		t.Fatalf("%d addresses left after both DELs", e3.pool.Used())
	}
}

// A DEL whose teardown fails leaves the pod's device up with its programs,
// or down if they cannot be set up again: never up without them (until
// 2026-12-07 the programs came off first and stayed off when the restore
// failed; found by a review).
func TestFailedDeleteLeavesNoDeviceUnenforced(t *testing.T) {
	d, plumber, e, ep := hookedWeb(t)
	ctx := context.Background()
	plumber.failTeardown = true
	if _, err := e.m.DeleteByContainer(ctx, "web", "eth0"); err == nil {
		t.Fatal("a delete with its teardown failing succeeded")
	}
	if _, up := d.state(ep.ID); !up || plumber.down[ep.HostIfName] {
		t.Fatalf("after a failed delete: programs %v, device down %v; want programs on and the device up", up, plumber.down[ep.HostIfName])
	}
	d.mu.Lock()
	d.fail = 1
	d.mu.Unlock()
	if _, err := e.m.DeleteByContainer(ctx, "web", "eth0"); err == nil {
		t.Fatal("a delete with its teardown failing succeeded")
	}
	if got, _ := e.m.Get(ep.ID); !plumber.down[ep.HostIfName] || got.State != endpoint.StateHeld {
		t.Fatalf("after a failed delete whose restore failed: device down %v, %s; want held down", plumber.down[ep.HostIfName], got.State)
	}
	plumber.failTeardown = false
	if _, err := e.m.DeleteByContainer(ctx, "web", "eth0"); err != nil {
		t.Fatal(err)
	}
}

// hookedWeb is a manager with datapath hooks d and the endpoint web
// created.
func hookedWeb(t *testing.T) (*datapathHooks, *fakePlumber, *env, endpoint.Endpoint) {
	t.Helper()
	d := &datapathHooks{up: map[uint16]identity.NumericIdentity{}}
	plumber := &fakePlumber{devices: map[string]bool{}}
	e := newEnvHooks(t, t.TempDir(), testutil.Etcd(t), plumber, d)
	ep, err := e.m.Create(context.Background(), req(e, "web", "app=web"))
	if err != nil {
		t.Fatal(err)
	}
	return d, plumber, e, ep
}
