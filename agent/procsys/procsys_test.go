package procsys

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/internal/testutil"
)

func TestRemountFlags(t *testing.T) {
	for _, c := range []struct {
		st   int64
		want uintptr
	}{
		{unix.ST_RDONLY, unix.MS_REMOUNT | unix.MS_BIND},
		{unix.ST_RDONLY | unix.ST_NOSUID | unix.ST_NODEV | unix.ST_NOEXEC | unix.ST_RELATIME,
			unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RELATIME},
		{unix.ST_NOATIME | unix.ST_NODIRATIME, unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NOATIME | unix.MS_NODIRATIME},
	} {
		if got := RemountFlags(c.st); got != c.want {
			t.Errorf("RemountFlags(%#x) = %#x, want %#x", c.st, got, c.want)
		}
		if RemountFlags(c.st)&unix.MS_RDONLY != 0 {
			t.Errorf("RemountFlags(%#x) keeps MS_RDONLY", c.st)
		}
	}
}

// A read-only bind mount (nosuid, nodev, noexec, as a runtime mounts
// /proc/sys) becomes writable and keeps its other flags; a second call
// leaves the writable mount alone.
func TestRemountWritable(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	ro := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount("", dir, "", ro, ""); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o600); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write before the remount: %v, want EROFS", err)
	}
	for range 2 {
		if err := RemountWritable(dir); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatalf("write after the remount: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if want := int64(unix.ST_NOSUID | unix.ST_NODEV | unix.ST_NOEXEC); st.Flags&want != want {
		t.Fatalf("flags %#x after the remount: lost nosuid/nodev/noexec", st.Flags)
	}
}

func TestRemountWritableMissing(t *testing.T) {
	err := RemountWritable(filepath.Join(t.TempDir(), "none"))
	if !errors.Is(err, ErrRemount) {
		t.Fatalf("got %v, want ErrRemount", err)
	}
}
