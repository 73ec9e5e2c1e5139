package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/policy"
)

// `filament policy import` of a file over the agent's 8 MiB limit prints
// the agent's error naming the limit, and nothing is imported.
func TestImportOverLimitPrintsServerError(t *testing.T) {
	repo, err := policy.NewRepository("")
	if err != nil {
		t.Fatal(err)
	}
	s := &api.Server{Policies: repo}
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	if err := s.Serve(sock); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())

	// A valid policy, then comments past the limit.
	body := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: big}\nspec: {endpointSelector: {}}\n" +
		strings.Repeat("# "+strings.Repeat("x", 77)+"\n", (8<<20)/80+1)
	file := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	root := newRoot(&out)
	root.SetArgs([]string{"--socket", sock, "policy", "import", file})
	err = root.Execute()
	if err == nil || !strings.Contains(err.Error(), "8 MiB") || !strings.Contains(err.Error(), "nothing was applied") {
		t.Fatalf("import: %v (output %q), want the agent's error naming the 8 MiB limit", err, out.String())
	}
	if n := len(repo.List()); n != 0 {
		t.Fatalf("%d policies imported from a file over the limit", n)
	}
}
