//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Filament datapath: tc programs on the host side of each endpoint's veth.
//
//   from_container  tc ingress of the host veth: packets the pod sends.
//                   Egress policy of the pod; for a destination pod on this
//                   node also its ingress policy, then delivery straight into
//                   its namespace with bpf_redirect_peer.
//   to_container    tc egress of the host veth: packets for the pod that the
//                   kernel routed (from the host, other nodes, the world).
//                   Ingress policy of the pod.
//
// Policy is looked up only for new connections; packets of known connections
// and their replies pass through conntrack. Every drop is counted and sent
// to user space on the events ring buffer with its reason.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define DIR_EGRESS 0
#define DIR_INGRESS 1

// Reasons; 0 is "forwarded". Keep in sync with agent/datapath/reasons.go.
enum reason {
	REASON_FORWARDED = 0,
	REASON_POLICY_DENIED = 1,   // no rule allows it (default deny)
	REASON_POLICY_DENY_RULE = 2, // a deny rule matched
	REASON_CT_MISSING = 3,      // TCP packet of no known connection and not a SYN
	REASON_INVALID = 4,         // truncated or malformed headers
	REASON_FRAGMENT = 5,        // non-first IPv4 fragment (not supported)
	REASON_UNSUPPORTED_L3 = 6,  // IPv6 and other non-IPv4 traffic from a pod
	REASON_BAD_SOURCE = 7,      // source address is not the endpoint's
	REASON_TUNNEL_SOURCE = 8,   // encapsulated packet from an address that is not a known node
	REASON_NO_BACKEND = 9,      // a service frontend with no backend to take the connection
	REASON_LB_NAT = 10,         // a NodePort translation could not be set up (no free source port)
	REASON_NO_ENCRYPT_PEER = 11, // strict encryption: the destination's node is not an encryption peer yet
	REASON_CONTROL_PORT = 12,   // a pod to a node's control port (gossip, metrics, ...) without a policy naming the port
	REASON_MAX = 13,
};

enum event_type {
	EVENT_DROP = 1,
	EVENT_POLICY_VERDICT = 2,
};

#define EP_INGRESS_ENFORCED 1
#define EP_EGRESS_ENFORCED 2

#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
#define IDENTITY_REMOTE_NODE 6

#define NSEC 1000000000ULL
#define CT_TIMEOUT_SYN (60 * NSEC)
#define CT_TIMEOUT_TCP (21600 * NSEC)
#define CT_TIMEOUT_CLOSE (10 * NSEC)
#define CT_TIMEOUT_UDP (60 * NSEC)
#define CT_TIMEOUT_ICMP (30 * NSEC)
#define CT_TIMEOUT_OTHER (60 * NSEC)

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define CT_STATE_NEW 0
#define CT_STATE_ESTABLISHED 1
#define CT_STATE_CLOSING 2

struct ipcache_key {
	__u32 prefixlen;
	__u32 ip; // network order
};

struct ipcache_value {
	__u32 identity;
	__u32 tunnel_ip; // network order; 0 = local or not tunnelled
	__u8 flags;
	__u8 pad[3];
};

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
	__u8 flags; // POLICY_F_*
	__u8 pad[2];
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
	__u8 seen_reply;
	__u8 pad[2];
	__u32 peer_identity;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

#define ENCRYPT_ON 1     // pod traffic to other nodes goes through the encryption device
#define ENCRYPT_STRICT 2 // ... and is dropped when the node is not a peer

#define CONTROL_PORTS 8

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
	__u32 ifindex;
	__u32 len;
};

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

// nodes: underlay addresses of the cluster's known nodes; encapsulated
// traffic is accepted only from these.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} nodes SEC(".maps");

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

// Referenced so bpf2go emits Go types for them.
const struct ipcache_key *unused_ipk __attribute__((unused));
const struct ipcache_value *unused_ipv __attribute__((unused));
const struct endpoint_info *unused_ep __attribute__((unused));
const struct policy_key *unused_pk __attribute__((unused));
const struct policy_value *unused_pv __attribute__((unused));
const struct ct_key *unused_ck __attribute__((unused));
const struct ct_entry *unused_ce __attribute__((unused));
const struct counter *unused_counter __attribute__((unused));
const struct event *unused_event __attribute__((unused));
const struct node_config *unused_config __attribute__((unused));

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
	__u32 len;
};

#include "lb.h"

static __always_inline void count(__u32 reason, __u32 dir, __u32 len)
{
	__u32 key = reason * 2 + dir;
	struct counter *c = bpf_map_lookup_elem(&counters, &key);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void emit(__u8 type, __u8 reason, __u8 dir, __u16 ep_id, __u16 peer_ep,
				 __u32 src_id, __u32 dst_id, struct pkt *p, __u32 ifindex)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return;
	e->ts = bpf_ktime_get_ns();
	e->type = type;
	e->reason = reason;
	e->dir = dir;
	e->proto = p->proto;
	e->ep_id = ep_id;
	e->peer_ep = peer_ep;
	e->src_identity = src_id;
	e->dst_identity = dst_id;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = bpf_ntohs(p->sport);
	e->dport = bpf_ntohs(p->dport);
	e->ifindex = ifindex;
	e->len = p->len;
	bpf_ringbuf_submit(e, 0);
}

// parse reads Ethernet, IPv4 and the L4 ports; it returns a reason other
// than REASON_FORWARDED for packets it cannot accept, and -1 for non-IP
// traffic that passes untouched (ARP).
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return REASON_INVALID;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return REASON_UNSUPPORTED_L3;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return REASON_INVALID;
	if (ip->version != 4 || ip->ihl < 5)
		return REASON_INVALID;
	__u32 hlen = ip->ihl * 4;
	if ((void *)ip + hlen > data_end)
		return REASON_INVALID;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->ihl = hlen;
	p->len = skb->len;
	p->sport = p->dport = p->pport = 0;
	p->tcp_flags = 0;
	if (ip->frag_off & bpf_htons(0x1fff))
		return REASON_FRAGMENT;
	__u8 *l4 = (void *)ip + hlen;
	switch (ip->protocol) {
	case IPPROTO_TCP:
		if (l4 + 14 > (__u8 *)data_end)
			return REASON_INVALID;
		p->sport = *(__u16 *)l4;
		p->dport = *(__u16 *)(l4 + 2);
		p->tcp_flags = l4[13];
		p->pport = p->dport;
		break;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (l4 + 4 > (__u8 *)data_end)
			return REASON_INVALID;
		p->sport = *(__u16 *)l4;
		p->dport = *(__u16 *)(l4 + 2);
		p->pport = p->dport;
		break;
	case IPPROTO_ICMP:
		if (l4 + 8 > (__u8 *)data_end)
			return REASON_INVALID;
		p->pport = bpf_htons(l4[0]);
		// Echo request (8) and reply (0) are tracked by identifier: the
		// request as (id, 0), the reply as (0, id), so that a reply matches
		// its request reversed and a request never passes as a reply.
		if (l4[0] == 8)
			p->sport = *(__u16 *)(l4 + 4);
		else if (l4[0] == 0)
			p->dport = *(__u16 *)(l4 + 4);
		break;
	default:
		break;
	}
	return REASON_FORWARDED;
}

static __always_inline __u64 ct_timeout(struct pkt *p, __u8 state)
{
	switch (p->proto) {
	case IPPROTO_TCP:
		if (state == CT_STATE_CLOSING)
			return CT_TIMEOUT_CLOSE;
		return state == CT_STATE_ESTABLISHED ? CT_TIMEOUT_TCP : CT_TIMEOUT_SYN;
	case IPPROTO_UDP:
		return CT_TIMEOUT_UDP;
	case IPPROTO_ICMP:
		return CT_TIMEOUT_ICMP;
	}
	return CT_TIMEOUT_OTHER;
}

#define CT_NEW 0
#define CT_ESTABLISHED 1
#define CT_REPLY 2

static __always_inline void ct_update(struct ct_entry *e, struct pkt *p, __u64 now, int reply)
{
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, p->len);
	if (reply)
		e->seen_reply = 1;
	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & (TCP_FIN | TCP_RST))
			e->state = CT_STATE_CLOSING;
		else if (e->state == CT_STATE_NEW && reply)
			e->state = CT_STATE_ESTABLISHED;
	} else if (reply) {
		e->state = CT_STATE_ESTABLISHED;
	}
	e->expires = now + ct_timeout(p, e->state);
}

// ct_lookup finds the connection of p in the scope of endpoint ep_id and
// direction dir: the same direction (established) or the reverse (reply).
static __always_inline int ct_lookup(struct pkt *p, __u16 ep_id, __u8 dir, __u64 now)
{
	struct ct_key k = {
		.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport,
		.proto = p->proto, .dir = dir, .ep_id = ep_id,
	};
	struct ct_entry *e = bpf_map_lookup_elem(&conntrack, &k);
	if (e && e->expires > now) {
		ct_update(e, p, now, 0);
		return CT_ESTABLISHED;
	}
	struct ct_key r = {
		.saddr = p->daddr, .daddr = p->saddr, .sport = p->dport, .dport = p->sport,
		.proto = p->proto, .dir = dir ^ 1, .ep_id = ep_id,
	};
	e = bpf_map_lookup_elem(&conntrack, &r);
	if (e && e->expires > now) {
		ct_update(e, p, now, 1);
		return CT_REPLY;
	}
	return CT_NEW;
}

static __always_inline void ct_create(struct pkt *p, __u16 ep_id, __u8 dir, __u32 peer, __u64 now)
{
	struct ct_key k = {
		.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport,
		.proto = p->proto, .dir = dir, .ep_id = ep_id,
	};
	struct ct_entry e = {.packets = 1, .bytes = p->len, .peer_identity = peer};
	e.state = CT_STATE_NEW;
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST)))
		e.state = CT_STATE_CLOSING;
	e.expires = now + ct_timeout(p, e.state);
	bpf_map_update_elem(&conntrack, &k, &e, BPF_ANY);
}

static __always_inline struct policy_value *policy_lookup(__u16 ep_id, __u8 dir, __u32 identity, struct pkt *p)
{
	struct policy_key k = {
		.prefixlen = 88, .ep_id = ep_id, .dir = dir, .identity = identity, .proto = p->proto,
	};
	__builtin_memcpy(k.port, &p->pport, 2);
	return bpf_map_lookup_elem(&policy, &k);
}

// control_port tells whether p goes to one of the nodes' control ports.
static __always_inline int control_port(struct pkt *p)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return 0;
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return 0;
	__u16 port = bpf_ntohs(p->dport);
	int i;
#pragma unroll
	for (i = 0; i < CONTROL_PORTS; i++) {
		if (cfg->control_ports[i] && cfg->control_ports[i] == port)
			return 1;
	}
	return 0;
}

// to_node tells whether daddr, whose identity is peer, is a node's own
// address: this node's (host), another's (remote-node), or a known node's.
static __always_inline int to_node(__u32 peer, __u32 daddr)
{
	return peer == IDENTITY_HOST || peer == IDENTITY_REMOTE_NODE || bpf_map_lookup_elem(&nodes, &daddr);
}

// enforce applies the policy of endpoint ep in direction dir to p, whose
// other side has identity peer. It returns REASON_FORWARDED or the drop reason.
// For egress, daddr is the destination when it is not a local endpoint (0
// otherwise): a new flow to a control port of a node's own address (this
// node's or a known node's) needs an allow that names the port for that
// peer, whatever else the policy allows. Only new flows pay for the check.
//
// Deny entries apply whether or not the direction is enforced: a deny rule
// in a policy with enableDefaultDeny false still drops what it matches.
static __always_inline int enforce(struct endpoint_info *ep, __u8 dir, __u32 peer, __u32 src_id, __u32 dst_id,
				   __u16 peer_ep, struct pkt *p, __u32 ifindex, __u32 daddr)
{
	__u64 now = bpf_ktime_get_ns();
	if (ct_lookup(p, ep->ep_id, dir, now) != CT_NEW)
		return REASON_FORWARDED;
	__u8 enforced = ep->flags & (dir == DIR_INGRESS ? EP_INGRESS_ENFORCED : EP_EGRESS_ENFORCED);
	if (enforced && p->proto == IPPROTO_TCP && !(p->tcp_flags & TCP_SYN))
		return REASON_CT_MISSING;
	struct policy_value *v = policy_lookup(ep->ep_id, dir, peer, p);
	struct policy_value *any = policy_lookup(ep->ep_id, dir, 0, p);
	int reason;
	if ((v && v->deny) || (any && any->deny))
		reason = REASON_POLICY_DENY_RULE;
	else if (daddr && control_port(p) && to_node(peer, daddr) && !(v && (v->flags & POLICY_F_PORT)))
		reason = REASON_CONTROL_PORT;
	else if (!enforced || v || any)
		reason = REASON_FORWARDED;
	else
		reason = REASON_POLICY_DENIED;
	if (reason == REASON_FORWARDED) {
		ct_create(p, ep->ep_id, dir, peer, now);
		if (enforced)
			emit(EVENT_POLICY_VERDICT, REASON_FORWARDED, dir, ep->ep_id, peer_ep, src_id, dst_id, p, ifindex);
	}
	return reason;
}

static __always_inline struct ipcache_value *lookup_ipcache(__u32 addr)
{
	struct ipcache_key k = {.prefixlen = 32, .ip = addr};
	return bpf_map_lookup_elem(&ipcache, &k);
}

static __always_inline __u32 lookup_identity(__u32 addr)
{
	struct ipcache_value *v = lookup_ipcache(addr);
	return v ? v->identity : IDENTITY_WORLD;
}

static __always_inline int drop(struct __sk_buff *skb, int reason, __u8 dir, __u16 ep_id, __u16 peer_ep,
				__u32 src_id, __u32 dst_id, struct pkt *p)
{
	count(reason, dir, skb->len);
	emit(EVENT_DROP, reason, dir, ep_id, peer_ep, src_id, dst_id, p, skb->ifindex);
	return TC_ACT_SHOT;
}

// encap sends the packet to a pod on another node through the VXLAN device,
// with the source's security identity as the VNI.
static __always_inline int encap(struct __sk_buff *skb, __u32 tunnel_ip, __u32 identity)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->vxlan_ifindex)
		return TC_ACT_OK;
	struct bpf_tunnel_key key = {};
	key.remote_ipv4 = bpf_ntohl(tunnel_ip);
	key.tunnel_id = identity & 0xffffff;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

// encrypt_route decides how a packet for a pod on node reaches it: 0 =
// routed through the encryption device (node is a peer), -1 = the usual
// way (encryption off, or not strict and no peer yet), or
// REASON_NO_ENCRYPT_PEER (strict: it would leave in clear).
static __always_inline int encrypt_route(__u32 node)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !(cfg->encrypt & ENCRYPT_ON))
		return -1;
	if (bpf_map_lookup_elem(&encrypt_peers, &node))
		return 0;
	return (cfg->encrypt & ENCRYPT_STRICT) ? REASON_NO_ENCRYPT_PEER : -1;
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	struct pkt p = {};
	int r = parse(skb, &p);
	if (r < 0) {
		count(REASON_FORWARDED, DIR_EGRESS, skb->len);
		return TC_ACT_OK;
	}
	if (r != REASON_FORWARDED)
		return drop(skb, r, DIR_EGRESS, 0, 0, 0, 0, &p);

	__u32 saddr = p.saddr;
	struct endpoint_info *src = bpf_map_lookup_elem(&endpoints, &saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop(skb, REASON_BAD_SOURCE, DIR_EGRESS, 0, 0, 0, 0, &p);

	__u32 daddr = p.daddr;
	struct endpoint_info *dst = bpf_map_lookup_elem(&endpoints, &daddr);
	struct ipcache_value *remote = dst ? 0 : lookup_ipcache(daddr);
	__u32 dst_id = dst ? dst->identity : (remote ? remote->identity : IDENTITY_WORLD);
	__u16 dst_ep = dst ? dst->ep_id : 0;

	r = enforce(src, DIR_EGRESS, dst_id, src->identity, dst_id, dst_ep, &p, skb->ifindex, dst ? 0 : daddr);
	if (r != REASON_FORWARDED)
		return drop(skb, r, DIR_EGRESS, src->ep_id, dst_ep, src->identity, dst_id, &p);

	if (!dst) {
		count(REASON_FORWARDED, DIR_EGRESS, skb->len);
		// A backend answering a NodePort client goes back as the frontend.
		r = lb_reverse(skb, &p);
		if (r >= 0)
			return r;
		if (remote && remote->tunnel_ip) {
			r = encrypt_route(remote->tunnel_ip);
			if (r == REASON_NO_ENCRYPT_PEER)
				return drop(skb, r, DIR_EGRESS, src->ep_id, 0, src->identity, dst_id, &p);
			if (r == 0)
				return TC_ACT_OK; // the kernel routes it through the encryption device
			return encap(skb, remote->tunnel_ip, src->identity);
		}
		return TC_ACT_OK; // the node routes it
	}
	// A pod of this node: its ingress policy here, then straight into its namespace.
	r = enforce(dst, DIR_INGRESS, src->identity, src->identity, dst_id, src->ep_id, &p, dst->ifindex, 0);
	if (r != REASON_FORWARDED)
		return drop(skb, r, DIR_INGRESS, dst->ep_id, src->ep_id, src->identity, dst_id, &p);
	if (bpf_skb_store_bytes(skb, 0, dst->mac, 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 6, dst->host_mac, 6, 0) < 0)
		return drop(skb, REASON_INVALID, DIR_INGRESS, dst->ep_id, src->ep_id, src->identity, dst_id, &p);
	count(REASON_FORWARDED, DIR_EGRESS, skb->len);
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	return bpf_redirect_peer(dst->ifindex, 0);
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	struct pkt p = {};
	int r = parse(skb, &p);
	if (r < 0) {
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	if (r != REASON_FORWARDED)
		return drop(skb, r, DIR_INGRESS, 0, 0, 0, 0, &p);
	__u32 daddr = p.daddr;
	struct endpoint_info *dst = bpf_map_lookup_elem(&endpoints, &daddr);
	if (!dst) {
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		return TC_ACT_OK; // not for a known endpoint: leave it to the kernel
	}
	__u32 saddr = p.saddr;
	struct endpoint_info *src = bpf_map_lookup_elem(&endpoints, &saddr);
	__u32 src_id = src ? src->identity : lookup_identity(saddr);
	__u16 src_ep = src ? src->ep_id : 0;
	r = enforce(dst, DIR_INGRESS, src_id, src_id, dst->identity, src_ep, &p, skb->ifindex, 0);
	if (r != REASON_FORWARDED)
		return drop(skb, r, DIR_INGRESS, dst->ep_id, src_ep, src_id, dst->identity, &p);
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	return TC_ACT_OK;
}

// from_overlay: tc ingress of the VXLAN device. Only known nodes may send
// encapsulated traffic; the VNI carries the source identity, and the
// destination pod's ingress policy is enforced with it before delivery.
SEC("tc")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct pkt p = {};
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, REASON_INVALID, DIR_INGRESS, 0, 0, 0, 0, &p);
	__u32 outer = bpf_htonl(key.remote_ipv4);
	__u32 src_id = key.tunnel_id;
	int r = parse(skb, &p);
	if (!bpf_map_lookup_elem(&nodes, &outer)) {
		p.len = skb->len;
		return drop(skb, REASON_TUNNEL_SOURCE, DIR_INGRESS, 0, 0, src_id, 0, &p);
	}
	if (r < 0) {
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	if (r != REASON_FORWARDED)
		return drop(skb, r, DIR_INGRESS, 0, 0, src_id, 0, &p);
	__u32 daddr = p.daddr;
	struct endpoint_info *dst = bpf_map_lookup_elem(&endpoints, &daddr);
	if (!dst) {
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		// A remote backend's reply to a NodePort flow this node translated.
		r = lb_reverse(skb, &p);
		if (r >= 0)
			return r;
		return TC_ACT_OK;
	}
	r = enforce(dst, DIR_INGRESS, src_id, src_id, dst->identity, 0, &p, skb->ifindex, 0);
	if (r != REASON_FORWARDED)
		return drop(skb, r, DIR_INGRESS, dst->ep_id, 0, src_id, dst->identity, &p);
	if (bpf_skb_store_bytes(skb, 0, dst->mac, 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 6, dst->host_mac, 6, 0) < 0)
		return drop(skb, REASON_INVALID, DIR_INGRESS, dst->ep_id, 0, src_id, dst->identity, &p);
	// The inner frame was addressed to the sending node's gateway MAC, so
	// the VXLAN device marked it for another host; it is for our pod now.
	bpf_skb_change_type(skb, 0 /* PACKET_HOST */);
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	return bpf_redirect_peer(dst->ifindex, 0);
}

// lb_forward sends a translated NodePort packet to its backend: up the
// stack to a pod of this node, through the tunnel to the backend's node, or
// out of the device the FIB chooses (native routing).
static __always_inline int lb_forward(struct __sk_buff *skb, struct pkt *p, __u32 tunnel_ip, int local)
{
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	if (local)
		return TC_ACT_OK;
	if (tunnel_ip) {
		__u32 zero = 0;
		struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
		// Translated from the gateway: the backend's node is an
		// encryption peer, and the FIB sends it through the device.
		if (cfg && cfg->encrypt_snat && p->saddr == cfg->encrypt_snat)
			return lb_out(skb, p);
		if (cfg && cfg->vxlan_ifindex)
			return encap(skb, tunnel_ip, IDENTITY_WORLD);
	}
	return lb_out(skb, p);
}

// from_netdev: tc ingress of the node's underlay device. NodePort traffic
// that did not come from a local socket is translated here: DNAT to a
// backend, plus SNAT to this node when the backend is elsewhere so that the
// reply returns through this node. Everything else passes untouched.
SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (parse(skb, &p) != REASON_FORWARDED)
		return TC_ACT_OK;
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
		return TC_ACT_OK;
	int r = lb_reverse(skb, &p);
	if (r >= 0)
		return r;
	struct lb_nat *n = lb_nat_lookup(&p);
	if (n) {
		__u32 tunnel_ip = n->tunnel_ip;
		__u32 daddr = n->daddr;
		int local = bpf_map_lookup_elem(&endpoints, &daddr) != 0;
		if (lb_rewrite(skb, &p, n->saddr, n->daddr, n->sport, n->dport) < 0)
			return TC_ACT_SHOT;
		return lb_forward(skb, &p, tunnel_ip, local);
	}
	struct lb_key k = {.vip = p.daddr, .port = p.dport, .proto = p.proto};
	struct lb_service *svc = bpf_map_lookup_elem(&lb_services, &k);
	if (!svc || !(svc->flags & LB_FLAG_NODEPORT))
		return TC_ACT_OK;
	if (p.proto == IPPROTO_TCP && !(p.tcp_flags & TCP_SYN))
		return TC_ACT_OK; // not a flow we translated: the stack answers it
	struct lb_backend *b = lb_pick(svc, p.saddr, lb_hash(p.saddr, p.daddr, p.sport, p.dport, p.proto));
	if (!b)
		return drop(skb, REASON_NO_BACKEND, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &p);
	__u32 bip = b->ip;
	__u16 bport = b->port;
	int local = bpf_map_lookup_elem(&endpoints, &bip) != 0;
	struct ipcache_value *where = local ? 0 : lookup_ipcache(bip);
	__u32 tunnel_ip = where ? where->tunnel_ip : 0;
	// A backend on another node goes through the encryption device when
	// that node is a peer (never in clear under strict mode).
	int enc = tunnel_ip ? encrypt_route(tunnel_ip) : -1;
	if (enc == REASON_NO_ENCRYPT_PEER)
		return drop(skb, enc, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &p);
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	__u32 snat = p.daddr;
	if (enc == 0 && cfg && cfg->encrypt_snat)
		snat = cfg->encrypt_snat;
	__u64 expires = bpf_ktime_get_ns() + lb_nat_timeout(p.proto);
	// The reply's tuple must be unique: a local backend sees the client
	// itself; a remote one sees this node and a source port kept from the
	// client when free, else a random one.
	__u32 nsaddr = local ? p.saddr : snat;
	__u16 nsport = p.sport;
	struct lb_nat rev = {.expires = expires, .saddr = p.daddr, .daddr = p.saddr, .sport = p.dport, .dport = p.sport, .reverse = 1};
	int i, ok = 0;
	for (i = 0; i < LB_SNAT_TRIES; i++) {
		if (lb_nat_put(bip, nsaddr, bport, nsport, p.proto, &rev, BPF_NOEXIST) == 0) {
			ok = 1;
			break;
		}
		if (local) {
			// The same client tuple again (a retransmitted SYN): replace it.
			ok = lb_nat_put(bip, nsaddr, bport, nsport, p.proto, &rev, BPF_ANY) == 0;
			break;
		}
		nsport = bpf_htons(LB_SNAT_PORT_MIN + bpf_get_prandom_u32() % LB_SNAT_PORT_RANGE);
	}
	if (!ok)
		return drop(skb, REASON_LB_NAT, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &p);
	struct lb_nat fwd = {.expires = expires, .saddr = nsaddr, .daddr = bip, .sport = nsport, .dport = bport, .tunnel_ip = local ? 0 : tunnel_ip};
	lb_nat_put(p.saddr, p.daddr, p.sport, p.dport, p.proto, &fwd, BPF_ANY);
	if (lb_rewrite(skb, &p, nsaddr, bip, nsport, bport) < 0)
		return TC_ACT_SHOT;
	return lb_forward(skb, &p, local ? 0 : tunnel_ip, local);
}

// from_wireguard: tc ingress of the encryption device (layer 3: packets
// start at the IPv4 header). Replies of NodePort flows this node sent to a
// backend on a peer come back decrypted here, to the gateway address; they
// get a MAC header so the shared code applies, are translated back to the
// frontend and sent to the client. Everything else passes untouched.
SEC("tc")
int from_wireguard(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data;
	if ((void *)(ip + 1) > data_end || ip->version != 4)
		return TC_ACT_OK;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	__u8 *l4 = (__u8 *)data + ip->ihl * 4;
	if (ip->ihl < 5 || l4 + 4 > (__u8 *)data_end)
		return TC_ACT_OK;
	struct pkt p = {.saddr = ip->saddr, .daddr = ip->daddr, .proto = ip->protocol};
	p.sport = *(__u16 *)l4;
	p.dport = *(__u16 *)(l4 + 2);
	struct lb_nat *n = lb_nat_lookup(&p);
	if (!n || !n->reverse)
		return TC_ACT_OK;
	if (bpf_skb_change_head(skb, ETH_HLEN, 0) < 0)
		return TC_ACT_SHOT;
	__u16 eth_ip = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 12, &eth_ip, 2, 0) < 0)
		return TC_ACT_SHOT;
	struct pkt q = {};
	if (parse(skb, &q) != REASON_FORWARDED)
		return TC_ACT_SHOT;
	int r = lb_reverse(skb, &q);
	return r >= 0 ? r : TC_ACT_SHOT;
}

char __license[] SEC("license") = "Dual BSD/GPL";
