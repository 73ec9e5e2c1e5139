package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/filament-net/filament/internal/version"
)

// TestVersionPrintsBuildInfo: `filament version` prints the version, commit,
// Go version and build date, as a table and as JSON.
func TestVersionPrintsBuildInfo(t *testing.T) {
	var out bytes.Buffer
	root := newRoot(&out)
	root.SetArgs([]string{"version", "-o", "json"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	var in version.Info
	if err := json.Unmarshal(out.Bytes(), &in); err != nil {
		t.Fatalf("version -o json: %v: %s", err, out.String())
	}
	if in.Version != version.Version || in.GoVersion != runtime.Version() || in.Commit == "" || in.BuildDate == "" {
		t.Fatalf("version -o json = %+v", in)
	}
	out.Reset()
	root = newRoot(&out)
	root.SetArgs([]string{"version"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"version:", "commit:", "go:", runtime.Version(), "build date:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("version table lacks %q:\n%s", want, out.String())
		}
	}
}
