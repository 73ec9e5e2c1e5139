package proxy

import (
	"errors"
	"os"
	"testing"
)

func TestLock(t *testing.T) {
	dir := t.TempDir()
	if pid, err := Holder(dir); pid != 0 || err != nil {
		t.Fatalf("no lock file: Holder = %d, %v; want 0, nil", pid, err)
	}
	release, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if pid, err := Holder(dir); pid != os.Getpid() || err != nil {
		t.Errorf("held: Holder = %d, %v; want %d", pid, err, os.Getpid())
	}
	if _, err := Lock(dir); !errors.Is(err, ErrRunning) {
		t.Errorf("second Lock: %v, want ErrRunning", err)
	}
	release()
	if pid, err := Holder(dir); pid != 0 || err != nil {
		t.Errorf("released: Holder = %d, %v; want 0, nil", pid, err)
	}
	release, err = Lock(dir)
	if err != nil {
		t.Fatalf("Lock after release: %v", err)
	}
	release()
}
