// Package atomicfile writes a file so that readers, and the file after a
// crash, see either its old content or its new content whole: a temporary
// file of its own in the same directory, given its mode before any byte
// is written, synced, renamed over the file, and the directory synced.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data, mode perm. On error path is unchanged and
// no temporary file is left.
func Write(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // best effort: the rename survives a crash
		d.Close()
	}
	return nil
}
