package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/filament-net/filament/deploy/image"
	"github.com/filament-net/filament/internal/testutil"
)

var created = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

// buildStatic builds the CNI plugin (the smallest of the binaries) as make
// static does: CGO off, -trimpath, fixed ldflags, for goos/goarch; env adds
// to the go command's environment.
func buildStatic(t *testing.T, goos, goarch, out string, env ...string) {
	t.Helper()
	buildCommand(t, "filament-cni", goos, goarch, out, env...)
}

// buildCommand builds cmd/<name> as buildStatic does.
func buildCommand(t *testing.T, name, goos, goarch, out string, env ...string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X github.com/filament-net/filament/internal/version.Version=v0.0.0-test",
		"-o", out, "github.com/filament-net/filament/cmd/"+name)
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0", "GOOS="+goos, "GOARCH="+goarch), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// buildImage builds the CNI plugin for every platform into a fresh directory
// and an image of it; it returns the index digest and the archive's sha256.
// With fresh, linux/amd64 is compiled with an empty build cache (the
// standard library and every dependency again), so the digest comparison
// covers the compiler's output and not only the cache's.
func buildImage(t *testing.T, fresh bool) (string, string, string) {
	t.Helper()
	root := t.TempDir()
	dirs := map[string]string{}
	for _, p := range image.Platforms {
		key := p.OS + "/" + p.Architecture
		dirs[key] = filepath.Join(root, p.OS, p.Architecture)
		var env []string
		if fresh && key == "linux/amd64" {
			env = append(env, "GOCACHE="+filepath.Join(root, "gocache"))
		}
		buildStatic(t, p.OS, p.Architecture, filepath.Join(dirs[key], "filament-cni"), env...)
	}
	idx, err := image.Build(image.Options{Name: "example.test/filament:v0", Version: "v0", Commit: "0123abc", Source: source, Created: created, Dirs: dirs, Binaries: []string{"filament-cni"}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	lay := filepath.Join(root, "layout")
	if err := image.WriteLayout(lay, idx, "example.test/filament:v0"); err != nil {
		t.Fatal(err)
	}
	ar := filepath.Join(root, "image.oci.tar")
	if err := image.WriteArchive(ar, lay, created); err != nil {
		t.Fatal(err)
	}
	return d.String(), fileSHA(t, ar), lay
}

// TestImageReproducible: the same commit (here: the same source and flags,
// built twice into different directories, the second time compiled from
// an empty build cache) gives the same image digest and
// the same archive bytes; the image has both platforms, the labels, a
// non-root user and no shell.
func TestImageReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: builds the CNI plugin for two platforms")
	}
	d1, a1, lay := buildImage(t, false)
	d2, a2, _ := buildImage(t, true)
	if d1 != d2 || a1 != a2 {
		t.Fatalf("two builds differ: digests %s vs %s, archives %s vs %s", d1, d2, a1, a2)
	}
	p, err := layout.FromPath(lay)
	if err != nil {
		t.Fatal(err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	tm, err := top.IndexManifest()
	if err != nil || len(tm.Manifests) != 1 || tm.Manifests[0].Annotations["io.containerd.image.name"] != "example.test/filament:v0" || tm.Manifests[0].Digest.String() != d1 {
		t.Fatalf("index.json = %+v (%v), want the image index %s named for containerd", tm, err, d1)
	}
	idx, err := top.ImageIndex(tm.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, m := range im.Manifests {
		seen[m.Platform.OS+"/"+m.Platform.Architecture] = true
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Config.User != image.NonRootUser || cf.Config.Labels["org.opencontainers.image.revision"] != "0123abc" || cf.Config.Labels["org.opencontainers.image.version"] != "v0" || cf.Architecture != m.Platform.Architecture {
			t.Errorf("%s config: user %q labels %v arch %s", m.Platform.Architecture, cf.Config.User, cf.Config.Labels, cf.Architecture)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("layers: %d, %v", len(layers), err)
		}
		rc, err := layers[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, h.Name)
			if !h.ModTime.Equal(created) || h.Uid != 0 || h.Gid != 0 {
				t.Errorf("%s: time %v owner %d:%d", h.Name, h.ModTime, h.Uid, h.Gid)
			}
		}
		rc.Close()
		if got := strings.Join(names, " "); got != "tmp/ usr/ usr/local/ usr/local/bin/ usr/local/bin/filament-cni" {
			t.Errorf("layer holds %s (no shell, only the binaries)", got)
		}
	}
	if !seen["linux/amd64"] || !seen["linux/arm64"] || len(seen) != 2 {
		t.Fatalf("platforms %v", seen)
	}
}

func TestImageRejectsMissingBinary(t *testing.T) {
	_, err := image.Build(image.Options{Name: "x:v", Version: "v", Created: created, Dirs: map[string]string{"linux/amd64": t.TempDir(), "linux/arm64": t.TempDir()}})
	if !errors.Is(err, image.ErrInvalid) || !strings.Contains(err.Error(), "binary filament:") {
		t.Fatalf("Build with no binaries: %v, want ErrInvalid naming binary filament", err)
	}
	_, err = image.Build(image.Options{Name: "x:v", Version: "v", Created: created, Dirs: map[string]string{"linux/amd64": t.TempDir()}})
	if err == nil || !strings.Contains(err.Error(), "linux/arm64") {
		t.Fatalf("Build without arm64: %v, want an error naming linux/arm64", err)
	}
}

// goVersionModules is `go version -m BIN`'s module list: path@version of
// each dep line (a replaced module's replacement where there is one).
func goVersionModules(t *testing.T, bin string) map[string]bool {
	t.Helper()
	out, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	mods := map[string]bool{}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[0] == "dep":
			last = f[1] + "@" + f[2]
			mods[last] = true
		case len(f) >= 3 && f[0] == "=>":
			delete(mods, last)
			mods[f[1]+"@"+f[2]] = true
		}
	}
	return mods
}

// cyclonedxTool is cyclonedx-gomod: $FILAMENT_CYCLONEDX (make test sets it;
// missing, the test fails), else make cyclonedx's cache (missing, skip).
func cyclonedxTool(t *testing.T) string {
	t.Helper()
	return testutil.CachedTool(t, "FILAMENT_CYCLONEDX", "cyclonedx-gomod-v1.10.0/cyclonedx-gomod", "cyclonedx")
}

// TestSBOMMatchesBinary: the SBOM written for an artifact lists exactly the
// modules `go version -m` reports for the binary in it, each with a version
// and a license, so it cannot silently go stale.
// The plugin, and the relay: it links github.com/hashicorp/go-metrics,
// whose license cyclonedx-gomod does not detect (reviewedLicenses).
func TestSBOMMatchesBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: builds a binary and runs cyclonedx-gomod")
	}
	tool := cyclonedxTool(t)
	for _, name := range []string{"filament-cni", "filament-relay"} {
		t.Run(name, func(t *testing.T) { sbomMatchesBinary(t, tool, name) })
	}
}

func sbomMatchesBinary(t *testing.T, tool, name string) {
	dir := t.TempDir()
	bin := filepath.Join(dir, name)
	buildCommand(t, name, runtime.GOOS, runtime.GOARCH, bin)
	o := options{dist: dir, name: "example.test/filament:v0", version: "v0", cyclonedx: tool, created: created}
	if err := writeSBOM(o, "artifact.tar.gz", "application", []string{bin}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "artifact.tar.gz.cdx.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var bom cdx.BOM
	if err := cdx.NewBOMDecoder(f, cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
		t.Fatal(err)
	}
	if bom.Metadata.Component.Name != "artifact.tar.gz" || bom.Metadata.Timestamp != created.Format(time.RFC3339) {
		t.Errorf("metadata component %+v at %s", bom.Metadata.Component, bom.Metadata.Timestamp)
	}
	got := map[string]bool{}
	for _, c := range *bom.Components {
		if c.Type != cdx.ComponentTypeLibrary {
			continue
		}
		got[c.Name+"@"+c.Version] = true
		if !hasLicense(&c) {
			t.Errorf("%s@%s has no license", c.Name, c.Version)
		}
	}
	want := goVersionModules(t, bin)
	if len(want) == 0 {
		t.Fatal("go version -m listed no modules")
	}
	for m := range want {
		if !got[m] {
			t.Errorf("SBOM lacks %s (go version -m has it)", m)
		}
	}
	for m := range got {
		if !want[m] {
			t.Errorf("SBOM has %s, which go version -m does not list", m)
		}
	}
}

func TestHelmIgnored(t *testing.T) {
	patterns := []string{"# comment", "", ".DS_Store", "*.bak", "*~", "secret/"}
	for rel, want := range map[string]bool{
		"values.yaml": false, "templates/a.yaml": false, "values.yaml.bak": true, "templates/x.yaml~": true,
		".DS_Store": true, "templates/.DS_Store": true, "secret/key.pem": true, "templates/secret.yaml": false,
	} {
		if got, err := helmIgnored(patterns, rel); err != nil || got != want {
			t.Errorf("helmIgnored(%q) = %v, %v; want %v", rel, got, err, want)
		}
	}
	if _, err := helmIgnored([]string{"!keep.yaml"}, "keep.yaml"); err == nil {
		t.Error("a negated pattern was accepted")
	}
}

// TestPackageChartAndSums: the chart packages as helm's layout
// (filament/Chart.yaml, ...) twice to the same bytes, and SHA256SUMS covers
// the dist files in sha256sum -c format.
func TestPackageChartAndSums(t *testing.T) {
	dist1, dist2 := t.TempDir(), t.TempDir()
	c1, err := packageChart("../helm/filament", dist1, created)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := packageChart("../helm/filament", dist2, created)
	if err != nil {
		t.Fatal(err)
	}
	if fileSHA(t, c1) != fileSHA(t, c2) {
		t.Fatal("two chart packages differ")
	}
	f, err := os.Open(c1)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	names := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names[h.Name] = true
	}
	for _, want := range []string{"filament/Chart.yaml", "filament/values.yaml", "filament/templates/agent-daemonset.yaml"} {
		if !names[want] {
			t.Errorf("chart package lacks %s: %v", want, names)
		}
	}
	if names["filament/.helmignore"] {
		t.Error("chart package holds .helmignore")
	}
	// A backup file beside the chart's files is left out, as .helmignore says.
	chart := t.TempDir()
	if err := os.CopyFS(chart, os.DirFS("../helm/filament")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(chart, "values.yaml.bak"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	c3, err := packageChart(chart, t.TempDir(), created)
	if err != nil {
		t.Fatal(err)
	}
	if fileSHA(t, c3) != fileSHA(t, c1) {
		t.Error("a *.bak file changed the chart package (.helmignore not applied)")
	}
	if err := writeSums(dist1); err != nil {
		t.Fatal(err)
	}
	sums, err := os.ReadFile(filepath.Join(dist1, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	if want := fileSHA(t, c1) + "  " + filepath.Base(c1) + "\n"; string(sums) != want {
		t.Fatalf("SHA256SUMS = %q, want %q", sums, want)
	}
	cmd := exec.Command("sha256sum", "-c", "SHA256SUMS")
	cmd.Dir = dist1
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c: %v\n%s", err, out)
	}
}
