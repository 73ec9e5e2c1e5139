package lab

// The lab's state file and its lock.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

func (l *Lab) save() error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(l.dir, "lab.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(l.dir, "lab.json"))
}

// Load reads a lab's state.
func Load(name string) (*Lab, error) {
	if err := validName("lab", name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(labDir(name), "lab.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: lab %q (start it with: filament-lab up --name %s)", ErrNotFound, name, name)
		}
		return nil, err
	}
	l := &Lab{dir: labDir(name)}
	if err := json.Unmarshal(b, l); err != nil {
		return nil, fmt.Errorf("lab %q state: %w", name, err)
	}
	return l, nil
}

// lock serialises changes to one lab across processes.
// reload takes the lab's lock and reloads its state (another process may
// have changed it); the caller changes l, saves and unlocks.
func (l *Lab) reload() (unlock func(), err error) {
	unlock, err = lock(l.Name)
	if err != nil {
		return nil, err
	}
	cur, err := Load(l.Name)
	if err != nil {
		unlock()
		return nil, err
	}
	*l = *cur
	return unlock, nil
}

func lock(name string) (func(), error) {
	if err := os.MkdirAll(labDir(name), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(labDir(name), ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}
