// Package cniinstall puts Filament's CNI plugin and its network
// configuration on a node, and takes them away again: the plugin binary as
// <bin dir>/filament (the conflist's plugin type) and the conflist in the
// runtime's configuration directory. Each file is written aside in its
// target directory and renamed into place, so a runtime never runs half a
// binary or reads half a conflist; every input is checked before anything
// is written.
package cniinstall

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/filament-net/filament/internal/atomicfile"
)

// PluginType is the conflist's plugin type, and so the name of the plugin
// binary in the bin dir.
const PluginType = "filament"

// ErrInvalid: an input is unusable; the message names it.
var ErrInvalid = errors.New("invalid CNI install input")

// maxConflist bounds the conflist read (a real one is a few hundred bytes).
const maxConflist = 1 << 20

// Files says what goes where.
type Files struct {
	// Plugin is the filament-cni binary to install.
	Plugin string
	// Conflist is the network configuration to install.
	Conflist string
	// BinDir is the node's CNI plugin directory (e.g. /opt/cni/bin).
	BinDir string
	// ConfDir is the node's CNI configuration directory (e.g. /etc/cni/net.d).
	ConfDir string
	// ConfName is the conflist's file name in ConfDir ("" = Conflist's base name).
	ConfName string
}

func (f Files) confName() string {
	if f.ConfName == "" {
		return filepath.Base(f.Conflist)
	}
	return f.ConfName
}

// Targets are the paths Install writes and Remove deletes.
func (f Files) Targets() (plugin, conflist string) {
	return filepath.Join(f.BinDir, PluginType), filepath.Join(f.ConfDir, f.confName())
}

// check validates the destinations.
func (f Files) check() error {
	for _, d := range []struct{ field, dir string }{{"bin dir", f.BinDir}, {"conf dir", f.ConfDir}} {
		if !filepath.IsAbs(d.dir) || filepath.Clean(d.dir) != d.dir {
			return fmt.Errorf("%w: %s %q: want a clean absolute path", ErrInvalid, d.field, d.dir)
		}
	}
	name := f.confName()
	if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") || len(name) > 255 ||
		!(strings.HasSuffix(name, ".conflist")) {
		return fmt.Errorf("%w: conflist name %q: want a file name ending in .conflist, not starting with '.'", ErrInvalid, name)
	}
	return nil
}

// Install checks the inputs, then installs the plugin and, once it is in
// place, the conflist (a runtime that sees the conflist finds the plugin).
func Install(f Files) error {
	if err := f.check(); err != nil {
		return err
	}
	plugin, err := readPlugin(f.Plugin)
	if err != nil {
		return err
	}
	conf, err := readConflist(f.Conflist)
	if err != nil {
		return err
	}
	pluginPath, confPath := f.Targets()
	if err := writeAside(pluginPath, plugin, 0o755); err != nil {
		return err
	}
	return writeAside(confPath, conf, 0o644)
}

// Remove deletes the conflist first (the runtime stops choosing Filament),
// then the plugin; files already gone are fine.
func Remove(f Files) error {
	if err := f.check(); err != nil {
		return err
	}
	pluginPath, confPath := f.Targets()
	for _, p := range []string{confPath, pluginPath} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	return nil
}

// readPlugin reads the plugin: a regular ELF file.
func readPlugin(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: plugin: %v", ErrInvalid, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: plugin %s: not a regular file", ErrInvalid, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: plugin: %v", ErrInvalid, err)
	}
	if !bytes.HasPrefix(b, []byte("\x7fELF")) {
		return nil, fmt.Errorf("%w: plugin %s: not an ELF executable", ErrInvalid, path)
	}
	return b, nil
}

// conflist is what Install checks of a network configuration list.
type conflist struct {
	CNIVersion string            `json:"cniVersion"`
	Name       string            `json:"name"`
	Plugins    []json.RawMessage `json:"plugins"`
}

// readConflist reads the conflist and checks it: a JSON object with a
// cniVersion, a name and plugins, the first of type PluginType.
func readConflist(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: conflist: %v", ErrInvalid, err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxConflist+1))
	if err != nil {
		return nil, fmt.Errorf("%w: conflist %s: %v", ErrInvalid, path, err)
	}
	if err := CheckConflist(b); err != nil {
		return nil, fmt.Errorf("%w: conflist %s: %v", ErrInvalid, path, err)
	}
	return b, nil
}

// CheckConflist validates a conflist's content.
func CheckConflist(b []byte) error {
	if len(b) > maxConflist {
		return fmt.Errorf("larger than %d bytes", maxConflist)
	}
	var c conflist
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&c); err != nil {
		return fmt.Errorf("not a JSON object: %v", err)
	}
	if dec.More() {
		return errors.New("data after the JSON object")
	}
	if c.CNIVersion == "" {
		return errors.New("no cniVersion")
	}
	if c.Name == "" {
		return errors.New("no name")
	}
	if len(c.Plugins) == 0 {
		return errors.New("no plugins")
	}
	var first struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(c.Plugins[0], &first); err != nil {
		return fmt.Errorf("plugins[0]: %v", err)
	}
	if first.Type != PluginType {
		return fmt.Errorf("plugins[0].type %q, want %q (the installed plugin's name)", first.Type, PluginType)
	}
	return nil
}

// writeAside writes b to a temporary file in path's directory, syncs it
// and renames it over path.
func writeAside(path string, b []byte, mode os.FileMode) error {
	if err := atomicfile.Write(path, b, mode); err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	return nil
}
