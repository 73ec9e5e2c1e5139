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
)

// ErrExposed: the file's mode lets others than its owner read or write it.
var ErrExposed = errors.New("readable by others than its owner")

// maxSize bounds what Read returns; no key file comes near it.
const maxSize = 1 << 20

// Read returns the content of path when only its owner may read it (mode
// 0600 or 0400). Errors of opening the file are returned as they are
// (errors.Is(err, fs.ErrNotExist) tells a missing file).
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; it must be 0600 or 0400", ErrExposed, path, perm)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
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
