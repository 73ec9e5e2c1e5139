package config

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// Every flag is in the one table once, bound to a field of its own, and
// precedence is defaults < file < flags given explicitly.
func TestFlagsTable(t *testing.T) {
	var c Config
	seen := map[string]bool{}
	fields := map[any]string{}
	for _, f := range Flags {
		if seen[f.Name] {
			t.Errorf("flag %s listed twice", f.Name)
		}
		seen[f.Name] = true
		p := f.Field(&c)
		if other, ok := fields[p]; ok {
			t.Errorf("flags %s and %s set the same field", f.Name, other)
		}
		fields[p] = f.Name
		if f.Usage == "" {
			t.Errorf("flag %s has no help", f.Name)
		}
	}

	flags := Default()
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	RegisterFlags(fs, &flags)
	if err := fs.Parse([]string{"--node-name=from-flag", "--lease-ttl=3s", "--etcd-endpoints=https://a:2379,https://b:2379",
		"--memberlist-port=0", "--socket-lb=false", "--maglev-table-size=251", "--flow-events=off", "--policy-audit-mode",
		"--clustermesh-cluster-ids=west=2,east=3"}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte("nodeName: from-file\nclusterName: from-file\nleaseTTL: 20s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	final := Default()
	if err := final.LoadFile(file); err != nil {
		t.Fatal(err)
	}
	ApplyFlags(fs, &final, &flags)
	if final.NodeName != "from-flag" || final.ClusterName != "from-file" || time.Duration(final.LeaseTTL) != 3*time.Second ||
		!slices.Equal(final.Etcd.Endpoints, []string{"https://a:2379", "https://b:2379"}) || final.MemberlistPort != 0 ||
		final.SocketLB || final.MaglevTableSize != 251 || final.Routing != Default().Routing || final.FlowEvents != "off" || !final.PolicyAuditMode ||
		!slices.Equal(final.ClusterMeshClusterIDs, []string{"west=2", "east=3"}) {
		t.Errorf("precedence: %+v", final)
	}
	if err := fs.Parse([]string{"--lease-ttl=soon"}); err == nil {
		t.Error("--lease-ttl=soon accepted")
	}
}
