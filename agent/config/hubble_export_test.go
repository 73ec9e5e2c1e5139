package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// The flow exporter's flags set their fields; a bad value, a bad filter
// above all, is an error naming the field and the flag.
func TestHubbleExportConfig(t *testing.T) {
	d := Default()
	if d.HubbleExportFile != "" || d.HubbleExportFileMaxSizeMB != 10 || d.HubbleExportFileMaxBackups != 5 {
		t.Errorf("defaults: file %q, %d MB, %d backups", d.HubbleExportFile, d.HubbleExportFileMaxSizeMB, d.HubbleExportFileMaxBackups)
	}
	flags := Default()
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	RegisterFlags(fs, &flags)
	if err := fs.Parse([]string{"--hubble-export-file=/var/log/filament/flows.json", "--hubble-export-file-max-size-mb=2",
		"--hubble-export-file-max-backups=3", `--hubble-export-allowlist={"verdict":["DROPPED"]} {"protocol":["udp"]}`,
		`--hubble-export-denylist={"destination_port":["53"]}`}); err != nil {
		t.Fatal(err)
	}
	c := Default()
	ApplyFlags(fs, &c, &flags)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	allow, deny, err := c.HubbleExportFilters()
	if err != nil || len(allow) != 2 || len(deny) != 1 || c.HubbleExportFile != "/var/log/filament/flows.json" ||
		c.HubbleExportFileMaxSizeMB != 2 || c.HubbleExportFileMaxBackups != 3 || deny[0].DestinationPort[0] != "53" {
		t.Errorf("from flags: %+v allow %v deny %v err %v", c, allow, deny, err)
	}

	many := strings.Repeat(`{"verdict":["DROPPED"]} `, 40)
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   []string
	}{
		{"file relative", func(c *Config) { c.HubbleExportFile = "flows.json" }, []string{"--hubble-export-file", "flows.json"}},
		{"file without hubble", func(c *Config) { c.HubbleExportFile, c.Hubble = "/tmp/f.json", false }, []string{"--hubble-export-file", "needs hubble"}},
		{"max size", func(c *Config) { c.HubbleExportFileMaxSizeMB = 0 }, []string{"--hubble-export-file-max-size-mb", "0"}},
		{"max backups", func(c *Config) { c.HubbleExportFileMaxBackups = 0 }, []string{"--hubble-export-file-max-backups", "0"}},
		{"allowlist not JSON", func(c *Config) { c.HubbleExportAllowlist = `{"verdict":` }, []string{"hubbleExportAllowlist", "--hubble-export-allowlist"}},
		{"allowlist unknown field", func(c *Config) { c.HubbleExportAllowlist = `{"pod":["x"]}` }, []string{"--hubble-export-allowlist", "pod"}},
		{"denylist bad verdict", func(c *Config) { c.HubbleExportDenylist = `{"verdict":["LOST"]}` }, []string{"--hubble-export-denylist", "LOST"}},
		{"denylist does not compile", func(c *Config) { c.HubbleExportDenylist = `{"http_status_code":["abc"]}` }, []string{"--hubble-export-denylist", "abc"}},
		{"too many filters", func(c *Config) { c.HubbleExportAllowlist, c.HubbleExportDenylist = many, many }, []string{"--hubble-export-allowlist", "--hubble-export-denylist", "80 filters"}},
	} {
		c := Default()
		tc.mutate(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not name %q", tc.name, err, w)
			}
		}
	}
}
