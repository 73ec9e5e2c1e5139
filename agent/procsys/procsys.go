// Package procsys makes /proc/sys writable for the agent: a container
// runtime mounts it read-only in an unprivileged container, and the agent
// writes sysctls of the node's network namespace (ip_forward, rp_filter and
// forwarding of each pod's veth). With CAP_SYS_ADMIN and a security profile
// that allows mount, a bind remount without MS_RDONLY makes that one mount
// read-write; the container's other mounts are untouched.
package procsys

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Path is the mount the agent remounts.
const Path = "/proc/sys"

// ErrRemount: the remount was refused (no CAP_SYS_ADMIN, or a security
// profile forbids mount).
var ErrRemount = errors.New("cannot remount read-write")

// RemountWritable remounts the mount at path read-write, keeping its
// other flags (nosuid, nodev, noexec, atime); a writable mount is left
// alone.
func RemountWritable(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("%w: %s: statfs: %v", ErrRemount, path, err)
	}
	if st.Flags&unix.ST_RDONLY == 0 {
		return nil
	}
	if err := unix.Mount("", path, "", RemountFlags(st.Flags), ""); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrRemount, path, err)
	}
	return nil
}

// RemountFlags are the mount(2) flags of a read-write bind remount of a
// mount whose statfs flags are st: the per-mount flags it has, except
// read-only. A bind remount sets the mount's flags to exactly these, and
// clearing a flag the mount has (nosuid...) is refused where it is locked.
func RemountFlags(st int64) uintptr {
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND)
	for _, f := range []struct {
		st    int64
		mount uintptr
	}{
		{unix.ST_NOSUID, unix.MS_NOSUID},
		{unix.ST_NODEV, unix.MS_NODEV},
		{unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME},
		{unix.ST_NODIRATIME, unix.MS_NODIRATIME},
		{unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if st&f.st != 0 {
			flags |= f.mount
		}
	}
	return flags
}
