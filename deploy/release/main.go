// Command release writes Filament's release artifacts (make image, make
// release): the OCI image from the static binaries make built per platform,
// then per-platform binary tarballs, the rendered manifests, the packaged
// Helm chart, a CycloneDX SBOM per artifact and SHA256SUMS, all under one
// dist directory. Every archive is reproducible: sorted entries, fixed owners
// and the commit's time.
//
//	go run ./deploy/release image   -dist dist -name REF -version V -commit C -created RFC3339
//	go run ./deploy/release release -dist dist -name REF -version V -commit C -created RFC3339 -cyclonedx PATH
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/filament-net/filament/deploy/image"
)

// source is the image's org.opencontainers.image.source label.
const source = "https://github.com/filament-net/filament"

type options struct {
	dist, name, version, commit, cyclonedx, chart, manifest string
	created                                                 time.Time
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 || (args[0] != "image" && args[0] != "release") {
		return fmt.Errorf("usage: release image|release [flags]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	var o options
	var created string
	fs.StringVar(&o.dist, "dist", "dist", "output directory; binaries are read from <dist>/build/<os>_<arch>/")
	fs.StringVar(&o.name, "name", "", "image reference, e.g. ghcr.io/filament-net/filament:0.1.0")
	fs.StringVar(&o.version, "version", "", "release version")
	fs.StringVar(&o.commit, "commit", "", "git commit")
	fs.StringVar(&created, "created", "", "every timestamp in the artifacts (RFC 3339; the commit's time)")
	fs.StringVar(&o.cyclonedx, "cyclonedx", "", "cyclonedx-gomod binary (release only)")
	fs.StringVar(&o.chart, "chart", "deploy/helm/filament", "Helm chart directory (release only)")
	fs.StringVar(&o.manifest, "manifest", "deploy/kube/filament.yaml", "rendered manifests (release only)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	t, err := time.Parse(time.RFC3339, created)
	if err != nil {
		return fmt.Errorf("-created %q: %w", created, err)
	}
	o.created = t
	if args[0] == "image" {
		digest, err := writeImage(o)
		if err != nil {
			return err
		}
		fmt.Println(digest)
		return nil
	}
	return writeRelease(o)
}

// platformDir is where make put one platform's static binaries.
func platformDir(dist, osArch string) string {
	return filepath.Join(dist, "build", filepath.FromSlash(osArch))
}

func imageArchive(o options) string {
	return filepath.Join(o.dist, "filament-image-"+o.version+".oci.tar")
}

// writeImage builds the image index and writes <dist>/image (OCI layout) and
// its archive; it returns the index digest.
func writeImage(o options) (string, error) {
	dirs := map[string]string{}
	for _, p := range image.Platforms {
		key := p.OS + "/" + p.Architecture
		dirs[key] = platformDir(o.dist, key)
	}
	idx, err := image.Build(image.Options{Name: o.name, Version: o.version, Commit: o.commit, Source: source, Created: o.created, Dirs: dirs})
	if err != nil {
		return "", err
	}
	layoutDir := filepath.Join(o.dist, "image")
	if err := image.WriteLayout(layoutDir, idx, o.name); err != nil {
		return "", err
	}
	if err := image.WriteArchive(imageArchive(o), layoutDir, o.created); err != nil {
		return "", err
	}
	d, err := idx.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), os.WriteFile(filepath.Join(layoutDir, "..", "image.digest"), []byte(d.String()+"\n"), 0o644)
}
