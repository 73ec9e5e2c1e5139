package keyfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadRefusesExposedFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o602} {
		os.Chmod(path, mode)
		if _, err := Read(path); !errors.Is(err, ErrExposed) || !strings.Contains(err.Error(), path) {
			t.Errorf("mode %o: %v, want ErrExposed naming the file", mode, err)
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		os.Chmod(path, mode)
		if data, err := Read(path); err != nil || string(data) != "secret" {
			t.Errorf("mode %o: %q, %v", mode, data, err)
		}
	}
	if _, err := Read(path + ".missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
	dir := filepath.Join(t.TempDir(), "d")
	os.Mkdir(dir, 0o700)
	if _, err := Read(dir); err == nil {
		t.Error("a directory was read as a key file")
	}
}
