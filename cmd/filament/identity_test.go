package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/labels"
)

type fixedIdentities []identity.Identity

func (f fixedIdentities) Get(n identity.NumericIdentity) (identity.Identity, error) {
	for _, id := range f {
		if id.ID == n {
			return id, nil
		}
	}
	return identity.Identity{}, identity.ErrNotFound
}

func (f fixedIdentities) List() []identity.Identity { return f }

func mustLabels(t *testing.T, ss ...string) labels.Labels {
	t.Helper()
	ls, err := labels.ParseList(ss...)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// identity list --all-clusters shows the remote clusters' identities the
// node knows, each with its cluster; plain identity list only the local ones.
func TestIdentityListAllClusters(t *testing.T) {
	local := identity.Identity{ID: 256, Labels: mustLabels(t, "k8s:app=web", "k8s:filament.io/cluster=c1")}
	remote := identity.Identity{ID: 2<<16 | 256, Labels: mustLabels(t, "k8s:app=db", "k8s:filament.io/cluster=c2")}
	s := &api.Server{Identities: fixedIdentities{local},
		KnownIdentities: func() []identity.Identity { return []identity.Identity{remote, local} }}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	if err := s.Serve(sock); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	run := func(args ...string) string {
		var out bytes.Buffer
		root := newRoot(&out)
		root.SetArgs(append([]string{"--socket", sock, "identity", "list"}, args...))
		if err := root.Execute(); err != nil {
			t.Fatalf("identity list %v: %v", args, err)
		}
		return out.String()
	}
	if out := run(); strings.Contains(out, "app=db") || !strings.Contains(out, "app=web") {
		t.Fatalf("identity list:\n%s", out)
	}
	out := run("--all-clusters")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[0], "CLUSTER") ||
		!strings.Contains(lines[1], "c1") || !strings.Contains(lines[2], "c2") || !strings.Contains(lines[2], "app=db") {
		t.Fatalf("identity list --all-clusters:\n%s", out)
	}
}
