package types

import (
	"testing"

	"github.com/filament-net/filament/internal/deptest"
)

// The contract imports only the standard library.
func TestDeps(t *testing.T) { deptest.CheckStdlibOnly(t, ".") }
