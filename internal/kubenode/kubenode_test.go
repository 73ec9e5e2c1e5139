package kubenode

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/internal/testutil"
)

// The pause image, built here, imports into a containerd of the test's own
// and runs under runc: it sleeps until SIGTERM, then exits 0.
func TestPauseImageRuns(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	tarPath := filepath.Join(dir, "pause.tar")
	if err := PauseImage(dir, tarPath); err != nil {
		t.Fatal(err)
	}
	// containerd's root must not be on tmpfs under overlay: use /var/tmp.
	cdir, err := os.MkdirTemp("/var/tmp", "filament-kubenode-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(cdir) })
	c, err := StartContainerd(cdir, filepath.Join(dir, "cni-bin"), filepath.Join(dir, "cni-conf"), "")
	if errors.Is(err, ErrMissing) && os.Getenv("FILAMENT_REQUIRE_PRIVILEGED") != "1" {
		t.Skipf("skipped: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	if _, err := c.Ctr("images", "import", tarPath); err != nil {
		t.Fatal(err)
	}
	id := "pause-" + filepath.Base(cdir)
	if out, err := c.Ctr("run", "-d", PauseRef, id); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() { c.Ctr("containers", "delete", id) })
	waitTask(t, c, id, "RUNNING")
	if _, err := c.Ctr("tasks", "kill", "-s", "SIGTERM", id); err != nil {
		t.Fatal(err)
	}
	// SIGTERM alone stops it (a pause that ignored it would need SIGKILL).
	waitTask(t, c, id, "STOPPED")
}

func waitTask(t *testing.T, c *Containerd, id, status string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := c.Ctr("tasks", "list")
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == id && f[2] == status {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s not %s in 30s:\n%s", id, status, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
