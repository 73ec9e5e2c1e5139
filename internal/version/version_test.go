package version

import (
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123abcd"},
		{Key: "vcs.time", Value: "2026-12-01T08:00:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	got := fromBuildInfo("v1.2.3", bi)
	want := Info{Version: "v1.2.3", Commit: "0123abcd", Modified: true, GoVersion: "go1.26.8", BuildDate: "2026-12-01T08:00:00Z"}
	if got != want {
		t.Fatalf("fromBuildInfo = %+v, want %+v", got, want)
	}
	if s := got.String(); s != "v1.2.3 (commit 0123abcd, modified, built 2026-12-01T08:00:00Z, go1.26.8)" {
		t.Fatalf("String() = %q", s)
	}
	if got := fromBuildInfo("dev", nil); got.Commit != "unknown" || got.GoVersion != "unknown" || got.BuildDate != "unknown" {
		t.Fatalf("no build info: %+v", got)
	}
}

// TestGetReadsThisBinary: a test binary has build info with the Go version.
func TestGetReadsThisBinary(t *testing.T) {
	if in := Get(); in.GoVersion == "unknown" || in.GoVersion == "" {
		t.Fatalf("Get() has no Go version: %+v", in)
	}
}
