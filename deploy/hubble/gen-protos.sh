#!/bin/sh
# Generates the Go code (messages and gRPC service stubs) of Hubble's API,
# the flow, observer, peer and relay protos of github.com/cilium/cilium, into
# agent/hubble/pb/{flow,observer,peer,relay} (issue 17). The API is generated,
# not imported: importing cilium's api/v1 packages would pull cilium's whole
# dependency graph and its Kubernetes versions into our go.mod.
#
# The .proto files are read from the Go module cache (go mod download), never
# copied into this repository. The proto package, message and service names
# stay Hubble's (flow.Flow, observer.Observer, peer.Peer...), which is what
# makes the wire compatible; only the Go import paths are ours (M options).
# The generated .pb.go files are committed, so `go build` needs no protoc.
#
# Tools: protoc from Debian (protobuf-compiler, installed when missing as
# root), protoc-gen-go at the version of google.golang.org/protobuf in go.mod
# and protoc-gen-go-grpc at $grpcgen, both installed into a temporary GOBIN.
set -eu
version=${HUBBLE_CILIUM_VERSION:-1.20.2}
grpcgen=${PROTOC_GEN_GO_GRPC_VERSION:-v1.6.2}
go=${GO:-go}
root=$(cd "$(dirname "$0")/../.." && pwd)
module=github.com/filament-net/filament
pb=agent/hubble/pb
protos="flow/flow.proto observer/observer.proto peer/peer.proto relay/relay.proto"

if ! command -v protoc >/dev/null 2>&1; then
	if [ "$(id -u)" != 0 ]; then
		echo "gen-protos.sh: protoc missing: apt-get install protobuf-compiler (as root)" >&2
		exit 1
	fi
	echo "== installing Debian package protobuf-compiler"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
fi

protogo=$(cd "$root" && $go list -m -f '{{.Version}}' google.golang.org/protobuf)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Outside any module, so that our go.mod and go.sum are not touched.
(cd "$tmp" && GOFLAGS=-mod=mod $go mod download "github.com/cilium/cilium@v$version")
src=$($go env GOMODCACHE)/github.com/cilium/cilium@v$version/api/v1
for p in $protos; do
	[ -f "$src/$p" ] || { echo "gen-protos.sh: $src/$p missing" >&2; exit 1; }
done

echo "== installing protoc-gen-go $protogo and protoc-gen-go-grpc $grpcgen into a temporary GOBIN"
(cd "$tmp" && GOBIN=$tmp/bin $go install "google.golang.org/protobuf/cmd/protoc-gen-go@$protogo")
(cd "$tmp" && GOBIN=$tmp/bin $go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$grpcgen")

# Import path mappings: proto file -> our Go package.
maps=""
for p in $protos; do
	maps="$maps,M$p=$module/$pb/$(dirname "$p")"
done
maps=${maps#,}

rm -f "$root/$pb"/*/*.pb.go
echo "== protoc $(protoc --version) on cilium v$version api/v1: $protos"
cd "$src"
# shellcheck disable=SC2086 # $protos is a list of file names without spaces
protoc -I . \
	--plugin=protoc-gen-go="$tmp/bin/protoc-gen-go" \
	--plugin=protoc-gen-go-grpc="$tmp/bin/protoc-gen-go-grpc" \
	--go_out="$root" --go_opt="module=$module,$maps" \
	--go-grpc_out="$root" --go-grpc_opt="module=$module,$maps" \
	$protos
gofmt -l "$root/$pb" | sed 's/^/gofmt would change: /'
echo "== wrote:"
(cd "$root" && ls "$pb"/*/*.pb.go)
