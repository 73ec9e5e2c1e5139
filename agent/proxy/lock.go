package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrRunning is returned by Lock when another proxy holds the state dir.
var ErrRunning = errors.New("another filament-proxy runs with this state dir")

// LockFile is the file a running proxy keeps locked (flock) for its whole
// life, its pid in it: the supervisor finds by it the proxy to stop before
// it starts another (a proxy it cannot reach on the control socket may
// still hold the port, and a second one could not bind it).
func LockFile(stateDir string) string { return filepath.Join(stateDir, "proxy.lock") }

// Lock takes stateDir's lock for this process and writes its pid in it;
// release gives it up. Another proxy holding it: ErrRunning, with its pid.
func Lock(stateDir string) (release func(), err error) {
	f, err := os.OpenFile(LockFile(stateDir), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("proxy lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		pid, _ := readPID(f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (pid %d, %s)", ErrRunning, pid, LockFile(stateDir))
		}
		return nil, fmt.Errorf("proxy lock %s: %w", LockFile(stateDir), err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("proxy lock %s: %w", LockFile(stateDir), err)
	}
	return func() { f.Close() }, nil
}

// Holder returns the pid of the proxy holding stateDir's lock, 0 when
// none does. A holder that has not written its pid yet is an error (ask
// again).
func Holder(stateDir string) (int, error) {
	f, err := os.Open(LockFile(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("proxy lock: %w", err)
	}
	defer f.Close()
	// flock locks belong to open files: this one conflicts with the
	// holder's.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return 0, nil
	} else if !errors.Is(err, unix.EWOULDBLOCK) {
		return 0, fmt.Errorf("proxy lock %s: %w", LockFile(stateDir), err)
	}
	pid, err := readPID(f)
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("proxy lock %s: held, no pid in it yet", LockFile(stateDir))
	}
	return pid, nil
}

func readPID(f *os.File) (int, error) {
	b := make([]byte, 32)
	n, err := f.ReadAt(b, 0)
	if n == 0 {
		return 0, err
	}
	return strconv.Atoi(string(bytes.TrimSpace(b[:n])))
}
