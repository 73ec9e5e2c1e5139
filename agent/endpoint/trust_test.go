package endpoint_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/internal/testutil"
)

// A workload cannot claim a reserved identity (issue 13, item 3), a CIDR
// identity, or a label the agent sets itself (namespace, cluster, labels
// derived from the Kubernetes API server): each is refused naming the
// label, and nothing is consumed.
func TestWorkloadCannotClaimAgentLabels(t *testing.T) {
	e := newEnv(t, t.TempDir(), testutil.Etcd(t), &fakePlumber{devices: map[string]bool{}})
	ctx := context.Background()
	for _, l := range []string{
		"reserved:host", "reserved:health", "reserved:world", "reserved:remote-node", "reserved:init",
		"cidr:10.0.0.0/8", "any:app=web",
		"io.kubernetes.pod.namespace=kube-system", "container:io.kubernetes.pod.namespace=kube-system",
		"filament.io/cluster=west", "container:filament.io/cluster=west", "unspec:io.cilium.k8s.policy.cluster=west",
		"k8s:io.cilium.k8s.namespace.labels.team=admin", "io.cilium.k8s.policy.serviceaccount=admin",
	} {
		got, err := e.m.Create(ctx, req(e, "evil", "app=web", l))
		if err == nil {
			t.Errorf("label %q accepted: endpoint identity %d labels %s", l, got.Identity, got.Labels)
			e.m.Delete(ctx, got.ID)
			continue
		}
		if !errors.Is(err, endpoint.ErrInvalid) || !strings.Contains(err.Error(), l[strings.IndexByte(l, ':')+1:]) {
			t.Errorf("label %q: want ErrInvalid naming it, got %v", l, err)
		}
	}
	// The attack as reported: reserved:host alone, no namespace, was given identity 1.
	if got, err := e.m.Create(ctx, endpoint.CreateRequest{ContainerID: "evil", IfName: "eth0", NetNS: e.netns, Labels: []string{"reserved:host"}}); !errors.Is(err, endpoint.ErrInvalid) || !strings.Contains(err.Error(), "reserved:host") {
		t.Errorf("reserved:host alone: identity %d, err %v", got.Identity, err)
	}
	if e.pool.Used() != 0 || len(e.m.List()) != 0 {
		t.Fatalf("refused requests left state: used=%d endpoints=%d", e.pool.Used(), len(e.m.List()))
	}
	// What a workload may set still works.
	ep, err := e.m.Create(ctx, req(e, "ok", "app=web", "container:tier=back", "unspec:x=y"))
	if err != nil || ep.Identity.IsReserved() || ep.Identity == 0 {
		t.Fatalf("ordinary labels: %+v %v", ep, err)
	}
	// Relabelling (Kubernetes pod label changes) refuses them too, and
	// leaves the endpoint as it was.
	for _, l := range []string{"reserved:host", "cidr:0.0.0.0/0", "filament.io/cluster=west", "io.kubernetes.pod.namespace=kube-system"} {
		if _, err := e.m.SetPodLabels(ctx, "default", "ok", []string{"app=web", l}); !errors.Is(err, endpoint.ErrInvalid) {
			t.Errorf("relabel with %q: %v", l, err)
		}
	}
	if got, _ := e.m.Get(ep.ID); got.Identity != ep.Identity || got.Labels.String() != ep.Labels.String() {
		t.Fatalf("a refused relabel changed the endpoint: %+v", got)
	}
	// Labels the agent derives from the API server pass the relabel path.
	if _, err := e.m.SetPodLabels(ctx, "default", "ok", []string{"app=web", "k8s:io.cilium.k8s.namespace.labels.team=a", "k8s:io.cilium.k8s.policy.serviceaccount=default"}); err != nil {
		t.Fatalf("relabel with API-server labels: %v", err)
	}
}

// A record written before labels were checked, whose workload claimed
// reserved:host or another namespace, loses those labels (and so the
// identity) at restore.
func TestRestoreDropsClaimedAgentLabels(t *testing.T) {
	created, got, _ := restoreEdited(t, func(rec map[string]any) {
		rec["labels"] = []map[string]string{
			{"source": "reserved", "key": "host"},
			{"source": "container", "key": "io.kubernetes.pod.namespace", "value": "kube-system"},
			{"source": "k8s", "key": "app", "value": "web"},
			{"source": "k8s", "key": "io.kubernetes.pod.namespace", "value": "default"},
		}
		rec["identity"] = 1
	})
	if got.Identity.IsReserved() || got.Labels.String() != "k8s:app=web;k8s:io.kubernetes.pod.namespace=default" {
		t.Fatalf("restored %s with identity %d", got.Labels, got.Identity)
	}
	// The identity is the kept labels', not the claimed set's: until
	// 2026-12-05 Restore allocated the identity before dropping the
	// claimed labels, so the endpoint kept the number of the forged set
	// (its labels were what policy selectors see on every node).
	if got.Identity != created.Identity {
		t.Fatalf("restored with identity %d, want %d (that of %s)", got.Identity, created.Identity, got.Labels)
	}
}

// A record whose only label is one its workload may not set
// (reserved:host, which alone is the host's identity) is not restored as
// the host (until 2026-12-05 it was: identity 1, written to the ipcache
// and the endpoints map for the pod's address).
func TestRestoreClaimedReservedLabelAlone(t *testing.T) {
	_, got, err := restoreEdited(t, func(rec map[string]any) {
		rec["labels"] = []map[string]string{{"source": "reserved", "key": "host"}}
		rec["identity"] = 1
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Identity.IsReserved() {
		t.Fatalf("restored %q with reserved identity %d", got.Labels, got.Identity)
	}
	// It keeps its namespace's label (namespaced policies select it).
	if got.Labels.String() != "k8s:io.kubernetes.pod.namespace=default" {
		t.Fatalf("restored with labels %q", got.Labels)
	}
}

// A record kept from before pod names were checked, naming its pod with
// what is no Kubernetes object name, is restored unnamed: every other node
// refuses an ipcache entry naming it (ipcache.ValidPodName), which would
// leave the endpoint unreachable from them.
func TestRestoreDropsAPodNameOthersRefuse(t *testing.T) {
	if _, got, _ := restoreEdited(t, func(rec map[string]any) { rec["podName"] = "Web_1" }); got.PodName != "" {
		t.Fatalf("restored with pod name %q, which other nodes refuse", got.PodName)
	}
}

// restoreEdited creates an endpoint, edits its saved record with edit (as
// an older agent might have written it), restores it in a new manager and
// returns the endpoint as created and as restored (err: Get's).
func restoreEdited(t *testing.T, edit func(rec map[string]any)) (created, got endpoint.Endpoint, err error) {
	t.Helper()
	dir := t.TempDir()
	etcd := testutil.Etcd(t)
	e := newEnv(t, dir, etcd, &fakePlumber{devices: map[string]bool{}})
	ctx := context.Background()
	if created, err = e.m.Create(ctx, req(e, "old", "app=web")); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "endpoints", fmt.Sprintf("%d.json", created.ID))
	raw, _ := os.ReadFile(f)
	var rec map[string]any
	json.Unmarshal(raw, &rec)
	edit(rec)
	raw, _ = json.Marshal(rec)
	os.WriteFile(f, raw, 0o600)
	e2 := newEnv(t, dir, etcd, e.plumber)
	if _, err := e2.m.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	got, err = e2.m.Get(created.ID)
	return created, got, err
}
