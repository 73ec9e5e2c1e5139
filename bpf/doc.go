// Package bpf owns Filament's eBPF programs (C sources built with clang-16
// through `go tool bpf2go`) and their generated Go bindings and objects,
// which are committed so that `go build` needs no clang; `make generate`
// regenerates them. datapath.c builds one object from headers split by
// concern: lib/ (common definitions, drop reasons and events, maps,
// parsing, conntrack, policy, ipcache, encapsulation, load balancing) and
// progs/ (one attach point each: endpoint veths, the VXLAN device, the
// underlay device, the encryption device, the cgroup socket hooks). The
// drop reasons and event types reach Go as generated constants.
package bpf

//go:generate go tool bpf2go -cc clang-16 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type counter -type ipcache_key -type ipcache_value -type endpoint_info -type policy_key -type policy_value -type ct_key -type ct_entry -type proxy_origin_key -type proxy_backend -type event -type node_config -type lb_key -type lb_service -type lb_slot_key -type lb_backend -type lb_member_key -type lb_affinity_key -type lb_affinity -type lb_sock_key -type lb_sock_value -type lb_nat_key -type lb_nat -type reason -type event_type -type flow_events Datapath datapath.c
