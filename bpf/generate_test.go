package bpf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The committed objects and bindings are what `make generate` produces from
// the C sources; the test regenerates them in a scratch copy with clang-16.
func TestGeneratedObjectsAreFresh(t *testing.T) {
	if _, err := exec.LookPath("clang-16"); err != nil {
		t.Skip("skipped: clang-16 is not installed (make deps installs it)")
	}
	if testing.Short() {
		t.Skip("skipped in -short mode: regenerating takes seconds")
	}
	dir := t.TempDir()
	copyFile := func(src, dst string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	copyFile("../go.mod", filepath.Join(dir, "go.mod"))
	copyFile("../go.sum", filepath.Join(dir, "go.sum"))
	for _, sub := range []string{"bpf", "bpf/lib", "bpf/progs"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o755)
	}
	var sources []string
	for _, pattern := range []string{"*.[ch]", "lib/*.h", "progs/*.h"} {
		m, _ := filepath.Glob(pattern)
		sources = append(sources, m...)
	}
	sources = append(sources, "doc.go")
	for _, s := range sources {
		copyFile(s, filepath.Join(dir, "bpf", s))
	}
	cmd := exec.Command("go", "generate", ".")
	cmd.Dir = filepath.Join(dir, "bpf")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go generate: %v\n%s", err, out)
	}
	generated, _ := filepath.Glob(filepath.Join(dir, "bpf", "*_bpfel.*"))
	if len(generated) == 0 {
		t.Fatal("go generate produced nothing")
	}
	for _, g := range generated {
		fresh, _ := os.ReadFile(g)
		committed, err := os.ReadFile(filepath.Base(g))
		if err != nil || !bytes.Equal(fresh, committed) {
			t.Errorf("%s is stale: run make generate and commit the result", filepath.Base(g))
		}
	}
}
