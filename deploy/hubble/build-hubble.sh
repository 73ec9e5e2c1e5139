#!/bin/sh
# Builds the real hubble CLI from the Go module proxy for the observability
# tests. Hubble's CLI is not a module of its own: it is the main package
# github.com/cilium/cilium/hubble inside the cilium module, so this builds it
# in a scratch module that requires github.com/cilium/cilium and repeats the
# replace directives of cilium's go.mod (a dependency's replaces are ignored
# by Go). The binary is cached in $1.
# Several runs may race: each builds to its own temporary file and renames
# it into place (atomic); an existing result counts as done.
set -eu
out=${1:?usage: build-hubble.sh OUTPUT}
version=${HUBBLE_CILIUM_VERSION:-1.20.2}
[ -x "$out" ] && exit 0
go=${GO:-go}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
echo "== building the hubble CLI of cilium v$version for the observability tests into $out (once, cached;"
echo "   a first build downloads and compiles much of Cilium: 6-15 minutes on a 2-core machine, this is normal)"
GOFLAGS=-mod=mod $go mod download "github.com/cilium/cilium@v$version"
gomod=$($go env GOMODCACHE)/github.com/cilium/cilium@v$version/go.mod
{
	echo "module hubblebuild"
	echo
	# The same language version as cilium's own go.mod.
	sed -n 's/^go[[:space:]][[:space:]]*\([0-9.]*\).*/go \1/p' "$gomod"
	echo
	echo "require github.com/cilium/cilium v$version"
	echo
	# Both forms: "replace a => b v" lines and "replace ( ... )" blocks.
	# Replaces by a local path (=> ./...) point inside cilium's tree and
	# cannot work here: they are left out, and said so.
	awk '
		/^replace[[:space:]]*\($/ { inblock = 1; next }
		inblock && /^\)/ { inblock = 0; next }
		inblock || /^replace[[:space:]]/ {
			line = $0
			sub(/^replace[[:space:]]+/, "", line)
			sub(/^[[:space:]]+/, "", line)
			if (line == "" || line ~ /^\/\//) next
			if (line ~ /=>[[:space:]]*\.\.?\//) { print "// skipped (local path): " line; next }
			print "replace " line
		}
	' "$gomod"
} > go.mod
echo "== scratch go.mod:"
sed 's/^/   /' go.mod
printf 'package main\n\nimport _ "github.com/cilium/cilium/hubble/cmd"\n\nfunc main() {}\n' > main.go
GOFLAGS=-mod=mod $go mod tidy
rm main.go
mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -rf "$dir" "$tmp"' EXIT
echo "== compiling github.com/cilium/cilium/hubble"
# Static, like cilium's release builds; the version is stamped the way
# hubble's own Makefile does it (hubble version, the user agent).
CGO_ENABLED=0 $go build -trimpath \
	-ldflags "-X github.com/cilium/cilium/hubble/pkg.Version=v$version" \
	-o "$tmp" github.com/cilium/cilium/hubble
chmod 0755 "$tmp"
# Another run may have finished first: its result is as good as ours.
[ -x "$out" ] && exit 0
mv -f "$tmp" "$out"
echo "== hubble ready: $out"
