package client

import (
	"testing"

	"github.com/filament-net/filament/internal/deptest"
)

// The client imports only the contract and the standard library.
func TestDeps(t *testing.T) {
	deptest.CheckStdlibOnly(t, ".", "github.com/filament-net/filament/agent/api/types")
}
