// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Common to every program: kernel headers, directions, reserved identities,
// endpoint flags, TCP flags, time, and the parsed packet.
#pragma once

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define DIR_EGRESS 0
#define DIR_INGRESS 1

#define EP_INGRESS_ENFORCED 1
#define EP_EGRESS_ENFORCED 2

#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
#define IDENTITY_REMOTE_NODE 6
#define IDENTITY_MAX_RESERVED 255
// IDENTITY_LOCAL_SCOPE marks node-local identities (CIDRs of policies).
#define IDENTITY_LOCAL_SCOPE (1 << 24)

#define NSEC 1000000000ULL

// MARK_TO_PROXY marks a packet assigned to the L7 proxy's socket: a rule
// (fwmark 0x200, table 2005: local 0.0.0.0/0) delivers it locally whatever
// its destination. MARK_PROXY_MAGIC in the top byte of a socket mark is
// the proxy's upstream connection; the low 24 bits carry the identity of
// the flow's original source (MARK_PROXY_LOCAL_MAGIC: a node-local CIDR
// identity, bit 24 set, of which they are the rest).
#define MARK_TO_PROXY 0x200
#define MARK_PROXY_MAGIC 0xFA000000
#define MARK_PROXY_LOCAL_MAGIC 0xFB000000
#define MARK_MAGIC_MASK 0xFF000000
// A client's packet of a NodePort flow that from_netdev translated to a
// backend of this node (lb_forward), on its way up the stack to the pod's
// veth: to_container flags the connection entry it makes CT_F_NODEPORT.
// The mark goes with the packet into the pod's namespace no further (the
// veth scrubs it).
#define MARK_NODEPORT_MAGIC 0xFC000000
// MARK_PROXY_LISTENER is the socket mark of the L7 proxy's listener and
// UDP socket (agent/proxy ListenerMark): to_proxy hands flows to no other
// socket bound to the proxy's port. Setting a socket's mark takes
// CAP_NET_ADMIN or CAP_NET_RAW.
#define MARK_PROXY_LISTENER 0xFD000000

// PROXY_UPSTREAM, where a proxy port is expected (beyond every port): the
// packet is a reply to the L7 proxy's upstream connection, which has the
// client's address as its source; it goes to the proxy's socket that owns
// its tuple, never on to the client.
#define PROXY_UPSTREAM 0x10000

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

// A parsed IPv4 packet.
struct pkt {
	__u32 saddr;
	__u32 daddr;
	__u16 sport; // network order (ICMP echo: the identifier)
	__u16 dport; // network order
	__u16 pport; // port for policy, network order (ICMP: the type)
	__u8 proto;
	__u8 tcp_flags;
	__u8 ihl; // IPv4 header length in bytes
	__u8 reply; // conntrack found it in the reply direction (set by enforce)
	__u8 to_local; // to a control port of an address of this node (set by from_container)
	__u8 tcp_doff; // TCP header length in bytes
	__u8 frag; // a fragment after the first: its ports are its first's, it has no L4 header (parse)
	__u8 inner_proto; // an ICMP error quoting a TCP or UDP packet: its protocol (0: not one), below its tuple
	__u8 pad[2];
	__u32 len; // the frame's length (Ethernet header included), without padding after the IPv4 packet
	__u32 seq; // TCP sequence number, network order
	__u32 ack; // TCP acknowledgement number, network order
	__u32 inner_saddr;
	__u32 inner_daddr;
	__u16 inner_sport;
	__u16 inner_dport;
};

