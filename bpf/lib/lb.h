// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Service load balancing: maps, backend selection (random, Maglev,
// affinity), NodePort NAT and its reverse. The socket programs are in
// progs/socket.h.
//
// Frontends (ClusterIP VIP:port/proto, NodePort node-IP:port/proto) map to a
// service entry; its backends sit in numbered slots 1..count chosen by the
// agent (it has already applied affinity, sharing and health, so every slot
// is a backend new connections may use). A backend is picked at random or
// through the service's Maglev table, or kept per client while session
// affinity holds.
//
// Two places translate:
//   - cgroup connect4/sendmsg4 rewrite the destination of a local socket
//     (pods and the node itself) once, and recvmsg4/getpeername4 show the
//     service address back to the application: no per-packet NAT.
//   - from_netdev (tc ingress of the node's underlay device) DNATs traffic
//     for NodePort frontends that did not come from a local socket; for a
//     backend on another node the source is also rewritten to this node
//     (SNAT) so the reply comes back here to be translated back.
//
// The socket programs only act in network namespaces this node's agent
// registered (its pods and its own), so several lab nodes on one machine
// each attached at the cgroup root do not translate for each other.
#pragma once

#define LB_FLAG_AFFINITY 1
#define LB_FLAG_NODEPORT 2
#define LB_ALG_RANDOM 0
#define LB_ALG_MAGLEV 1

// A translation lives as long as its flow (lb_nat_lookup moves its state,
// both directions' entries together): CT_TIMEOUT_SYN (TCP) or
// CT_TIMEOUT_UDP until the client has answered a reply of the backend
// (TCP: the handshake's ACK after the SYN-ACK; a blind ACK is answered
// with the backend's RST), LB_NAT_TIMEOUT_* after an established flow's
// last packet, and CT_TIMEOUT_CLOSE once both sides sent a FIN or either
// an RST. So a flood of SYNs from many (spoofed) source ports gives each
// SNAT port back within a minute, even when the backend answers them.
#define LB_NAT_TIMEOUT_TCP (21600 * NSEC)
#define LB_NAT_TIMEOUT_UDP (300 * NSEC)
// A NodePort flow to a backend on another node is translated from this
// node (its address, or the WireGuard gateway's) with a source port of
// 61000-65535: above the kernel's default ephemeral range (32768-60999),
// from which the node's own connections to the same backends take their
// ports without knowing the NAT table. With a port of the client's, a
// connection of the node could get the tuple of a translated flow, and its
// replies went to that flow's client. That is 4,536 live translations per
// backend address, port and protocol from one node (lb_nat_claim reuses
// expired ones); beyond, a new flow is dropped (REASON_LB_NAT).
#define LB_SNAT_PORT_MIN 61000
#define LB_SNAT_PORT_RANGE 4536 // up to 65535
#define LB_SNAT_TRIES 8

struct lb_key {
	__u32 vip;  // network order
	__u16 port; // network order
	__u8 proto;
	__u8 pad;
};

struct lb_service {
	__u32 id;
	__u16 count; // backends in slots 1..count; 0 = none (connections refused)
	__u8 flags;  // LB_FLAG_*
	__u8 alg;    // LB_ALG_*
	__u32 affinity_timeout; // seconds
	__u32 pad;
};

struct lb_slot_key {
	__u32 id;
	__u32 slot;
};

struct lb_backend {
	__u32 ip;   // network order
	__u16 port; // network order
	__u8 pad[2];
	__u32 id; // backend ID (session affinity)
};

struct lb_member_key {
	__u32 id; // service
	__u32 backend;
};

struct lb_affinity_key {
	__u64 client; // netns cookie (sockets) or client IPv4 (tc)
	__u32 id;     // service
	// 1: client is an address from the network (a NodePort at tc), 0: a
	// netns cookie. Apart, since an address a.b.0.0 is the number of a
	// small cookie: a SYN from it would set (or use) that namespace's
	// affinity to a NodePort both reach.
	__u32 net;
};

struct lb_affinity {
	__u64 last_used; // ns
	__u32 backend;
	__u32 pad;
};

struct lb_sock_key {
	__u64 cookie;
	__u32 ip;
	__u16 port;
	__u8 pad[2];
};

struct lb_sock_value {
	__u32 vip;
	__u16 port;
	__u8 proto;
	__u8 pad;
	__u32 backend; // its ID: the reverse holds only while it is a member of the service
};

// NAT of one direction of a translated flow: a packet matching the key has
// its addresses and ports rewritten to the value's.
struct lb_nat_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct lb_nat {
	__u64 expires;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u32 tunnel_ip; // forward direction: the backend's node when tunnelled
	__u8 reverse;    // 1: a reply being translated back to the client
	__u8 state;      // CT_STATE_* or LB_NAT_REPLIED, the same in both directions' entries
	__u8 flags;      // LB_NAT_FIN_*, LB_NAT_SEQ_*, LB_NAT_RESYNC_*: the same in both entries
	__u8 path;       // reverse entries: LB_PATH_*, the way the backend's replies come
	// TCP, of this direction's sender (host order; lb_nat_tcp): the
	// highest of its numbers the other side acknowledged (what the other
	// side expects next; the only field before 2026-12-05, "expect", in
	// network order), the number after the last it sent (SYN and FIN
	// count one), and the number after a new connection's SYN (client) or
	// SYN-ACK (backend) on the tuple of an established flow, until the
	// client acknowledges the backend's answer (LB_NAT_RESYNC_*).
	__u32 acked;
	__u32 end;
	__u32 resync;
};

// A TCP segment moves a translation's numbers, and its FIN or RST closes
// it, only when it fits the flow (lb_nat_tcp): its sequence number within
// LB_SEQ_SLACK before and LB_SEQ_AHEAD after what its receiver
// acknowledged, its acknowledgement within LB_SEQ_SLACK before what its
// sender's side last had acknowledged and no further than what the other
// side sent. An RST counts only at exactly the number its receiver
// acknowledged last or the one after the last its sender sent (RFC 5961's
// rule for endpoints: a receiver answers any other in its window with an
// ACK, to which the sender that lost the connection answers with an RST at
// exactly that number, which this node sees pass). One guessed blindly
// passes about once in 2^31.
#define LB_SEQ_SLACK (1U << 20)
#define LB_SEQ_AHEAD (64U << 20)

// The way a backend's replies reach this node, in its reverse entry; the
// caller of lb_nat_lookup says which way the packet came. A reply that
// came another way is forged (lb_nat_foreign): a local backend's come only
// from its veth (from_container), a WireGuard peer's backend's to the
// gateway address only through the WireGuard device, the others from the
// underlay (from_netdev, or from_overlay when the backend's node
// encapsulates them).
#define LB_PATH_UNKNOWN 0 // an entry of an agent before paths (upgrade): never foreign
#define LB_PATH_UNDERLAY 1
#define LB_PATH_LOCAL 2
#define LB_PATH_WIREGUARD 3
#define LB_FORGED -2 // lb_reverse: a reply that came the wrong way

// lb_nat.state beyond CT_STATE_*: the backend replied, the client has not
// answered yet (CT_STATE_NEW's timeout).
#define LB_NAT_REPLIED 3
// lb_nat.flags: the sides that sent a FIN that fit the flow; the sides
// whose numbers are known (the client's from its SYN, the backend's from
// its SYN-ACK; an entry of an agent from before 2026-12-05 knows neither
// and takes each side's from its next segment); a new connection on an
// established flow's tuple, its SYN seen, then the backend's SYN-ACK.
#define LB_NAT_FIN_CLIENT 1
#define LB_NAT_FIN_BACKEND 2
#define LB_NAT_SEQ_CLIENT 4
#define LB_NAT_SEQ_BACKEND 8
#define LB_NAT_RESYNC_SYN 16
#define LB_NAT_RESYNC_SYNACK 32

// Table size of Maglev; the agent sets it at load (a prime) and sizes the
// lb_maglev values to match.
volatile const __u32 maglev_size = 16381;
#define MAGLEV_MAX 131071

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_key);
	__type(value, struct lb_service);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct lb_slot_key);
	__type(value, struct lb_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct lb_member_key);
	__type(value, struct lb_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb_members SEC(".maps");

// Maglev tables: service ID -> maglev_size slot numbers (__u32 each).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__uint(value_size, 16381 * 4);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb_maglev SEC(".maps");

// lb_affinities holds the socket clients' affinities (pods' and the
// node's namespaces, by netns cookie), lb_affinities_net the network
// clients' (NodePort, by address): a NodePort affinity is written at a
// client's first packet, before any handshake, so spoofed SYNs from
// addresses without end fill its table; until 2026-12-07 one table held
// both, and such a flood pushed every pod's affinity out
// (TestNodePortAffinityFloodSparesSockets).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity);
} lb_affinities SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity);
} lb_affinities_net SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct lb_sock_key);
	__type(value, struct lb_sock_value);
} lb_sock_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct lb_nat_key);
	__type(value, struct lb_nat);
} lb_nats SEC(".maps");

// Translations of NodePort flows not established yet (a TCP flow before
// the client's ACK of the backend's SYN-ACK, a UDP flow before the
// client's datagram after a reply; lb_nat_lookup settles both halves into
// lb_nats then): a flood of SYNs or datagrams nobody completes evicts
// only its own kind, never an established flow's translation.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_nat_key);
	__type(value, struct lb_nat);
} lb_nats_new SEC(".maps");

// Network namespaces whose sockets this node translates (cookie -> 1).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} lb_netns SEC(".maps");

const struct lb_key *unused_lbk __attribute__((unused));
const struct lb_service *unused_lbs __attribute__((unused));
const struct lb_slot_key *unused_lbsk __attribute__((unused));
const struct lb_backend *unused_lbb __attribute__((unused));
const struct lb_member_key *unused_lbm __attribute__((unused));
const struct lb_affinity_key *unused_lbak __attribute__((unused));
const struct lb_affinity *unused_lba __attribute__((unused));
const struct lb_sock_key *unused_lbsok __attribute__((unused));
const struct lb_sock_value *unused_lbsov __attribute__((unused));
const struct lb_nat_key *unused_lbnk __attribute__((unused));
const struct lb_nat *unused_lbn __attribute__((unused));

static __always_inline __u32 lb_hash(__u32 saddr, __u32 daddr, __u16 sport, __u16 dport, __u8 proto)
{
	// A Jenkins-style finaliser over the tuple; the same on every node, so
	// Maglev picks the same backend wherever the flow lands.
	__u32 h = saddr ^ 0x9e3779b9;
	h ^= daddr + 0x7f4a7c15 + (h << 6) + (h >> 2);
	h ^= ((__u32)sport << 16 | dport) + 0x165667b1 + (h << 6) + (h >> 2);
	h ^= proto + (h << 6) + (h >> 2);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

// lb_pick chooses a backend of svc for a new connection: the client's
// affinity when it still holds, else Maglev (by hash) or random. client is
// a netns cookie (net 0) or an address from the network (net 1).
static __always_inline struct lb_backend *lb_pick(struct lb_service *svc, __u64 client, __u32 net, __u32 hash)
{
	if (svc->count == 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct lb_affinity_key ak = {.client = client, .id = svc->id, .net = net};
	if (svc->flags & LB_FLAG_AFFINITY) {
		struct lb_affinity *a = net ? bpf_map_lookup_elem(&lb_affinities_net, &ak) : bpf_map_lookup_elem(&lb_affinities, &ak);
		if (a && now - a->last_used < (__u64)svc->affinity_timeout * NSEC) {
			struct lb_member_key mk = {.id = svc->id, .backend = a->backend};
			struct lb_backend *b = bpf_map_lookup_elem(&lb_members, &mk);
			if (b) {
				a->last_used = now;
				return b;
			}
		}
	}
	struct lb_slot_key sk = {.id = svc->id};
	if (svc->alg == LB_ALG_MAGLEV) {
		__u32 *table = bpf_map_lookup_elem(&lb_maglev, &svc->id);
		__u32 m = maglev_size;
		if (!table || m == 0 || m > MAGLEV_MAX)
			return 0;
		__u32 idx = hash % m;
		// Hide the modulo from the compiler so the bound check stays for
		// the verifier (which knows m from the frozen .rodata).
		asm volatile("" : "+r"(idx));
		if (idx >= m)
			return 0;
		sk.slot = table[idx];
	} else {
		sk.slot = (bpf_get_prandom_u32() % svc->count) + 1;
	}
	struct lb_backend *b = bpf_map_lookup_elem(&lb_slots, &sk);
	if (b && (svc->flags & LB_FLAG_AFFINITY)) {
		struct lb_affinity a = {.last_used = now, .backend = b->id};
		if (net)
			bpf_map_update_elem(&lb_affinities_net, &ak, &a, BPF_ANY);
		else
			bpf_map_update_elem(&lb_affinities, &ak, &a, BPF_ANY);
	}
	return b;
}

#define IP_CSUM_OFF (ETH_HLEN + 10)
#define IP_SRC_OFF (ETH_HLEN + 12)
#define IP_DST_OFF (ETH_HLEN + 16)

// lb_rewrite_addr sets the address at off from old to new, fixing the
// IPv4 checksum, and the L4 checksum at csum_off unless it is 0.
static __always_inline int lb_rewrite_addr(struct __sk_buff *skb, __u32 off, __u32 old, __u32 new, __u32 csum_off,
					   __u64 flags)
{
	if (old == new)
		return 0;
	if (csum_off && bpf_l4_csum_replace(skb, csum_off, old, new, flags | 4) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, 4) < 0 || bpf_skb_store_bytes(skb, off, &new, 4, 0) < 0)
		return -1;
	return 0;
}

// lb_rewrite sets the packet's addresses and ports to those of n,
// fixing the IPv4 and TCP/UDP checksums. A fragment after the first
// (p->frag) has neither ports nor the L4 checksum, which its first
// fragment's rewrite fixed for the whole datagram: only its addresses
// change.
static __always_inline int lb_rewrite(struct __sk_buff *skb, struct pkt *p, __u32 saddr, __u32 daddr,
				      __u16 sport, __u16 dport)
{
	__u32 l4 = ETH_HLEN + p->ihl;
	__u32 csum_off;
	__u64 flags = BPF_F_PSEUDO_HDR;
	if (p->proto == IPPROTO_TCP) {
		csum_off = l4 + 16;
	} else if (p->proto == IPPROTO_UDP) {
		csum_off = l4 + 6;
		flags |= BPF_F_MARK_MANGLED_0;
	} else {
		return -1;
	}
	if (p->frag)
		csum_off = 0;
	if (lb_rewrite_addr(skb, IP_SRC_OFF, p->saddr, saddr, csum_off, flags) < 0 ||
	    lb_rewrite_addr(skb, IP_DST_OFF, p->daddr, daddr, csum_off, flags) < 0)
		return -1;
	if (!p->frag && sport != p->sport) {
		if (bpf_l4_csum_replace(skb, csum_off, p->sport, sport, (flags & BPF_F_MARK_MANGLED_0) | 2) < 0 ||
		    bpf_skb_store_bytes(skb, l4, &sport, 2, 0) < 0)
			return -1;
	}
	if (!p->frag && dport != p->dport) {
		if (bpf_l4_csum_replace(skb, csum_off, p->dport, dport, (flags & BPF_F_MARK_MANGLED_0) | 2) < 0 ||
		    bpf_skb_store_bytes(skb, l4 + 2, &dport, 2, 0) < 0)
			return -1;
	}
	p->saddr = saddr;
	p->daddr = daddr;
	p->sport = sport;
	p->dport = dport;
	return 0;
}

static __always_inline __u64 lb_nat_timeout(__u8 proto, __u8 state)
{
	if (proto == IPPROTO_TCP) {
		if (state == CT_STATE_CLOSING)
			return CT_TIMEOUT_CLOSE;
		return state == CT_STATE_ESTABLISHED ? LB_NAT_TIMEOUT_TCP : CT_TIMEOUT_SYN;
	}
	return state == CT_STATE_ESTABLISHED ? LB_NAT_TIMEOUT_UDP : CT_TIMEOUT_UDP;
}

// lb_nat_next is the state of a UDP flow in state after a datagram of
// direction reverse (1: the backend's).
static __always_inline __u8 lb_nat_next(int reverse, __u8 state)
{
	if (reverse && state == CT_STATE_NEW)
		return LB_NAT_REPLIED;
	if (!reverse && state == LB_NAT_REPLIED)
		return CT_STATE_ESTABLISHED;
	return state;
}

// lb_seq_in tells whether x lies in [lo, hi] of the sequence space.
static __always_inline int lb_seq_in(__u32 x, __u32 lo, __u32 hi)
{
	return x - lo <= hi - lo;
}

// lb_seq_after tells whether a comes after b in the sequence space.
static __always_inline int lb_seq_after(__u32 a, __u32 b)
{
	return (__s32)(a - b) > 0;
}

// lb_nat_tcp is the state of a TCP flow after segment p, whose direction's
// entry is n and the other's o; it moves their numbers and *flags (the
// caller writes both entries' state and flags). What moves it:
//   - the client's SYN opens the flow anew when it is new (not a
//     retransmission) or closing; on an established flow it is noted
//     (LB_NAT_RESYNC_SYN), since the backend may have lost the connection
//     unseen: the backend's SYN-ACK of it is noted too, and the client's
//     ACK of that makes the new connection's numbers the flow's. Any
//     segment of the backend that fits the old numbers (its answer to the
//     SYN when it still holds the connection) forgets the notes.
//   - the backend's SYN-ACK of the client's SYN: replied; the client's ACK
//     of it: established. Nothing else of either side moves a new or
//     replied flow.
//   - an RST (LB_SEQ_* above): closing. The backend's refusal of the SYN
//     (its acknowledgement that number + 1) counts too.
//   - any other segment that fits (LB_SEQ_*) and carries an ACK moves
//     its side's numbers; FINs of both sides that fit: closing.
static __always_inline __u8 lb_nat_tcp(struct pkt *p, struct lb_nat *n, struct lb_nat *o, __u8 *flags)
{
	__u8 f = *flags, state = n->state, tf = p->tcp_flags;
	int client = !n->reverse, has_ack = tf & TCP_ACK;
	__u8 mine = client ? LB_NAT_SEQ_CLIENT : LB_NAT_SEQ_BACKEND;
	__u8 theirs = client ? LB_NAT_SEQ_BACKEND : LB_NAT_SEQ_CLIENT;
	struct lb_nat *c = client ? n : o, *b = client ? o : n;
	__u32 seq = bpf_ntohl(p->seq), ack = bpf_ntohl(p->ack);

	if (tf & TCP_SYN) {
		if (client && !has_ack) {
			int again = (f & mine) && c->end == seq + 1;
			if (state == CT_STATE_CLOSING || (state == CT_STATE_NEW && !again)) {
				c->end = seq + 1;
				c->acked = seq;
				*flags = LB_NAT_SEQ_CLIENT;
				return CT_STATE_NEW;
			}
			if (state == CT_STATE_ESTABLISHED && !again) {
				c->resync = seq + 1;
				*flags = (f & ~LB_NAT_RESYNC_SYNACK) | LB_NAT_RESYNC_SYN;
			}
			return state;
		}
		if (!client && has_ack) {
			if (state == CT_STATE_NEW || state == LB_NAT_REPLIED) {
				if ((f & LB_NAT_SEQ_CLIENT) && ack != c->end)
					return state;
				c->end = c->acked = ack;
				b->end = seq + 1;
				b->acked = seq;
				*flags = f | LB_NAT_SEQ_CLIENT | LB_NAT_SEQ_BACKEND;
				return LB_NAT_REPLIED;
			}
			if ((f & LB_NAT_RESYNC_SYN) && ack == c->resync) {
				b->resync = seq + 1;
				*flags = f | LB_NAT_RESYNC_SYNACK;
			}
		}
		return state;
	}
	if (tf & TCP_RST) {
		int fits;
		if (f & mine)
			fits = seq == n->acked || seq == n->end;
		else if (client || state != CT_STATE_NEW)
			fits = seq == n->acked; // an older agent's entry: what it kept
		else
			fits = has_ack && (f & LB_NAT_SEQ_CLIENT) && ack == c->end; // a refused connection
		if (!client && has_ack && (f & LB_NAT_RESYNC_SYN) && ack == c->resync)
			fits = 1; // a refused new connection on the tuple
		return fits ? CT_STATE_CLOSING : state;
	}
	// Nothing else moves a new flow; and every segment of a synchronised
	// connection but an RST carries an ACK: one without (forged: its
	// acknowledgement goes unchecked below) moves nothing. Until
	// 2026-12-06 it moved its side's end, and a blind forger whose
	// segment fell in the window (about one guess in 64) closed the flow
	// with an RST at the end it chose (TestNodePortNATForgedSegmentsLeaveFlowsOpen).
	if (state == CT_STATE_NEW || !has_ack)
		return state;
	__u32 hdr = ETH_HLEN + p->ihl + p->tcp_doff;
	__u32 end = seq + (p->len > hdr ? p->len - hdr : 0) + ((tf & TCP_FIN) ? 1 : 0);
	if (client && (f & LB_NAT_RESYNC_SYNACK) && has_ack && seq == c->resync && ack == b->resync) {
		// The client took the backend's answer to its new connection:
		// that connection's numbers are the flow's from now on.
		c->acked = seq;
		c->end = end;
		b->end = b->acked = ack;
		*flags = LB_NAT_SEQ_CLIENT | LB_NAT_SEQ_BACKEND | ((tf & TCP_FIN) ? LB_NAT_FIN_CLIENT : 0);
		return CT_STATE_ESTABLISHED;
	}
	if (f & mine) {
		if (!lb_seq_in(seq, n->acked - LB_SEQ_SLACK, n->acked + LB_SEQ_AHEAD))
			return state;
		if (has_ack && (f & theirs) && !lb_seq_in(ack, o->acked - LB_SEQ_SLACK, o->end))
			return state;
	} else {
		// An older agent's entry: this side's numbers from this segment.
		if (!n->acked)
			n->acked = seq;
		n->end = seq;
		f |= mine;
	}
	if (lb_seq_after(end, n->end))
		n->end = end;
	if (has_ack && (f & theirs) && lb_seq_after(ack, o->acked))
		o->acked = ack;
	if (!client)
		f &= ~(LB_NAT_RESYNC_SYN | LB_NAT_RESYNC_SYNACK);
	if (tf & TCP_FIN)
		f |= client ? LB_NAT_FIN_CLIENT : LB_NAT_FIN_BACKEND;
	*flags = f;
	if ((f & (LB_NAT_FIN_CLIENT | LB_NAT_FIN_BACKEND)) == (LB_NAT_FIN_CLIENT | LB_NAT_FIN_BACKEND))
		return CT_STATE_CLOSING;
	if (client && state == LB_NAT_REPLIED && has_ack && ack == b->end)
		return CT_STATE_ESTABLISHED;
	return state;
}

// lb_nat_foreign tells whether n, found for a packet that came the way
// from (LB_PATH_*), is a reverse entry whose replies never come that way:
// such a packet is forged and must be dropped, not translated. WireGuard
// is authenticated: it may carry what the underlay does.
static __always_inline int lb_nat_foreign(struct lb_nat *n, __u8 from)
{
	if (!n->reverse || n->path == LB_PATH_UNKNOWN)
		return 0;
	if (from == LB_PATH_WIREGUARD)
		return n->path == LB_PATH_LOCAL;
	return n->path != from;
}

// lb_nat_now reads the clock once: *now is 0 until then.
static __always_inline __u64 lb_nat_now(__u64 *now)
{
	if (!*now)
		*now = bpf_ktime_get_ns();
	return *now;
}

// lb_nat_find returns the live entry of k: lb_nats' (established flows),
// else lb_nats_new's, telling which in *fresh (1: lb_nats_new). The clock
// is read (lb_nat_now) only when there is an entry. A miss in both asks
// lb_nats once more: lb_nat_settle, on another CPU, may have moved the
// entry between the two lookups (copied to lb_nats after the first,
// deleted from lb_nats_new before the second); only a new flow's first
// packet pays for it.
static __always_inline struct lb_nat *lb_nat_find(struct lb_nat_key *k, __u64 *now, int *fresh)
{
	struct lb_nat *n = bpf_map_lookup_elem(&lb_nats, k);
	if (n && n->expires >= lb_nat_now(now)) {
		*fresh = 0;
		return n;
	}
	n = bpf_map_lookup_elem(&lb_nats_new, k);
	if (n) {
		if (n->expires < lb_nat_now(now))
			return 0;
		*fresh = 1;
		return n;
	}
	n = bpf_map_lookup_elem(&lb_nats, k);
	if (!n || n->expires < lb_nat_now(now))
		return 0;
	*fresh = 0;
	return n;
}

// lb_nat_delete deletes k's entries, in both tables.
static __always_inline void lb_nat_delete(struct lb_nat_key *k)
{
	bpf_map_delete_elem(&lb_nats_new, k);
	bpf_map_delete_elem(&lb_nats, k);
}

// lb_nat_other returns the other half of n, the live entry of key k: the
// entry keyed by n's rewritten tuple reversed, when it is live, of the
// other direction and points back at k; else NULL (n is a lone survivor
// of a flow whose other half expired or was taken by another flow).
// *fresh tells its table as lb_nat_find does.
static __always_inline struct lb_nat *lb_nat_other(struct lb_nat *n, struct lb_nat_key *k, __u64 *now, int *fresh)
{
	struct lb_nat_key ok = {.saddr = n->daddr, .daddr = n->saddr, .sport = n->dport, .dport = n->sport, .proto = k->proto};
	struct lb_nat *o = lb_nat_find(&ok, now, fresh);
	if (!o || o->reverse == n->reverse || o->saddr != k->daddr || o->daddr != k->saddr || o->sport != k->dport ||
	    o->dport != k->sport)
		return 0;
	return o;
}

// lb_nat_settle moves the halves of an established flow still in
// lb_nats_new (n, key k, when fresh; o, the other half, when ofresh) to
// lb_nats, and returns k's entry to use from now on. Each half is copied
// first and deleted from lb_nats_new only once its copy is found in
// lb_nats (lb_nat_find looks there again after a miss in both); a half
// whose copy failed, or was taken meanwhile, stays where it is, found as
// before.
static __always_inline struct lb_nat *lb_nat_settle(struct lb_nat_key *k, struct lb_nat *n, int fresh, struct lb_nat *o,
						     int ofresh)
{
	struct lb_nat_key ok = {.saddr = n->daddr, .daddr = n->saddr, .sport = n->dport, .dport = n->sport, .proto = k->proto};
	struct lb_nat nv = *n, ov = *o;
	if (ofresh && bpf_map_update_elem(&lb_nats, &ok, &ov, BPF_ANY) == 0 && bpf_map_lookup_elem(&lb_nats, &ok))
		bpf_map_delete_elem(&lb_nats_new, &ok);
	if (!fresh || bpf_map_update_elem(&lb_nats, k, &nv, BPF_ANY) != 0)
		return n;
	struct lb_nat *m = bpf_map_lookup_elem(&lb_nats, k);
	if (!m)
		return n;
	bpf_map_delete_elem(&lb_nats_new, k);
	return m;
}

// lb_nat_lookup returns the live NAT entry of p's tuple, which came the
// way from (LB_PATH_*), and moves its flow on (lb_nat_next, lb_nat_tcp;
// an established flow's halves settle into lb_nats). An entry counts only
// with its other direction's entry (keyed by its rewritten tuple
// reversed) live and pointing back at it: each packet refreshes both, and
// a lone survivor of a flow whose other half expired and was taken by
// another flow translates nothing (it would send its packets into that
// flow). A foreign entry (lb_nat_foreign) is returned untouched: the
// caller drops the packet.
static __always_inline struct lb_nat *lb_nat_lookup(struct pkt *p, __u8 from)
{
	struct lb_nat_key k = {.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport, .proto = p->proto};
	__u64 now = 0;
	int fresh = 0, ofresh = 0;
	struct lb_nat *n = lb_nat_find(&k, &now, &fresh);
	if (!n)
		return 0;
	if (lb_nat_foreign(n, from))
		return n;
	struct lb_nat *o = lb_nat_other(n, &k, &now, &ofresh);
	if (!o)
		return 0;
	__u8 flags = n->flags;
	__u8 state = p->proto == IPPROTO_TCP ? lb_nat_tcp(p, n, o, &flags) : lb_nat_next(n->reverse, n->state);
	if (state != n->state || flags != n->flags) {
		n->state = o->state = state;
		n->flags = o->flags = flags;
	}
	n->expires = o->expires = now + lb_nat_timeout(p->proto, state);
	if ((fresh || ofresh) && state == CT_STATE_ESTABLISHED)
		return lb_nat_settle(&k, n, fresh, o, ofresh);
	return n;
}

// lb_nat_reply tells whether p is a reply of a live NodePort translation,
// without moving its flow (lb_reverse does, on the packet it translates).
static __always_inline int lb_nat_reply(struct pkt *p)
{
	struct lb_nat_key k = {.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport, .proto = p->proto};
	__u64 now = 0;
	int fresh;
	struct lb_nat *n = lb_nat_find(&k, &now, &fresh);
	return n && n->reverse;
}

// lb_fib asks the FIB for the way out of a packet from saddr to daddr
// (p's translation: the caller may ask before rewriting p). The FIB checks
// the length the device will send against its MTU: for a GSO skb (merged
// by GRO on the way in, or one GSO packet of a local backend; segmented on
// the way out) that is one segment, not skb->len (which refused them and
// stalled bulk downloads through every NodePort); the kernel's own check
// (tot_len 0) is no use here, as it counts the Ethernet header tc sees
// against an L3 device's MTU (WireGuard's) and refused full-size packets.
// It returns the FIB's BPF_FIB_LKUP_RET_* with *fib filled (the device,
// or the MTU the packet does not fit).
static __always_inline int lb_fib(struct __sk_buff *skb, struct pkt *p, __u32 saddr, __u32 daddr,
				  struct bpf_fib_lookup *fib)
{
	fib->family = 2; // AF_INET
	fib->ipv4_src = saddr;
	fib->ipv4_dst = daddr;
	fib->l4_protocol = p->proto;
	fib->tot_len = skb->len - ETH_HLEN;
	if (skb->gso_size)
		fib->tot_len = p->ihl + (p->proto == IPPROTO_TCP ? p->tcp_doff : 8) + skb->gso_size;
	fib->ifindex = skb->ifindex;
	return bpf_fib_lookup(skb, fib, sizeof(*fib), BPF_FIB_LOOKUP_SKIP_NEIGH);
}

// lb_fib_refused drops a NodePort packet the FIB refused (rc), reported:
// too big for the way out (REASON_FRAG_NEEDED) or no way out.
static __always_inline int lb_fib_refused(struct __sk_buff *skb, struct pkt *p, int rc)
{
	int reason = rc == BPF_FIB_LKUP_RET_FRAG_NEEDED ? REASON_FRAG_NEEDED : REASON_NO_ROUTE;
	return drop(skb, reason, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, p);
}

// An ICMP "fragmentation needed" as lb_too_big sends it: its IPv4 header,
// the ICMP header with the next hop's MTU, and the refused packet's IPv4
// header (without options) and first 8 bytes.
struct frag_needed {
	struct iphdr ip;
	__u8 type;
	__u8 code;
	__u16 csum;
	__u16 unused;
	__u16 mtu;
	__u8 quote[28];
};

static __always_inline __u16 csum_fold32(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

// lb_too_big refuses p, a client's packet of a NodePort flow (not yet
// translated) that does not fit the path to its backend (mtu, the FIB's),
// reported as REASON_FRAG_NEEDED. With DF set it answers as the kernel's
// forwarding would: ICMP "fragmentation needed" naming mtu, from the
// frontend's address (the one the client sent to) and quoting the packet
// as the client sent it, back out of the device the packet came in on, so
// that the client learns the path's MTU. The packet itself becomes the
// answer (cut to its first bytes, then rewritten). Without DF it is only
// dropped: fragmenting is the kernel's job, which a translated packet
// never reaches. So is one with IP options or a GSO skb (never seen here:
// TCP's segments follow the backend's MSS). The answer is small (70 bytes
// for a refused packet of over 1,280), so a forged source gains nothing
// by it.
static __always_inline int lb_too_big(struct __sk_buff *skb, struct pkt *p, __u32 mtu)
{
	int r = drop(skb, REASON_FRAG_NEEDED, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, p);
	struct frag_needed m = {};
	__u8 macs[12];
	if (p->ihl != sizeof(struct iphdr) || p->frag || skb->gso_size || mtu < 68 || mtu > 0xffff)
		return r;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, m.quote, sizeof(m.quote)) < 0 || bpf_skb_load_bytes(skb, 0, macs, 12) < 0)
		return r;
	struct iphdr *q = (void *)m.quote;
	if (!(q->frag_off & bpf_htons(0x4000))) // IP_DF
		return r;
	m.ip.version = 4;
	m.ip.ihl = 5;
	m.ip.tos = 0xc0; // as the kernel's ICMP errors: internetwork control
	m.ip.tot_len = bpf_htons(sizeof(m));
	m.ip.ttl = 64;
	m.ip.protocol = IPPROTO_ICMP;
	m.ip.saddr = p->daddr;
	m.ip.daddr = p->saddr;
	m.ip.check = csum_fold32(bpf_csum_diff(0, 0, (__be32 *)&m.ip, sizeof(m.ip), 0));
	m.type = 3; // destination unreachable
	m.code = 4; // fragmentation needed and DF set
	m.mtu = bpf_htons(mtu);
	m.csum = csum_fold32(bpf_csum_diff(0, 0, (__be32 *)&m.type, sizeof(m) - sizeof(m.ip), 0));
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(m), 0) < 0)
		return r;
	if (bpf_skb_store_bytes(skb, 0, macs + 6, 6, 0) < 0 || bpf_skb_store_bytes(skb, 6, macs, 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &m, sizeof(m), 0) < 0)
		return r;
	return bpf_redirect(skb->ifindex, 0);
}

// lb_out sends a translated packet out of the device the FIB chooses for
// its destination (lb_fib), resolving the neighbour; a local source
// address would be dropped as martian if it went back up the stack. One
// the FIB refuses is dropped, reported (lb_fib_refused).
static __always_inline int lb_out(struct __sk_buff *skb, struct pkt *p)
{
	struct bpf_fib_lookup fib = {};
	int rc = lb_fib(skb, p, p->saddr, p->daddr, &fib);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return lb_fib_refused(skb, p, rc);
	return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
}

// lb_reverse_entry translates p, a reply of a NodePort flow whose
// (reverse) entry is n, back to the frontend and sends it to the client.
static __always_inline int lb_reverse_entry(struct __sk_buff *skb, struct pkt *p, struct lb_nat *n)
{
	if (lb_rewrite(skb, p, n->saddr, n->daddr, n->sport, n->dport) < 0)
		return TC_ACT_SHOT;
	return lb_out(skb, p);
}

// The offsets of an ICMP error's fields (outer IPv4 header without
// options): its checksum, and the quoted IPv4 header's checksum,
// addresses and ports.
#define ICMP_CSUM_OFF (ETH_HLEN + 20 + 2)
#define ICMP_IN_OFF (ETH_HLEN + 20 + 8)
#define ICMP_IN_CSUM_OFF (ICMP_IN_OFF + 10)
#define ICMP_IN_SRC_OFF (ICMP_IN_OFF + 12)
#define ICMP_IN_DST_OFF (ICMP_IN_OFF + 16)
#define ICMP_IN_PORTS_OFF (ICMP_IN_OFF + 20)

// lb_icmp_word sets the quoted packet's field at off (size 2 or 4) from
// old to new, keeping the ICMP checksum right.
static __always_inline int lb_icmp_word(struct __sk_buff *skb, __u32 off, __u32 old, __u32 new, __u32 size)
{
	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, ICMP_CSUM_OFF, old, new, size) < 0 || bpf_skb_store_bytes(skb, off, &new, size, 0) < 0)
		return -1;
	return 0;
}

// lb_icmp_reverse translates p, an ICMP error about a NodePort flow's
// translated packet (it quotes what went to the backend, and goes back to
// that packet's sender: this node, or the client for a local backend),
// into the client's: from the frontend to the client, quoting the packet
// as the client sent it (addresses, ports and the quoted header's
// checksum; the quoted L4 checksum is left as it was, which no receiver
// checks in an error), and sends it to the client, as the kernel's NAT
// would; n is lb_icmp_nat's entry for p. The flow's state does not move.
// It returns -1 when p is not such an error, LB_FORGED when it came
// another way than the backend's replies (from) or a pod other than the
// backend sent it (lb_icmp_forged).
// lb_icmp_forged tells whether p, an ICMP error about a NodePort flow to
// backend p->inner_daddr that came the way from, was sent by a pod that is
// not the backend: from a local backend's veth only the backend sends one
// (no router between), and from elsewhere any sender but a pod (a node,
// a router on the underlay, the world: the kernel's NAT translates those
// too) or the backend. A pod's address is anti-spoofed at its node, so
// its errors carry it. Until 2026-12-05 the sender was not checked, and
// any pod could refuse a NodePort client's UDP flow or lower its path
// MTU (TestNodePortICMPErrorFromAPodNotTranslated).
static __always_inline int lb_icmp_forged(struct pkt *p, __u8 from)
{
	if (p->saddr == p->inner_daddr)
		return 0;
	if (from == LB_PATH_LOCAL)
		return 1;
	struct ipcache_key k = {.prefixlen = 32, .ip = p->saddr};
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache, &k);
	if (!v)
		return 0;
	return v->identity > IDENTITY_MAX_RESERVED && !(v->identity & IDENTITY_LOCAL_SCOPE);
}

// lb_icmp_requote rewrites the packet p, an ICMP error, quotes to
// saddr:sport -> daddr:dport, keeping the quoted header's checksum and the
// ICMP checksum right (the quoted L4 checksum is left as it was, which no
// receiver checks in an error).
static __always_inline int lb_icmp_requote(struct __sk_buff *skb, struct pkt *p, __u32 saddr, __u16 sport, __u32 daddr,
					   __u16 dport)
{
	__u16 old_csum = 0, new_csum = 0;
	if (bpf_skb_load_bytes(skb, ICMP_IN_CSUM_OFF, &old_csum, 2) < 0)
		return -1;
	if (p->inner_saddr != saddr && (bpf_l3_csum_replace(skb, ICMP_IN_CSUM_OFF, p->inner_saddr, saddr, 4) < 0 ||
					lb_icmp_word(skb, ICMP_IN_SRC_OFF, p->inner_saddr, saddr, 4) < 0))
		return -1;
	if (p->inner_daddr != daddr && (bpf_l3_csum_replace(skb, ICMP_IN_CSUM_OFF, p->inner_daddr, daddr, 4) < 0 ||
					lb_icmp_word(skb, ICMP_IN_DST_OFF, p->inner_daddr, daddr, 4) < 0))
		return -1;
	if (bpf_skb_load_bytes(skb, ICMP_IN_CSUM_OFF, &new_csum, 2) < 0 ||
	    bpf_l4_csum_replace(skb, ICMP_CSUM_OFF, old_csum, new_csum, 2) < 0 ||
	    lb_icmp_word(skb, ICMP_IN_PORTS_OFF, p->inner_sport, sport, 2) < 0 ||
	    lb_icmp_word(skb, ICMP_IN_PORTS_OFF + 2, p->inner_dport, dport, 2) < 0)
		return -1;
	return 0;
}

// lb_icmp_nat returns the translation of the NodePort flow p, an ICMP
// error to the quoted packet's sender (outer IPv4 header without
// options), is about: the live entry keyed by the quoted tuple reversed,
// whose other half is live and points back at it (lb_nat_other); else
// NULL. A reverse entry: the error quotes what went to the backend
// (lb_icmp_reverse); a forward one: what went to the client
// (lb_icmp_forward, bpf/progs/netdev.h).
static __always_inline struct lb_nat *lb_icmp_nat(struct pkt *p)
{
	if (!p->inner_proto || p->ihl != 20 || p->daddr != p->inner_saddr)
		return 0;
	struct lb_nat_key k = {.saddr = p->inner_daddr, .daddr = p->inner_saddr, .sport = p->inner_dport,
			       .dport = p->inner_sport, .proto = p->inner_proto};
	__u64 now = 0;
	int fresh;
	struct lb_nat *n = lb_nat_find(&k, &now, &fresh);
	if (!n || !lb_nat_other(n, &k, &now, &fresh))
		return 0;
	return n;
}

static __always_inline int lb_icmp_reverse(struct __sk_buff *skb, struct pkt *p, struct lb_nat *n, __u8 from)
{
	if (!n || !n->reverse)
		return -1;
	if (lb_nat_foreign(n, from) || lb_icmp_forged(p, from))
		return LB_FORGED;
	__u32 client = n->daddr, frontend = n->saddr;
	if (lb_icmp_requote(skb, p, client, n->dport, frontend, n->sport) < 0)
		return TC_ACT_SHOT;
	if (lb_rewrite_addr(skb, IP_SRC_OFF, p->saddr, frontend, 0, 0) < 0 ||
	    lb_rewrite_addr(skb, IP_DST_OFF, p->daddr, client, 0, 0) < 0)
		return TC_ACT_SHOT;
	p->saddr = frontend;
	p->daddr = client;
	return lb_out(skb, p);
}

// lb_reverse translates a reply of a NodePort flow, which came the way
// from (LB_PATH_*), back to the frontend and sends it to the client; an
// ICMP error about the flow too (lb_icmp_reverse). It returns LB_FORGED
// for one that came another way than the backend's replies do (the
// caller drops it as REASON_FORGED_SOURCE), -1 when p is not such a
// reply.
static __always_inline int lb_reverse(struct __sk_buff *skb, struct pkt *p, __u8 from)
{
	if (p->proto == IPPROTO_ICMP)
		return lb_icmp_reverse(skb, p, lb_icmp_nat(p), from);
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return -1;
	struct lb_nat *n = lb_nat_lookup(p, from);
	if (!n || !n->reverse)
		return -1;
	if (lb_nat_foreign(n, from))
		return LB_FORGED;
	return lb_reverse_entry(skb, p, n);
}

// lb_nat_put puts v under the tuple, a new flow's translation: in
// lb_nats_new, and out of lb_nats (an entry there, expired or a lone half,
// would hide it from lb_nat_find).
static __always_inline int lb_nat_put(__u32 saddr, __u32 daddr, __u16 sport, __u16 dport, __u8 proto,
				      struct lb_nat *v)
{
	struct lb_nat_key k = {.saddr = saddr, .daddr = daddr, .sport = sport, .dport = dport, .proto = proto};
	if (bpf_map_update_elem(&lb_nats_new, &k, v, BPF_ANY) != 0)
		return -1;
	bpf_map_delete_elem(&lb_nats, &k);
	return 0;
}

// LB_NAT_IDLE_NEW: a translation never established that has seen no
// packet for this long may be taken over by a new flow that found no free
// port (lb_nat_claim's steal).
#define LB_NAT_IDLE_NEW (5 * NSEC)

// lb_nat_held tells whether old, an entry of a tuple a new flow of proto
// wants, keeps it: when live, unless steal and it is a TCP one never
// established (new, or replied to) or a UDP one never answered, idle for
// LB_NAT_IDLE_NEW.
static __always_inline int lb_nat_held(struct lb_nat *old, __u8 proto, __u64 now, int steal)
{
	if (!old || old->expires < now)
		return 0;
	if (!steal)
		return 1;
	if (old->state != CT_STATE_NEW && (old->state != LB_NAT_REPLIED || proto != IPPROTO_TCP))
		return 1;
	// Idle: its last packet set expires to that time + the timeout.
	return old->expires - now > lb_nat_timeout(proto, old->state) - LB_NAT_IDLE_NEW;
}

// lb_tuple_in_use tells whether the tuple a local backend (endpoint
// ep_id, bip:bport) would see for a NodePort client saddr:sport (DNAT
// only: the client's own address and port) is a live established
// connection of that endpoint already: the client's to it, or its own
// from bport to the client. Such a tuple gets no translation, whose
// reverse entry would take the connection's packets from the backend and
// send them out as the frontend's (lb_reverse). Until 2026-12-06 it got
// one: a peer that may come to a node address in the clear (another
// node, a remote pod in native routing) talks to backends directly too,
// and a sweep of SYNs forged from its address to the NodePort cut its
// connections (TestNodePortSweepLeavesDirectConnectionsAlone). Only
// conntrack is read, not conntrack_new: a flow not established yet does
// not hold its tuple. Nor does a NodePort flow's own entry (CT_F_NODEPORT:
// the client's next flow on its port, after a close whose FIN conntrack
// did not count or a translation the LRU evicted, is translated again),
// a closing TCP entry (both FINs or an RST) or a revoked one (that
// connection is over).
static __always_inline int lb_tuple_in_use(__u16 ep_id, __u32 saddr, __u32 bip, __u16 sport, __u16 bport, __u8 proto,
					   __u64 now)
{
	struct ct_key k = {.saddr = saddr, .daddr = bip, .sport = sport, .dport = bport, .proto = proto, .dir = DIR_INGRESS,
			   .ep_id = ep_id};
	int i;
	for (i = 0; i < 2; i++) {
		struct ct_entry *e = bpf_map_lookup_elem(&conntrack, &k);
		if (e && e->expires > now && !(e->flags & CT_F_NODEPORT) &&
		    !(proto == IPPROTO_TCP && (e->state == CT_STATE_CLOSING || (e->flags & CT_F_REVOKED))))
			return 1;
		k.saddr = bip;
		k.daddr = saddr;
		k.sport = bport;
		k.dport = sport;
		k.dir = DIR_EGRESS;
	}
	return 0;
}

// lb_nat_claim puts v under the tuple (in lb_nats_new) unless a live
// entry, in either table, holds it (lb_nat_held); an expired one is taken
// over. With steal (the last of a new flow's tries, the others having
// found no free port), so is a TCP one never established or a UDP one
// never answered, idle for LB_NAT_IDLE_NEW: its flow, whose other half
// then translates nothing, starts anew with its next SYN. The agent
// deletes expired entries only now and then (GCLBNAT, with the conntrack
// sweep), so without the first rule a translation just finished would
// keep its source port from the next flows to the same backend; without
// the second, a flood of unanswered SYNs from many source ports would
// hold every port of the backend for their 60 s (about 76 SYNs a second;
// now about 900). A UDP flow that was answered is never stolen (its next
// answer would go to the new flow's client).
static __always_inline int lb_nat_claim(__u32 saddr, __u32 daddr, __u16 sport, __u16 dport, __u8 proto,
					struct lb_nat *v, __u64 now, int steal)
{
	struct lb_nat_key k = {.saddr = saddr, .daddr = daddr, .sport = sport, .dport = dport, .proto = proto};
	struct lb_nat *old = bpf_map_lookup_elem(&lb_nats, &k);
	if (lb_nat_held(old, proto, now, steal))
		return -1;
	int in_lb_nats = old != 0;
	if (bpf_map_update_elem(&lb_nats_new, &k, v, BPF_NOEXIST) != 0) {
		if (lb_nat_held(bpf_map_lookup_elem(&lb_nats_new, &k), proto, now, steal) ||
		    bpf_map_update_elem(&lb_nats_new, &k, v, BPF_ANY) != 0)
			return -1;
	}
	// The expired or stolen entry of lb_nats goes (it would hide the new
	// one from lb_nat_find once live again), unless a flow's half just
	// settled there (live, established) on another CPU.
	if (in_lb_nats) {
		old = bpf_map_lookup_elem(&lb_nats, &k);
		if (old && lb_nat_held(old, proto, now, 0) && old->state == CT_STATE_ESTABLISHED)
			return 0;
		bpf_map_delete_elem(&lb_nats, &k);
	}
	return 0;
}
