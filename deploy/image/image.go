// Package image builds Filament's container image without Docker or a
// registry: an OCI image index (one image per platform) holding the static
// binaries under /usr/local/bin, written as an OCI layout directory and as an
// OCI archive tarball that `ctr images import` and `podman load` take.
//
// The build is reproducible: the same binaries and Options give the same
// digest. Every timestamp is Options.Created (the commit's time), tar entries
// are sorted with fixed owners and modes, and nothing is read from the
// environment. The image has no shell; its default user is 65532 (the
// clustermesh apiserver and the relay run as that user), and the agent's
// DaemonSet runs it as root with the capabilities it needs.
package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Binaries are the programs the image holds, each in /usr/local/bin.
var Binaries = []string{"filament-agent", "filament", "filament-cni", "filament-clustermesh-apiserver", "filament-relay", "filament-proxy"}

// Platforms the release builds for.
var Platforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

// NonRootUser is the image's default user (uid:gid).
const NonRootUser = "65532:65532"

// ErrInvalid reports bad options or a missing binary.
var ErrInvalid = errors.New("invalid image input")

// Options describe the image.
type Options struct {
	Name    string    // reference the archive is imported as, e.g. ghcr.io/filament-net/filament:0.1.0
	Version string    // org.opencontainers.image.version
	Commit  string    // org.opencontainers.image.revision
	Source  string    // org.opencontainers.image.source
	Created time.Time // every timestamp in the image (use the commit's time)
	// Dirs maps "os/arch" to the directory holding that platform's binaries.
	Dirs map[string]string
	// Binaries to take from each directory; nil means Binaries.
	Binaries []string
	// Platforms to build; nil means Platforms.
	Platforms []v1.Platform
}

// Build assembles the image index from opts.Dirs.
func Build(opts Options) (v1.ImageIndex, error) {
	if opts.Name == "" || opts.Version == "" || opts.Created.IsZero() {
		return nil, fmt.Errorf("%w: name, version and created time are required", ErrInvalid)
	}
	platforms := opts.Platforms
	if platforms == nil {
		platforms = Platforms
	}
	for _, p := range platforms {
		if _, ok := opts.Dirs[p.OS+"/"+p.Architecture]; !ok {
			return nil, fmt.Errorf("%w: no binaries directory for platform %s/%s", ErrInvalid, p.OS, p.Architecture)
		}
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range platforms {
		key := p.OS + "/" + p.Architecture
		img, err := platformImage(opts, p, opts.Dirs[key])
		if err != nil {
			return nil, fmt.Errorf("platform %s: %w", key, err)
		}
		pl := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &pl}})
	}
	return idx, nil
}

func platformImage(opts Options, p v1.Platform, dir string) (v1.Image, error) {
	bins := opts.Binaries
	if bins == nil {
		bins = Binaries
	}
	layerTar, err := binariesTar(dir, bins, opts.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: opts.Created.UTC()}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer, History: v1.History{
		Created: created, CreatedBy: "make image (deploy/image): static Filament binaries",
	}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = p.OS, p.Architecture, created
	cf.Config = v1.Config{
		User:       NonRootUser,
		Entrypoint: []string{"/usr/local/bin/filament-agent"},
		Env:        []string{"PATH=/usr/local/bin"},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":    "filament",
			"org.opencontainers.image.version":  opts.Version,
			"org.opencontainers.image.revision": opts.Commit,
			"org.opencontainers.image.source":   opts.Source,
			"org.opencontainers.image.created":  created.Format(time.RFC3339),
		},
	}
	return mutate.ConfigFile(img, cf)
}

// binariesTar is the layer: /usr/local/bin with bins (mode 0755) and a
// sticky /tmp, sorted, owned by root, stamped with created.
func binariesTar(dir string, bins []string, created time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(name string, typ byte, mode int64, size int64) *tar.Header {
		return &tar.Header{Name: name, Typeflag: typ, Mode: mode, Size: size, ModTime: created.UTC(), Format: tar.FormatPAX}
	}
	for _, d := range []string{"tmp/", "usr/", "usr/local/", "usr/local/bin/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(hdr(d, tar.TypeDir, mode, 0)); err != nil {
			return nil, err
		}
	}
	names := append([]string(nil), bins...)
	sort.Strings(names)
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("%w: binary %s: %w", ErrInvalid, name, err)
		}
		if err := tw.WriteHeader(hdr("usr/local/bin/"+name, tar.TypeReg, 0o755, int64(len(data)))); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteLayout writes idx as an OCI layout directory (replacing dir), its
// index.json naming it opts.Name for containerd and podman.
func WriteLayout(dir string, idx v1.ImageIndex, name string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          name,
		"org.opencontainers.image.ref.name": name,
	}))
}

// WriteArchive tars the OCI layout directory dir into path (sorted entries,
// fixed times and owners), the form `ctr images import` and
// `podman load` read.
func WriteArchive(path, dir string, created time.Time) error {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(files)
	out, err := os.CreateTemp(filepath.Dir(path), ".image-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	tw := tar.NewWriter(out)
	for _, p := range files {
		rel := filepath.ToSlash(strings.TrimPrefix(p, dir+string(filepath.Separator)))
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: rel, Mode: 0o644, ModTime: created.UTC(), Typeflag: tar.TypeReg, Size: fi.Size(), Format: tar.FormatPAX}
		if fi.IsDir() {
			h.Name, h.Mode, h.Typeflag, h.Size = rel+"/", 0o755, tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !fi.IsDir() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Chmod(out.Name(), 0o644); err != nil { // CreateTemp's 0600 is not a release file's
		return err
	}
	return os.Rename(out.Name(), path)
}
