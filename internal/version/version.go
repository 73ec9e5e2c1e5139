// Package version owns what a binary says about its own build: the version,
// commit and commit date set at link time by the Makefile
// (-X github.com/filament-net/filament/internal/version.Version=...), else
// what the Go toolchain records in the binary's build info, and the Go
// version.
package version

import (
	"runtime/debug"
	"strings"
)

// Set at link time by the Makefile (the environment here may disable the
// toolchain's own VCS stamping with -buildvcs=false); empty Commit and
// BuildDate fall back to the build info's vcs.revision and vcs.time.
var (
	Version   = "dev"
	Commit    = ""
	BuildDate = ""
)

// Info is what `filament version` and the daemons' --version print.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`             // vcs.revision, "unknown" when built outside git
	Modified  bool   `json:"modified,omitempty"` // the work tree had uncommitted changes
	GoVersion string `json:"goVersion"`
	BuildDate string `json:"buildDate"` // the commit's time (vcs.time): reproducible, unlike the wall clock
}

// Get reads this binary's build info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	in := fromBuildInfo(Version, bi)
	if Commit != "" {
		in.Commit = Commit
	}
	if BuildDate != "" {
		in.BuildDate = BuildDate
	}
	in.Modified = in.Modified || strings.HasSuffix(in.Version, "-dirty") // git describe --dirty
	return in
}

func fromBuildInfo(v string, bi *debug.BuildInfo) Info {
	in := Info{Version: v, Commit: "unknown", BuildDate: "unknown", GoVersion: "unknown"}
	if bi == nil {
		return in
	}
	in.GoVersion = bi.GoVersion
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Commit = s.Value
		case "vcs.time":
			in.BuildDate = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
}

// String is the one-line form used by the daemons' --version.
func (in Info) String() string {
	var b strings.Builder
	b.WriteString(in.Version)
	b.WriteString(" (commit ")
	b.WriteString(in.Commit)
	if in.Modified {
		b.WriteString(", modified")
	}
	b.WriteString(", built ")
	b.WriteString(in.BuildDate)
	b.WriteString(", ")
	b.WriteString(in.GoVersion)
	b.WriteString(")")
	return b.String()
}
