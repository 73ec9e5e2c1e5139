package deptest

import (
	"reflect"
	"testing"
)

func TestViolations(t *testing.T) {
	bad := map[string]string{"go.etcd.io/etcd/server": "server", "golang.zx2c4.com/wireguard/device": "device"}
	deps := []string{"fmt", "go.etcd.io/etcd/client/v3", "go.etcd.io/etcd/server/v3/embed", "go.etcd.io/etcd/serverx",
		"golang.zx2c4.com/wireguard/device", "golang.zx2c4.com/wireguard/conn"}
	want := []Violation{{"go.etcd.io/etcd/server/v3/embed", "server"}, {"golang.zx2c4.com/wireguard/device", "device"}}
	if got := Violations(deps, bad); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
