package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

// The file gets its content and mode whatever lies beside it (a stale
// temporary file of a fixed name kept its own mode before), and nothing
// is left behind; a failed write leaves the file as it was.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := os.WriteFile(path+".tmp", []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if b, _ := os.ReadFile(path); err != nil || string(b) != "one" || st.Mode().Perm() != 0o600 {
		t.Fatalf("after Write: %q, mode %v (%v)", b, st.Mode().Perm(), err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".key.tmp*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	if err := Write(filepath.Join(dir, "missing", "key"), []byte("x"), 0o600); err == nil {
		t.Error("a write into a missing directory succeeded")
	}
	if b, _ := os.ReadFile(path); string(b) != "one" {
		t.Errorf("the file changed to %q", b)
	}
}
