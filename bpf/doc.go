// Package bpf owns Filament's eBPF programs (C sources built with clang-16
// through `go tool bpf2go`) and their generated Go bindings and objects,
// which are committed so that `go build` needs no clang. `make generate`
// regenerates them. The datapath programs arrive with the datapath issue;
// until then this package holds no program.
package bpf
