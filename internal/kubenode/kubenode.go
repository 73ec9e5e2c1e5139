// Package kubenode is test support for the real-node test: it builds the
// images a kubelet and containerd need offline (the pause image from
// ./pause, and throwaway images of static binaries) as image tarballs that
// `ctr images import` takes. Nothing here is part of the product.
package kubenode

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// PauseRef is the pause image's reference (the kubelet's
// --pod-infra-container-image and containerd's sandbox_image).
const PauseRef = "registry.k8s.io/pause:filament-test"

// BuildStatic builds Go package pkg as a static binary (CGO off) into dir
// and returns its path.
func BuildStatic(dir, pkg, out string) (string, error) {
	path := filepath.Join(dir, out)
	cmd := exec.Command("go", "build", "-trimpath", "-o", path, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return path, nil
}

// File is one file of an image layer.
type File struct {
	// Path in the image (absolute), Source on this machine.
	Path, Source string
	Mode         int64
}

// Image packs files into a one-layer image running entrypoint as user
// (e.g. "65532"; "" = root) and writes it as a tarball that `ctr images
// import` reads, tagged ref.
func Image(tarPath, ref string, files []File, entrypoint []string, user string) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(f.Path); d != "/" && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	for _, d := range sortedDirs(dirs) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f.Source)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.Path[1:], Mode: f.Mode, Size: int64(len(b)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := tw.Write(b); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Config = v1.Config{Entrypoint: entrypoint, User: user, Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(tarPath, tag, img)
}

// sortedDirs: parents before their children (a prefix sorts first).
func sortedDirs(m map[string]bool) []string {
	return slices.Sorted(maps.Keys(m))
}

// PauseImage builds ./pause static and writes the pause image tarball.
func PauseImage(dir, tarPath string) error {
	bin, err := BuildStatic(dir, "github.com/filament-net/filament/internal/kubenode/pause", "pause")
	if err != nil {
		return err
	}
	return Image(tarPath, PauseRef, []File{{Path: "/pause", Source: bin, Mode: 0o755}}, []string{"/pause"}, "65535")
}
