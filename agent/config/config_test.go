package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/var/lib/filament" || c.APISocket != "/var/run/filament/agent.sock" || c.ClusterID != 1 || c.ClusterName != "default" || c.ClusterPool != "10.244.0.0/16" || c.Routing != "tunnel" {
		t.Fatalf("defaults changed: %+v", c)
	}
}

func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(p, []byte("nodeName: n7\nclusterName: east\nclusterID: 9\npodCIDR: 10.9.0.0/24\nleaseTTL: 30s\netcd:\n  endpoints: [\"http://10.0.0.1:2379\"]\n"), 0o600)
	c := Default()
	if err := c.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "n7" || c.ClusterID != 9 || time.Duration(c.LeaseTTL) != 30*time.Second || len(c.Etcd.Endpoints) != 1 || c.StateDir != DefaultStateDir {
		t.Fatalf("loaded %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestBadInputNamesField(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "u.yaml")
	os.WriteFile(unknown, []byte("nodeName: a\npodSubnet: 10.0.0.0/24\n"), 0o600)
	c := Default()
	before := c
	err := c.LoadFile(unknown)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "podSubnet") {
		t.Fatalf("unknown field: %v", err)
	}
	if c.NodeName != before.NodeName || c.PodCIDR != before.PodCIDR {
		t.Fatal("a rejected file changed the configuration")
	}
	cases := map[string]func(*Config){
		"nodeName":          func(c *Config) { c.NodeName = "Bad_Name" },
		"clusterName":       func(c *Config) { c.ClusterName = strings.Repeat("a", 33) },
		"clusterID":         func(c *Config) { c.ClusterID = 256 },
		"podCIDR":           func(c *Config) { c.PodCIDR = "10.0.0.0/33" },
		"stateDir":          func(c *Config) { c.StateDir = "relative" },
		"apiSocket":         func(c *Config) { c.APISocket = "x.sock" },
		"etcd.endpoints[0]": func(c *Config) { c.Etcd.Endpoints = []string{"127.0.0.1:2379"} },
		"mtu":               func(c *Config) { c.MTU = 100 },
		"logLevel":          func(c *Config) { c.LogLevel = "loud" },
	}
	for field, mutate := range cases {
		c := Default()
		mutate(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: want an error naming it, got %v", field, err)
		}
	}
}

// The example file shipped in deploy/ loads and validates.
func TestShippedExampleLoads(t *testing.T) {
	c := Default()
	if err := c.LoadFile("../../deploy/systemd/agent.yaml"); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestClusterIDRangeFollowsTheLayout(t *testing.T) {
	c := Default()
	c.ClusterID = 400
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "1-255") {
		t.Fatalf("cluster ID 400 with 255 clusters: %v", err)
	}
	c.MaxConnectedClusters = 511
	if err := c.Validate(); err != nil {
		t.Fatalf("cluster ID 400 with 511 clusters: %v", err)
	}
}
