package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// binarySBOM runs cyclonedx-gomod on one built binary: every Go module the
// binary was linked from (its build info), with version, hashes and the
// licenses found in the module cache.
func binarySBOM(tool, bin, version string) (*cdx.BOM, error) {
	out, err := os.CreateTemp("", "sbom-*.json")
	if err != nil {
		return nil, err
	}
	out.Close()
	defer os.Remove(out.Name())
	cmd := exec.Command(tool, "bin", "-json", "-licenses", "-noserial", "-notimestamp", "-output", out.Name(), "-version", version, bin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("cyclonedx-gomod bin %s: %w: %s", bin, err, stderr.String())
	}
	f, err := os.Open(out.Name())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var bom cdx.BOM
	if err := cdx.NewBOMDecoder(f, cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
		return nil, fmt.Errorf("SBOM of %s: %w", bin, err)
	}
	return &bom, nil
}

// mergeSBOMs makes one artifact's SBOM from its binaries' SBOMs: each binary
// becomes a component, the modules are the union (by bom-ref: module path
// and version) and so are the dependency edges.
func mergeSBOMs(artifact, kind, version string, created time.Time, parts []*cdx.BOM) *cdx.BOM {
	bom := cdx.NewBOM()
	bom.Metadata = &cdx.Metadata{
		Timestamp: created.UTC().Format(time.RFC3339),
		Component: &cdx.Component{BOMRef: "artifact:" + artifact, Type: cdx.ComponentType(kind), Name: artifact, Version: version},
	}
	comps := map[string]cdx.Component{}
	deps := map[string]map[string]bool{}
	for _, p := range parts {
		if p.Metadata != nil && bom.Metadata.Tools == nil {
			bom.Metadata.Tools = p.Metadata.Tools
		}
		if p.Metadata != nil && p.Metadata.Component != nil {
			comps[p.Metadata.Component.BOMRef] = *p.Metadata.Component
		}
		if p.Components != nil {
			for _, c := range *p.Components {
				if _, ok := comps[c.BOMRef]; !ok {
					comps[c.BOMRef] = c
				}
			}
		}
		if p.Dependencies != nil {
			for _, d := range *p.Dependencies {
				if deps[d.Ref] == nil {
					deps[d.Ref] = map[string]bool{}
				}
				if d.Dependencies != nil {
					for _, on := range *d.Dependencies {
						deps[d.Ref][on] = true
					}
				}
			}
		}
	}
	cs := make([]cdx.Component, 0, len(comps))
	for _, c := range comps {
		cs = append(cs, c)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].BOMRef < cs[j].BOMRef })
	bom.Components = &cs
	ds := make([]cdx.Dependency, 0, len(deps))
	for ref, on := range deps {
		list := make([]string, 0, len(on))
		for r := range on {
			list = append(list, r)
		}
		sort.Strings(list)
		ds = append(ds, cdx.Dependency{Ref: ref, Dependencies: &list})
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].Ref < ds[j].Ref })
	bom.Dependencies = &ds
	return bom
}

// writeSBOM writes <dist>/<artifact>.cdx.json for an artifact made of bins;
// an artifact without binaries (manifests, chart) lists the image it deploys.
func writeSBOM(o options, artifact, kind string, bins []string) error {
	var parts []*cdx.BOM
	for _, b := range bins {
		p, err := binarySBOM(o.cyclonedx, b, o.version)
		if err != nil {
			return err
		}
		modCache, err := goModCache()
		if err != nil {
			return err
		}
		if err := completeLicenses(p, modCache, reviewedLicenses); err != nil {
			return fmt.Errorf("SBOM of %s: %w", b, err)
		}
		parts = append(parts, p)
	}
	bom := mergeSBOMs(artifact, kind, o.version, o.created, parts)
	if len(bins) == 0 {
		*bom.Components = append(*bom.Components, cdx.Component{BOMRef: "image:" + o.name, Type: cdx.ComponentTypeContainer, Name: o.name, Version: o.version})
	}
	var buf bytes.Buffer
	enc := cdx.NewBOMEncoder(&buf, cdx.BOMFileFormatJSON)
	enc.SetPretty(true)
	if err := enc.Encode(bom); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(o.dist, artifact+".cdx.json"), buf.Bytes(), 0o644)
}
