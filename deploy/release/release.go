package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/deploy/image"
)

// entry is one file of a reproducible tarball.
type entry struct {
	name string // path inside the archive
	src  string // file on disk
	mode int64
}

// writeTarGz writes entries, sorted by name, into a gzip'd tar at path with
// every time set to created and root ownership.
func writeTarGz(path string, entries []entry, created time.Time) error {
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	zw, err := gzip.NewWriterLevel(f, gzip.BestCompression)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		data, err := os.ReadFile(e.src)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: e.name, Mode: e.mode, Size: int64(len(data)), ModTime: created.UTC(), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	for _, c := range []io.Closer{tw, zw, f} {
		if err := c.Close(); err != nil {
			return err
		}
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil { // CreateTemp's 0600 is not a release file's
		return err
	}
	return os.Rename(f.Name(), path)
}

// chartMeta is what packaging needs from Chart.yaml.
type chartMeta struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// helmIgnored reports whether rel (a chart file's slash path) matches one
// of .helmignore's patterns: a pattern matches the whole path or any one
// of its elements (a trailing / names directories); blank lines and #
// comments are skipped. Helm's negations (!) are not supported: a chart
// that uses one is refused.
func helmIgnored(patterns []string, rel string) (bool, error) {
	elems := strings.Split(rel, "/")
	for _, p := range patterns {
		if p = strings.TrimSpace(p); p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		if strings.HasPrefix(p, "!") {
			return false, fmt.Errorf(".helmignore: negated pattern %q is not supported", p)
		}
		p = strings.TrimSuffix(p, "/")
		if ok, err := path.Match(p, rel); err != nil {
			return false, fmt.Errorf(".helmignore: pattern %q: %w", p, err)
		} else if ok {
			return true, nil
		}
		for _, e := range elems {
			if ok, _ := path.Match(p, e); ok {
				return true, nil
			}
		}
	}
	return false, nil
}

// packageChart writes the chart in dir as <dist>/<name>-<version>.tgz, the
// layout `helm package` gives (every file under <name>/), leaving out what
// .helmignore excludes (helmIgnored); it returns the file's path.
func packageChart(dir, dist string, created time.Time) (string, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	var m chartMeta
	if err := yaml.Unmarshal(raw, &m); err != nil {
		return "", fmt.Errorf("%s/Chart.yaml: %w", dir, err)
	}
	if m.Name == "" || m.Version == "" {
		return "", fmt.Errorf("%s/Chart.yaml: name and version are required", dir)
	}
	var ignore []string
	if b, err := os.ReadFile(filepath.Join(dir, ".helmignore")); err == nil {
		ignore = strings.Split(string(b), "\n")
	}
	var entries []entry
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == ".helmignore" {
			return nil
		}
		if skip, err := helmIgnored(ignore, filepath.ToSlash(rel)); err != nil || skip {
			return err
		}
		entries = append(entries, entry{name: m.Name + "/" + filepath.ToSlash(rel), src: p, mode: 0o644})
		return nil
	})
	if err != nil {
		return "", err
	}
	out := filepath.Join(dist, m.Name+"-"+m.Version+".tgz")
	return out, writeTarGz(out, entries, created)
}

// writeSums writes <dist>/SHA256SUMS over the regular files directly in
// dist (sorted, sha256sum -c format).
func writeSums(dist string) error {
	des, err := os.ReadDir(dist)
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, de := range des {
		if !de.Type().IsRegular() || de.Name() == "SHA256SUMS" || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		f, err := os.Open(filepath.Join(dist, de.Name()))
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), de.Name())
	}
	return os.WriteFile(filepath.Join(dist, "SHA256SUMS"), []byte(b.String()), 0o644)
}

// writeRelease writes everything but the image (make image ran first) and
// the image's SBOM, then SHA256SUMS.
func writeRelease(o options) error {
	if o.cyclonedx == "" {
		return errors.New("-cyclonedx is required (make cyclonedx installs cyclonedx-gomod)")
	}
	if _, err := os.Stat(imageArchive(o)); err != nil {
		return fmt.Errorf("the image archive (make image): %w", err)
	}
	var all []string // every binary, for the image's SBOM
	for _, p := range image.Platforms {
		key := p.OS + "/" + p.Architecture
		dir := platformDir(o.dist, key)
		var entries []entry
		var bins []string
		for _, b := range image.Binaries {
			src := filepath.Join(dir, b)
			entries = append(entries, entry{name: b, src: src, mode: 0o755})
			bins = append(bins, src)
		}
		all = append(all, bins...)
		name := fmt.Sprintf("filament-%s-%s-%s.tar.gz", o.version, p.OS, p.Architecture)
		if err := writeTarGz(filepath.Join(o.dist, name), entries, o.created); err != nil {
			return err
		}
		if err := writeSBOM(o, name, "application", bins); err != nil {
			return err
		}
	}
	if err := writeSBOM(o, filepath.Base(imageArchive(o)), "container", all); err != nil {
		return err
	}
	manifest := "filament-" + o.version + ".yaml"
	if err := copyFile(o.manifest, filepath.Join(o.dist, manifest)); err != nil {
		return err
	}
	if err := writeSBOM(o, manifest, "file", nil); err != nil {
		return err
	}
	chart, err := packageChart(o.chart, o.dist, o.created)
	if err != nil {
		return err
	}
	if err := writeSBOM(o, filepath.Base(chart), "file", nil); err != nil {
		return err
	}
	return writeSums(o.dist)
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}
