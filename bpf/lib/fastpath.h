// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The established fast path of from_container: a packet of a known flow
// whose conntrack entry caches how the endpoint's packets on it leave
// (fast_* fields) is forwarded after one conntrack lookup, without the
// endpoints, ipcache and policy lookups and without reading the clock.
// For a destination pod of this node the cache stands for its ingress
// entry as well: the slow path, which runs at least every
// CT_REFRESH_JIFFIES, checked and refreshed both.
//
// The cache is valid while the entry's fast_rev is the datapath revision
// (the agent bumps it after changing endpoints, ipcache, policy, config,
// nodes or encryption peers) and the packet comes from the host veth whose
// endpoint owns its source address (fast_ifindex, checked by the slow path
// at that revision: anti-spoofing holds on every packet). Anything else,
// a packet that changes the connection's state (TCP SYN, FIN, RST, a first
// reply) or an entry whose expiry was last set CT_REFRESH_JIFFIES ago,
// takes the slow path, which checks everything and caches again.
//
// to_container has one too (fast_ingress): it forwards nothing itself, so
// it caches nothing; an established packet whose entry had its policy
// checked at the current revision (the entry's rev, which enforce keeps)
// passes after one conntrack lookup.
#pragma once

#define FAST_PASS 1  // to the node's stack (routed, or through the encryption device)
#define FAST_ENCAP 2 // through the VXLAN device to fast_out, VNI fast_identity
#define FAST_LOCAL 3 // into the namespace behind host veth fast_out, MACs fast_mac
#define FAST_ROUTE 4 // out of the device the FIB chooses (lib/fib.h), else to the stack

// fast_unsettled is the entry of key k (p's, reply: in its reply
// direction) in conntrack_new when the fast path may take p on it: never
// a TCP connection's before its handshake's ACK, which the slow path
// checks (ct_settle), so a flow not established yet takes the fast path
// only if it is not TCP or was picked up without its SYN (a one-way UDP
// stream, say: nothing ever answers it). Looked at only when conntrack
// has neither direction, so established flows pay nothing for it.
static __always_inline struct ct_entry *fast_unsettled(struct ct_key *k, struct pkt *p, int reply)
{
	struct ct_entry *e = bpf_map_lookup_elem(&conntrack_new, k);
	return e && !(e->flags & CT_F_HANDSHAKE) && ct_icmp_fits(e, p, reply) ? e : NULL;
}

static __always_inline struct ct_entry *fast_entry(struct pkt *p, __u16 ep_id, int *reply)
{
	struct ct_key k = {
		.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport,
		.proto = p->proto, .dir = DIR_EGRESS, .ep_id = ep_id,
	};
	struct ct_entry *e = bpf_map_lookup_elem(&conntrack, &k);
	*reply = 0;
	if (e && ct_icmp_fits(e, p, 0))
		return e;
	struct ct_key r = {
		.saddr = p->daddr, .daddr = p->saddr, .sport = p->dport, .dport = p->sport,
		.proto = p->proto, .dir = DIR_INGRESS, .ep_id = ep_id,
	};
	*reply = 1;
	e = bpf_map_lookup_elem(&conntrack, &r);
	if (e && ct_icmp_fits(e, p, 1))
		return e;
	*reply = 0;
	e = fast_unsettled(&k, p, 0);
	if (e)
		return e;
	*reply = 1;
	return fast_unsettled(&r, p, 1);
}

// fast_egress forwards p when its flow's entry caches it: it returns the
// tc action, or -1 for the slow path.
static __always_inline int fast_egress(struct __sk_buff *skb, struct pkt *p, __u32 rev)
{
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST)))
		return -1;
	// ICMP errors are judged one by one (ct_related, lb_reverse).
	if (p->inner_proto)
		return -1;
	__u32 slot = skb->ifindex & (EP_SLOTS - 1);
	struct ep_slot *s = bpf_map_lookup_elem(&ep_slots, &slot);
	if (!s || s->ifindex != skb->ifindex)
		return -1;
	int reply;
	struct ct_entry *e = fast_entry(p, s->ep_id, &reply);
	if (!e || !e->fast_action || e->fast_rev != rev || e->fast_ifindex != skb->ifindex)
		return -1;
	// Within CT_REFRESH_JIFFIES of the last expiry update the entry is
	// live (every timeout is longer); past it the slow path refreshes.
	if (bpf_jiffies64() - e->refreshed >= CT_REFRESH_JIFFIES)
		return -1;
	// Packets that would change the entry (ct_update) take the slow path.
	if (reply && (!(e->flags & CT_F_REPLY) || e->state != CT_STATE_ESTABLISHED || (e->flags & CT_F_NO_CARRY)))
		return -1;
	if (e->fast_action == FAST_LOCAL && bpf_skb_store_bytes(skb, 0, e->fast_mac, 12, 0) < 0)
		return -1; // the slow path drops it
	// Per-flow counters without a locked instruction: a flow's packets
	// rarely race on two CPUs, and a lost increment only under-counts.
	e->packets++;
	e->bytes += p->len;
	// The endpoint's own acknowledgement, the number an RST from outside
	// must carry (CT_ACK_KNOWN, conntrack.h; SYN, FIN and RST take the
	// slow path).
	if (p->proto == IPPROTO_TCP && (e->fin & CT_ACK_KNOWN) && e->isn != p->ack)
		ct_local_ack(e, p, 0); // no FIN here
	count(REASON_FORWARDED, DIR_EGRESS, skb->len);
	if (e->fast_action == FAST_ENCAP)
		return encap(skb, e->fast_out, e->fast_identity);
	if (e->fast_action == FAST_LOCAL) {
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		return bpf_redirect_peer(e->fast_out, 0);
	}
	if (e->fast_action == FAST_ROUTE) {
		// The FIB on every packet (routes, neighbours and MTU stay the
		// kernel's), cheaper than the forwarding it replaces.
		int r = fib_redirect(skb, p);
		return r >= 0 ? r : TC_ACT_OK;
	}
	return TC_ACT_OK;
}

// fast_ingress passes p, routed by the kernel to the pod behind host veth
// skb->ifindex (to_container), when its flow's entry at that endpoint
// (the endpoint's ingress entry, or for a reply its egress one) had its
// policy checked at revision rev, as enforce would after one conntrack
// lookup: no endpoints or ipcache lookup, no clock read. It returns the tc
// action, or -1 for the slow path, which also takes packets that would
// change the entry (SYN, FIN, RST, a first reply), an entry whose expiry
// was last set CT_REFRESH_JIFFIES ago or was ended by a revocation,
// flows through the L7 proxy (a proxy port, the proxy's upstream
// connection) and packets the proxy sends (its mark).
//
// The endpoint is the one whose slow path last recorded the interface
// (fast_slot); its entries hold its own address on the pod's side (its
// ingress entries are made for packets to it, its egress ones for packets
// from it, source checked), so a packet the kernel routes here to any
// other address finds none.
//
// fast_ingress_ep is the same for endpoint ep_id, whoever knows it
// (native_deliver, from the endpoints map, for a packet it delivers).
static __always_inline int fast_ingress_ep(struct __sk_buff *skb, struct pkt *p, __u32 rev, __u16 ep_id)
{
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST)))
		return -1;
	if ((skb->mark & MARK_MAGIC_MASK) == MARK_PROXY_MAGIC || (skb->mark & MARK_MAGIC_MASK) == MARK_PROXY_LOCAL_MAGIC)
		return -1;
	if (p->inner_proto) // ICMP errors are judged one by one (ct_related)
		return -1;
	struct ct_key k = {
		.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport,
		.proto = p->proto, .dir = DIR_INGRESS, .ep_id = ep_id,
	};
	int reply = 0;
	struct ct_entry *e = bpf_map_lookup_elem(&conntrack, &k);
	if (e && !ct_icmp_fits(e, p, 0))
		e = NULL;
	if (!e) {
		struct ct_key r = {
			.saddr = p->daddr, .daddr = p->saddr, .sport = p->dport, .dport = p->sport,
			.proto = p->proto, .dir = DIR_EGRESS, .ep_id = ep_id,
		};
		e = bpf_map_lookup_elem(&conntrack, &r);
		if (e && !ct_icmp_fits(e, p, 1))
			e = NULL;
		reply = 1;
		if (!e) {
			reply = 0;
			e = fast_unsettled(&k, p, 0);
		}
		if (!e) {
			reply = 1;
			e = fast_unsettled(&r, p, 1);
		}
	}
	if (!e || e->rev != rev || !e->expires || e->proxy_port || (e->flags & (CT_F_UPSTREAM | CT_F_REVOKED)))
		return -1;
	// A flow with a pod of this node: its packets come here only through
	// the stack, and the slow path checks they came in on its veth (a
	// packet with the flow's tuple from another interface is forged).
	if ((e->flags & CT_F_LOCAL_PEER) && skb->ingress_ifindex)
		return -1;
	if (bpf_jiffies64() - e->refreshed >= CT_REFRESH_JIFFIES)
		return -1;
	if (reply && (!(e->flags & CT_F_REPLY) || e->state != CT_STATE_ESTABLISHED || (e->flags & CT_F_NO_CARRY)))
		return -1;
	e->packets++;
	e->bytes += p->len;
	// A segment from outside that starts at the endpoint's number moves
	// it past its data (CT_ACK_KNOWN, ct_peer_data).
	if (p->proto == IPPROTO_TCP && p->seq == e->isn)
		ct_peer_data(e, p);
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	return TC_ACT_OK;
}

static __always_inline int fast_ingress(struct __sk_buff *skb, struct pkt *p, __u32 rev)
{
	__u32 slot = skb->ifindex & (EP_SLOTS - 1);
	struct ep_slot *s = bpf_map_lookup_elem(&ep_slots, &slot);
	if (!s || s->ifindex != skb->ifindex)
		return -1;
	return fast_ingress_ep(skb, p, rev, s->ep_id);
}

// fast_remember caches, in the entry of p's flow at endpoint ep_id, that
// the endpoint's packets on it from host veth ifindex leave with action
// (FAST_*) to out (and identity, or the local destination dst's MACs), as
// the slow path decided at revision rev.
static __always_inline void fast_remember(struct pkt *p, __u16 ep_id, __u32 ifindex, __u32 rev, __u8 action,
					  __u32 out, __u32 identity, struct endpoint_info *dst)
{
	int reply;
	struct ct_entry *e = fast_entry(p, ep_id, &reply);
	if (!e)
		return;
	e->fast_rev = rev;
	e->fast_ifindex = ifindex;
	e->fast_out = out;
	e->fast_identity = identity;
	if (dst) {
		__builtin_memcpy(e->fast_mac, dst->mac, 6);
		__builtin_memcpy(e->fast_mac + 6, dst->host_mac, 6);
	}
	e->fast_action = action;
}

// lb_nat_known tells whether a NodePort translation has an entry for p's
// tuple (lb_nat_lookup refreshes it on every packet: never cached).
static __always_inline int lb_nat_known(struct pkt *p)
{
	struct lb_nat_key k = {.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport, .proto = p->proto};
	return bpf_map_lookup_elem(&lb_nats, &k) != 0 || bpf_map_lookup_elem(&lb_nats_new, &k) != 0;
}

// fast_slot records that host veth ifindex belongs to endpoint ep_id.
static __always_inline void fast_slot(__u32 ifindex, __u16 ep_id)
{
	__u32 slot = ifindex & (EP_SLOTS - 1);
	struct ep_slot *s = bpf_map_lookup_elem(&ep_slots, &slot);
	if (s && (s->ifindex != ifindex || s->ep_id != ep_id)) {
		s->ifindex = ifindex;
		s->ep_id = ep_id;
	}
}

// fast_forget drops the cached forwarding of the flows of endpoint ep_id
// with the tuple saddr:sport -> daddr:dport (sent by the endpoint) or its
// reverse: a NodePort translation that its replies now need (lb_reverse)
// starts on a tuple a flow may already have.
static __always_inline void fast_forget(__u32 saddr, __u32 daddr, __u16 sport, __u16 dport, __u8 proto, __u16 ep_id)
{
	struct pkt q = {.saddr = saddr, .daddr = daddr, .sport = sport, .dport = dport, .proto = proto};
	int reply;
	struct ct_entry *e = fast_entry(&q, ep_id, &reply);
	if (e)
		e->fast_action = 0;
	if (!reply) {
		struct ct_key r = {
			.saddr = daddr, .daddr = saddr, .sport = dport, .dport = sport,
			.proto = proto, .dir = DIR_INGRESS, .ep_id = ep_id,
		};
		int fresh;
		e = ct_find(&r, &fresh);
		if (e)
			e->fast_action = 0;
	}
}
