//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Filament datapath: one object (bpf2go) built from the headers below.
//
//   lib/      one concern each: common definitions, drop reasons and events,
//             maps, parsing, conntrack, host sockets, policy, ipcache,
//             encapsulation and encryption routing, native routing's
//             forwarding by the FIB, load balancing, the L7 proxy, the
//             established fast path.
//   progs/    one attach point each:
//     endpoint.h   from_container (tc ingress of a pod's host veth) and
//                  to_container (its tc egress)
//     overlay.h    from_overlay (tc ingress of the VXLAN device)
//     netdev.h     from_netdev (tc ingress of the underlay device: NodePort,
//                  native routing's delivery to pods)
//     wireguard.h  from_wireguard (tc ingress of the encryption device)
//     socket.h     cgroup connect4, sendmsg4, recvmsg4, getpeername4
//
// Policy is looked up only for new connections; packets of known connections
// and their replies pass through conntrack. Every drop is counted and sent
// to user space on the events ring buffer with its reason.
#include "lib/common.h"
#include "lib/reasons.h"
#include "lib/maps.h"
#include "lib/conntrack.h"
#include "lib/events.h"
#include "lib/lb.h"
#include "lib/parse.h"
#include "lib/sock.h"
#include "lib/policy.h"
#include "lib/ipcache.h"
#include "lib/encap.h"
#include "lib/fib.h"
#include "lib/proxy.h"
#include "lib/fastpath.h"

#include "progs/endpoint.h"
#include "progs/overlay.h"
#include "progs/netdev.h"
#include "progs/wireguard.h"
#include "progs/socket.h"
#include "progs/host.h"

char __license[] SEC("license") = "Dual BSD/GPL";
