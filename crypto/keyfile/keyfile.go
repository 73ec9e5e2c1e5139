// Package keyfile reads the node's secret files (private keys, shared
// keys). A file its group or others may read or write is refused: its
// secret is no longer the node's alone. The mode checked is the opened
// file's, so a file swapped between the check and the read is not read.
package keyfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// ErrExposed: the file's mode lets others than its owner read or write
// it, or its owner is another user's (who could change it).
var ErrExposed = errors.New("readable by others than its owner")

// maxSize bounds what Read returns; no key file comes near it.
const maxSize = 1 << 20

// Read returns the content of path when it is a regular file of the
// agent's user (or root's) that only its owner may read (mode 0600 or
// 0400). Errors of finding the file are returned as they are
// (errors.Is(err, fs.ErrNotExist) tells a missing file).
func Read(path string) ([]byte, error) {
	before, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	// Checked before opening: opening a FIFO would wait for a writer.
	if !before.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !os.SameFile(before, st) {
		return nil, fmt.Errorf("%s changed while it was opened", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; it must be 0600 or 0400", ErrExposed, path, perm)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 && int(sys.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("%w: %s is owned by user %d, neither root nor this process's user", ErrExposed, path, sys.Uid)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxSize {
		return nil, fmt.Errorf("%s holds more than %d bytes", path, maxSize)
	}
	return data, nil
}
