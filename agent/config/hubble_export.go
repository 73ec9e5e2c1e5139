package config

import (
	"fmt"
	"path/filepath"

	"github.com/filament-net/filament/agent/hubble/filter"
	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
)

// HubbleExportFilters are the flow exporter's allow and deny lists,
// parsed and checked (a filter the node cannot apply is an error naming
// its field and flag).
func (c Config) HubbleExportFilters() (allow, deny []*flowpb.FlowFilter, err error) {
	for _, l := range []struct {
		field, flag, value string
		out                *[]*flowpb.FlowFilter
	}{
		{"hubbleExportAllowlist", "--hubble-export-allowlist", c.HubbleExportAllowlist, &allow},
		{"hubbleExportDenylist", "--hubble-export-denylist", c.HubbleExportDenylist, &deny},
	} {
		ff, err := filter.Parse(l.value)
		if err == nil {
			_, err = filter.Compile(ff, nil)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %s (%s) %q: %v", ErrInvalid, l.field, l.flag, l.value, err)
		}
		*l.out = ff
	}
	if _, err := filter.Compile(allow, deny); err != nil {
		return nil, nil, fmt.Errorf("%w: hubbleExportAllowlist and hubbleExportDenylist (--hubble-export-allowlist, --hubble-export-denylist): %v", ErrInvalid, err)
	}
	return allow, deny, nil
}

func (c Config) validateHubbleExport() error {
	if c.HubbleExportFile != "" && !filepath.IsAbs(c.HubbleExportFile) {
		return fmt.Errorf("%w: hubbleExportFile (--hubble-export-file) %q: must be an absolute path", ErrInvalid, c.HubbleExportFile)
	}
	if c.HubbleExportFile != "" && !c.Hubble {
		return fmt.Errorf("%w: hubbleExportFile (--hubble-export-file) %q: needs hubble (the flows it writes)", ErrInvalid, c.HubbleExportFile)
	}
	if c.HubbleExportFileMaxSizeMB < 1 || c.HubbleExportFileMaxSizeMB > 1<<20 {
		return fmt.Errorf("%w: hubbleExportFileMaxSizeMB (--hubble-export-file-max-size-mb) %d: must be 1-1048576", ErrInvalid, c.HubbleExportFileMaxSizeMB)
	}
	if c.HubbleExportFileMaxBackups < 1 || c.HubbleExportFileMaxBackups > 1000 {
		return fmt.Errorf("%w: hubbleExportFileMaxBackups (--hubble-export-file-max-backups) %d: must be 1-1000", ErrInvalid, c.HubbleExportFileMaxBackups)
	}
	_, _, err := c.HubbleExportFilters()
	return err
}
