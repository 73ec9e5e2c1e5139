package main

import (
	"testing"

	"github.com/filament-net/filament/internal/deptest"
)

// filament-cni talks to the agent through its API's contract only: it links no
// datapath, no etcd server, no WireGuard device and no Kubernetes client.
func TestDeps(t *testing.T) {
	deptest.Check(t, ".", deptest.ClientBadDeps)
}
