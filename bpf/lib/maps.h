// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The datapath's map layouts and maps (pinned by the agent), except the
// load balancer's (lb.h).
#pragma once

struct ipcache_key {
	__u32 prefixlen;
	__u32 ip; // network order
};

struct ipcache_value {
	__u32 identity;
	__u32 tunnel_ip; // network order; 0 = local or not tunnelled
	__u8 flags;      // IPCACHE_F_*
	__u8 pad[3];
};

// ipcache_value.flags
// IPCACHE_F_COVER: a remote node's pod CIDR, whose identity (its cluster's
// cover identity) stands for every pod of it the agent holds no /32 for:
// their policy entries equal the cover's (agent/sparse).
#define IPCACHE_F_COVER 1

struct endpoint_info {
	__u32 ifindex; // host-side veth
	__u32 identity;
	__u16 ep_id;
	__u8 flags; // EP_*_ENFORCED
	__u8 pad;
	__u8 mac[6];      // pod side
	__u8 host_mac[6]; // host side (the pod's gateway MAC)
};

// Policy: an LPM trie. Data bits in order: ep_id(16) dir(8) pad(8)
// identity(32) proto(8) port(16, network order). Identity 0 = any peer.
struct policy_key {
	__u32 prefixlen;
	__u16 ep_id;
	__u8 dir;
	__u8 pad;
	__u32 identity;
	__u8 proto;
	__u8 port[2];
	__u8 pad2;
};

#define POLICY_F_PORT 1 // the entry names one protocol and port exactly

struct policy_value {
	__u8 deny;
	__u8 flags;       // POLICY_F_*
	__u16 proxy_port; // host order; non-zero: the flow goes through the node's L7 proxy
	__u32 cookie;
};

struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u16 ep_id;
};

struct ct_entry {
	__u64 expires; // CLOCK_MONOTONIC ns
	__u64 packets;
	__u64 bytes;
	__u8 state;
	__u8 flags;       // CT_F_*
	__u16 proxy_port; // the flow's L7 proxy (host order), 0 when none
	__u32 peer_identity;
	__u64 refreshed; // jiffies when expires was last set
	__u32 rev;       // the datapath revision the flow's policy was last checked at
	__u16 pport;     // the policy port of the flow's first packet (network order)
	// from_container's cached forwarding of the endpoint's packets on this
	// flow (fastpath.h): valid while fast_rev is the datapath revision.
	__u8 fast_action; // FAST_*, 0: none cached
	// CT_FIN_*: which sides of a TCP connection sent a FIN (a byte of its
	// own: written without touching flags, which other paths set). Was
	// padding, zero, before 2026-12-06.
	__u8 fin;
	__u32 fast_rev;
	__u32 fast_ifindex;  // the sending endpoint's host veth (anti-spoofing)
	__u32 fast_out;      // FAST_ENCAP: the tunnel endpoint (network order); FAST_LOCAL: the destination's host veth
	__u32 fast_identity; // FAST_ENCAP: the source identity (the VNI)
	__u8 fast_mac[12];   // FAST_LOCAL: the destination pod's MAC, then its host side's
	// The replying side's initial sequence number (network order), from
	// its SYN-ACK, while the entry is in conntrack_new: the opener's ACK
	// of it moves the entry to conntrack (ct_settle). In conntrack, with
	// CT_ACK_KNOWN in fin: the endpoint's own last acknowledgement
	// (network order), what an RST from outside must carry
	// (conntrack.h). Was tail padding, zero, before 2026-12-06.
	__u32 isn;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

#define ENCRYPT_ON 1     // pod traffic to other nodes goes through the encryption device
#define ENCRYPT_STRICT 2 // ... and is dropped when the node is not a peer

#define CONTROL_PORTS 8

// nodes map values
#define NODE_F_KNOWN 1
#define NODE_F_CLUSTER 2 // a node of this cluster (its NodePorts are this node's)
// A remote cluster's node: its cluster ID in bits 8-16 and the identity
// layout's cluster shift in bits 24-28 (identity.ClusterIDShift), which
// bound the identities it may send as a VNI (remote_vni_ok); 0 for both
// in a value an agent from before 2026-12-07 wrote.
#define NODE_CLUSTER_ID(v) (((v) >> 8) & 0x1ff)
#define NODE_CLUSTER_SHIFT(v) (((v) >> 24) & 0x1f)

// node_config.flow_events: which forwarded connections (and service
// translations, which count as the client's egress, or for NodePort the
// local backend's ingress) are reported on the events ring (drops always
// are). The zero value is the default. Go reads them from the generated
// bindings (-type flow_events).
enum flow_events {
	FLOW_EVENTS_CONNECTIONS = 0, // every new forwarded connection, at every endpoint
	FLOW_EVENTS_ENFORCED = 1,    // new forwarded connections in enforced directions only
	FLOW_EVENTS_OFF = 2,         // none
};

// Node-wide settings written by the agent (one entry).
struct node_config {
	__u32 vxlan_ifindex; // 0 = no tunnel (native routing)
	__u32 encrypt;       // ENCRYPT_* flags
	// TCP and UDP ports of the nodes' control plane (gossip, metrics, the
	// overlay, ...), host order, 0 = unused: pods reach them on a node
	// address only when their egress policy names the port.
	__u16 control_ports[CONTROL_PORTS];
	// With encryption: the address NodePort traffic to a backend on a peer
	// is translated from (this node's gateway, inside its pod CIDR, which
	// the peer accepts from the tunnel and routes back through it);
	// network order, 0 = none.
	__u32 encrypt_snat;
	__u32 flow_events; // FLOW_EVENTS_*
	// Policy audit mode (1): what policy would drop (no allowing rule, or
	// a deny rule) passes and is reported once per connection instead.
	__u32 policy_audit;
	// With WireGuard: the UDP port the encryption device listens on (every
	// node's), host order, 0 = none. from_netdev passes WireGuard's own
	// datagrams (from and to this port) without its lookups.
	__u16 wireguard_port;
	// Native routing: 1 leaves pod traffic between nodes to the kernel's
	// IP forwarding (the agent's --native-forwarding kernel), 0 forwards
	// it with the FIB from the programs (lib/fib.h).
	__u16 kernel_forwarding;
	// Tunnel mode: the node's own address its traffic to other nodes' pods
	// leaves from (the gateway routes' source), network order; from_host
	// gives remote-node only to that source, the world to anything else
	// forwarded into the tunnel. 0 = unknown: remote-node to all.
	__u32 host_src;
	// Bit i: control_ports[i] is the kvstore's, which a NodePort may
	// translate to on a node's address (nodeport_to_control).
	__u16 kvstore_ports;
	// The node's address (network order; 0 = unknown): its NodePort
	// frontends stand for every node of the cluster's at a pod's socket
	// (lb_sock_nodeport).
	__u32 node_ip;
};

struct event {
	__u64 ts;
	__u8 type;
	__u8 reason;
	__u8 dir;
	__u8 proto;
	__u16 ep_id;   // the endpoint whose policy decided
	__u16 peer_ep; // the other side when it is a local endpoint, else 0
	__u32 src_identity;
	__u32 dst_identity;
	__u32 saddr;
	__u32 daddr;
	__u16 sport; // host order
	__u16 dport; // host order
	// EVENT_TRANSLATED (a service translation, no packet of its own):
	// saddr/sport are the client (0 when a socket hook does not know
	// them), daddr/dport the chosen backend, and the frontend takes the
	// place of the interface and length.
	union {
		__u32 ifindex;
		__u32 svc_addr; // EVENT_TRANSLATED: the frontend's address (network order)
	};
	union {
		__u32 len;
		__u32 svc_port; // EVENT_TRANSLATED: the frontend's port (host order)
	};
	__u8 tcp_flags; // the packet's (TCP only; FIN 0x01 ... CWR 0x80)
	__u8 flags;     // EVENT_F_*
	__u8 pad[2];
};

#define EVENT_F_REPLY 1 // conntrack says the packet is in the reply direction
#define EVENT_F_PROXY 2 // a new connection's verdict sends it to the L7 proxy (redirected)
#define EVENT_F_AUDIT 4 // policy audit mode: policy would have dropped the new connection (reason says why); it passed

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 512 * 1024);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct endpoint_info);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024 * 1024);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256 * 1024);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} conntrack SEC(".maps");

// conntrack_new: the entries of flows not established yet (conntrack.h,
// ct_settle), in an LRU of their own so that a flood of flows nobody
// answers or completes evicts only its own kind, never an established
// flow's entry in conntrack.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64 * 1024);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} conntrack_new SEC(".maps");

// proxy_origin: the source identity of each connection steered to the L7
// proxy, by the connection's tuple as the proxy's socket sees it (remote
// = saddr:sport, local = daddr:dport). The proxy reads it to know who is
// asking, which the source address alone does not say when the flow comes
// from another node's proxy (its node's address) or an identity carried
// in the VNI.
struct proxy_origin_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64 * 1024);
	__type(key, struct proxy_origin_key);
	__type(value, __u32);
} proxy_origin SEC(".maps");

// proxy_frontends: the backend from_netdev gave each NodePort connection
// it steered to the L7 proxy untranslated (a local backend with ingress
// L7 rules: nodeport_l7), by the connection's tuple as the proxy's
// socket sees it (the client, and the frontend: this node's address and
// the NodePort). The proxy reads it (and deletes it) at accept, answers
// from the frontend and dials the backend.
struct proxy_backend {
	__u32 addr;       // network order
	__u16 port;       // network order
	__u16 proxy_port; // the proxy's listener (host order)
	__u64 at;         // CLOCK_MONOTONIC ns of the SYN that made it
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64 * 1024);
	__type(key, struct proxy_origin_key);
	__type(value, struct proxy_backend);
} proxy_frontends SEC(".maps");

// frags: the ports of a UDP or ICMP datagram that arrives in fragments,
// by the device it passes (the hook's skb->ifindex), its source,
// destination, IPv4 identification and protocol, from its first fragment
// (the only one with the L4 header), for the others (parse). parse records
// a first fragment before the program judges its source, so the device is
// in the key: a pod that forges another's address writes only entries of
// its own veth, which the other's fragments never read. An LRU: a
// datagram's entry is needed for as long as its fragments arrive
// (milliseconds); a flood of first fragments evicts others' entries (their
// later fragments are then dropped, as all were before 2026-12-05).
struct frag_key {
	__u32 ifindex;
	__u32 saddr;
	__u32 daddr;
	__u16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_ports {
	__u16 sport;
	__u16 dport;
	__u16 pport;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16 * 1024);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
} frags SEC(".maps");

// counters: key = reason * 2 + direction.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REASON_MAX * 2);
	__type(key, __u32);
	__type(value, struct counter);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
} config SEC(".maps");

// nodes: underlay addresses of the known nodes (this cluster's and remote
// clusters'); encapsulated traffic is accepted only from these. The value
// is NODE_F_KNOWN, with NODE_F_CLUSTER for a node of this cluster, or a
// remote cluster's ID and identity layout (NODE_CLUSTER_ID). Remote
// nodes hold at most three quarters (routing.MaxRemoteNodeEntries); until
// 2026-12-05 the map held 16,384, fewer than a mesh of 255 clusters of 100
// nodes has.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} nodes SEC(".maps");

// node_local_addrs: the known nodes' other addresses (those their
// kernels deliver to themselves besides their underlay address: a second
// interface's, a loopback address) and their pod gateways, from their
// records. The control ports' check reads it, and ct_related (a node's
// ICMP errors about a pod's flow with another pass as related): the
// identity of such an address stays what the ipcache says.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} node_local_addrs SEC(".maps");

// encrypt_peers: underlay addresses of the nodes traffic is encrypted to
// (authenticated WireGuard peers); the kernel routes their pod CIDRs
// through the encryption device.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} encrypt_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

// event_losses: events not reported because the ring was full (key 0),
// per CPU; the agent sums and reports them.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} event_losses SEC(".maps");

// revision: the datapath revision (one __u32), bumped by the agent after
// every change to the endpoints, ipcache, policy, config, nodes and
// encryption peers maps. A conntrack entry whose rev differs has its policy
// checked again; a cached forwarding whose fast_rev differs is not used.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} revision SEC(".maps");

// ep_slots: a hint from a host veth's ifindex (modulo the size) to the
// endpoint behind it, written by from_container once the source address
// has been checked and by to_container for the endpoint whose own veth a
// packet leaves by; the fast paths use it to build the conntrack key
// without the endpoints lookup. A wrong or stale hint only misses.
#define EP_SLOTS 65536
struct ep_slot {
	__u32 ifindex;
	__u16 ep_id;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EP_SLOTS);
	__type(key, __u32);
	__type(value, struct ep_slot);
} ep_slots SEC(".maps");

// Referenced so bpf2go emits Go types for them.
const struct ipcache_key *unused_ipk __attribute__((unused));
const struct ipcache_value *unused_ipv __attribute__((unused));
const struct endpoint_info *unused_ep __attribute__((unused));
const struct policy_key *unused_pk __attribute__((unused));
const struct policy_value *unused_pv __attribute__((unused));
const struct ct_key *unused_ck __attribute__((unused));
const struct proxy_origin_key *unused_pok __attribute__((unused));
const struct proxy_backend *unused_pb __attribute__((unused));
const struct ct_entry *unused_ce __attribute__((unused));
const struct counter *unused_counter __attribute__((unused));
const struct event *unused_event __attribute__((unused));
const struct node_config *unused_config __attribute__((unused));
const enum flow_events *unused_flow_events __attribute__((unused));
