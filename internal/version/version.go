// Package version owns the build's version string, set at link time by the
// Makefile (-X github.com/filament-net/filament/internal/version.Version=...).
package version

// Version of this build.
var Version = "dev"
