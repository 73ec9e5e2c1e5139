#!/bin/sh
# Builds a real kube-apiserver from the Go module proxy for the Kubernetes
# tests: a scratch module requiring k8s.io/kubernetes with each staging
# module replaced by its published version. The binary is cached in $1.
set -eu
out=${1:?usage: build-kube-apiserver.sh OUTPUT}
version=${KUBE_VERSION:-1.37.1}
[ -x "$out" ] && exit 0
go=${GO:-go}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
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
printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\nfunc main() {}\n' > main.go
GOFLAGS=-mod=mod $go mod tidy
rm main.go
mkdir -p "$(dirname "$out")"
$go build -o "$out.tmp" k8s.io/kubernetes/cmd/kube-apiserver
mv "$out.tmp" "$out"
