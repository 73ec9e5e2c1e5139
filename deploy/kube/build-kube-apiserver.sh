#!/bin/sh
# Builds a real kube-apiserver (or, with KUBE_COMMAND=kubelet, a kubelet)
# from the Go module proxy for the Kubernetes tests: a scratch module
# requiring k8s.io/kubernetes with each staging module replaced by its
# published version. The binary is cached in $1.
# Several runs may race: each builds to its own temporary file and renames
# it into place (atomic); an existing result counts as done.
set -eu
out=${1:?usage: build-kube-apiserver.sh OUTPUT}
version=${KUBE_VERSION:-1.37.1}
command=${KUBE_COMMAND:-kube-apiserver}
[ -x "$out" ] && exit 0
go=${GO:-go}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
echo "== building $command v$version for the Kubernetes tests into $out (once, cached;"
echo "   a first build downloads and compiles Kubernetes: 10-20 minutes on a 2-core machine, this is normal)"
GOFLAGS=-mod=mod $go mod download "k8s.io/kubernetes@v$version"
gomod=$($go env GOMODCACHE)/k8s.io/kubernetes@v$version/go.mod
{
	echo "module kubeapiserverbuild"
	echo
	echo "go 1.26"
	echo
	echo "require k8s.io/kubernetes v$version"
	echo
	echo "replace ("
	sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging.*#\t\1 => \1 v0.'"${version#1.}"'#p' "$gomod"
	echo ")"
} > go.mod
# Both commands' imports, so that one go.mod (and the build cache) serves both.
printf 'package main\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\t_ "k8s.io/kubernetes/cmd/kubelet/app"\n)\n\nfunc main() {}\n' > main.go
GOFLAGS=-mod=mod $go mod tidy
rm main.go
mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -rf "$dir" "$tmp"' EXIT
$go build -o "$tmp" "k8s.io/kubernetes/cmd/$command"
chmod 0755 "$tmp"
# Another run may have finished first: its result is as good as ours.
[ -x "$out" ] && exit 0
mv -f "$tmp" "$out"
echo "== $command ready: $out"
