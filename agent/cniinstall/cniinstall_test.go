package cniinstall

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodConf = `{"cniVersion":"1.1.0","name":"filament","plugins":[{"type":"filament","agentSocket":"/var/run/filament/agent.sock"}]}`

// fixture: a fake plugin (ELF magic), a conflist and empty host dirs.
func fixture(t *testing.T, conf string) Files {
	t.Helper()
	src, host := t.TempDir(), t.TempDir()
	f := Files{Plugin: filepath.Join(src, "filament-cni"), Conflist: filepath.Join(src, "10-filament.conflist"),
		BinDir: filepath.Join(host, "bin"), ConfDir: filepath.Join(host, "net.d")}
	for _, d := range []string{f.BinDir, f.ConfDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(f.Plugin, []byte("\x7fELF plugin v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Conflist, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// Install puts the plugin as bin/filament (0755) and the conflist (0644),
// replaces an older plugin, leaves no temporary files; Remove takes both
// away and is idempotent.
func TestInstallRemove(t *testing.T) {
	f := fixture(t, goodConf)
	plugin, conf := f.Targets()
	if err := os.WriteFile(plugin, []byte("\x7fELF plugin v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Install(f); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, want string
		mode       os.FileMode
	}{{plugin, "\x7fELF plugin v2", 0o755}, {conf, goodConf, 0o644}} {
		b, err := os.ReadFile(c.path)
		if err != nil || string(b) != c.want {
			t.Fatalf("%s: %q, %v; want %q", c.path, b, err, c.want)
		}
		if st, _ := os.Stat(c.path); st.Mode().Perm() != c.mode {
			t.Fatalf("%s: mode %v, want %v", c.path, st.Mode().Perm(), c.mode)
		}
	}
	if got := entries(t, f.BinDir); len(got) != 1 {
		t.Fatalf("bin dir holds %q", got)
	}
	if got := entries(t, f.ConfDir); len(got) != 1 {
		t.Fatalf("conf dir holds %q", got)
	}
	for range 2 {
		if err := Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	if got := append(entries(t, f.BinDir), entries(t, f.ConfDir)...); len(got) != 0 {
		t.Fatalf("left after Remove: %q", got)
	}
}

// A conflist name other than the source's.
func TestInstallConfName(t *testing.T) {
	f := fixture(t, goodConf)
	f.ConfName = "05-filament.conflist"
	if err := Install(f); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, f.ConfDir); len(got) != 1 || got[0] != "05-filament.conflist" {
		t.Fatalf("conf dir holds %q", got)
	}
}

// Bad input is refused before anything is written: the error names it and
// the host dirs stay empty.
func TestInstallInvalid(t *testing.T) {
	for _, c := range []struct {
		name, conf string
		edit       func(f *Files)
		want       string
	}{
		{"relative bin dir", goodConf, func(f *Files) { f.BinDir = "opt/cni/bin" }, `bin dir "opt/cni/bin"`},
		{"unclean conf dir", goodConf, func(f *Files) { f.ConfDir += "/../net.d" }, "conf dir"},
		{"conf name with a slash", goodConf, func(f *Files) { f.ConfName = "../evil.conflist" }, `"../evil.conflist"`},
		{"hidden conf name", goodConf, func(f *Files) { f.ConfName = ".x.conflist" }, `".x.conflist"`},
		{"conf name suffix", goodConf, func(f *Files) { f.ConfName = "10-filament.conf" }, `"10-filament.conf"`},
		{"missing plugin", goodConf, func(f *Files) { f.Plugin += ".missing" }, "plugin"},
		{"plugin is a dir", goodConf, func(f *Files) { f.Plugin = f.BinDir }, "not a regular file"},
		{"plugin not ELF", goodConf, func(f *Files) { os.WriteFile(f.Plugin, []byte("#!/bin/sh\n"), 0o755) }, "not an ELF"},
		{"missing conflist", goodConf, func(f *Files) { f.Conflist += ".missing" }, "conflist"},
		{"conflist not JSON", "cniVersion: 1", nil, "not a JSON object"},
		{"conflist trailing data", goodConf + "{}", nil, "data after"},
		{"no cniVersion", `{"name":"f","plugins":[{"type":"filament"}]}`, nil, "no cniVersion"},
		{"no name", `{"cniVersion":"1.1.0","plugins":[{"type":"filament"}]}`, nil, "no name"},
		{"no plugins", `{"cniVersion":"1.1.0","name":"f","plugins":[]}`, nil, "no plugins"},
		{"other plugin type", `{"cniVersion":"1.1.0","name":"f","plugins":[{"type":"bridge"}]}`, nil, `"bridge"`},
		{"huge conflist", `{"cniVersion":"1.1.0","name":"` + strings.Repeat("a", maxConflist) + `","plugins":[{"type":"filament"}]}`, nil, "larger than"},
	} {
		f := fixture(t, c.conf)
		if c.edit != nil {
			c.edit(&f)
		}
		err := Install(f)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: %v; want ErrInvalid naming %q", c.name, err, c.want)
		}
		for _, d := range []string{f.BinDir, f.ConfDir} {
			if es, err := os.ReadDir(d); err == nil && len(es) != 0 {
				t.Fatalf("%s: %s holds %d files after a refused install", c.name, d, len(es))
			}
		}
	}
}

// A failed write (the conf dir is missing) names the directory and
// leaves no temporary file; the plugin, written first, is in place without
// a conflist, which no runtime runs.
func TestInstallWriteFailure(t *testing.T) {
	f := fixture(t, goodConf)
	os.Remove(f.ConfDir)
	if err := Install(f); err == nil || !strings.Contains(err.Error(), f.ConfDir) {
		t.Fatalf("got %v, want an error naming %s", err, f.ConfDir)
	}
	if got := entries(t, f.BinDir); len(got) != 1 || got[0] != PluginType {
		t.Fatalf("bin dir holds %q", got)
	}
}

// FuzzCheckConflist: a hostile conflist never panics, and an accepted one
// names the filament plugin first.
func FuzzCheckConflist(f *testing.F) {
	f.Add([]byte(goodConf))
	f.Add([]byte(`{"cniVersion":"1","name":"x","plugins":[1]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if CheckConflist(b) == nil && !bytes.Contains(b, []byte("plugins")) {
			t.Fatalf("accepted %q without plugins", b)
		}
	})
}
