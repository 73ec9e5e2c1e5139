package keyfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/filament-net/filament/internal/testutil"
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

// A FIFO at the path is refused, not waited on; a file another user owns
// (who could change the key) is refused whatever its mode.
func TestReadRefusesFIFOsAndOthersFiles(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(fifo); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a FIFO: %v, want refused as no regular file", err)
	}
	t.Run("owner", func(t *testing.T) {
		testutil.RequireRoot(t)
		path := filepath.Join(t.TempDir(), "key")
		if err := os.WriteFile(path, []byte("secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, 12345, 12345); err != nil {
			t.Fatal(err)
		}
		if _, err := Read(path); !errors.Is(err, ErrExposed) || !strings.Contains(err.Error(), "12345") {
			t.Errorf("a key of user 12345: %v, want ErrExposed naming the owner", err)
		}
	})
}
