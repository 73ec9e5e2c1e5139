// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Policy lookup and enforcement: the two LPM lookups (peer identity and
// any), deny first, the nodes' control ports, default deny when enforced;
// policy audit mode.
#pragma once

static __always_inline struct policy_value *policy_lookup(__u16 ep_id, __u8 dir, __u32 identity, __u8 proto, __u16 pport)
{
	struct policy_key k = {
		.prefixlen = 88, .ep_id = ep_id, .dir = dir, .identity = identity, .proto = proto,
	};
	__builtin_memcpy(k.port, &pport, 2);
	return bpf_map_lookup_elem(&policy, &k);
}

// control_ports_at tells whether port (network order) of a TCP or UDP
// flow is one of the nodes' control ports; with except_kvstore, one but
// the kvstore's (node_config.kvstore_ports).
static __always_inline int control_ports_at(__u8 proto, __u16 port, int except_kvstore)
{
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return 0;
	__u16 hport = bpf_ntohs(port);
	int i, found = 0;
#pragma unroll
	for (i = 0; i < CONTROL_PORTS; i++) {
		if (cfg->control_ports[i] && cfg->control_ports[i] == hport &&
		    !(except_kvstore && (cfg->kvstore_ports & (1 << i))))
			found = 1;
	}
	return found;
}

// control_port tells whether p goes to one of the nodes' control ports.
static __always_inline int control_port(struct pkt *p)
{
	return control_ports_at(p->proto, p->dport, 0);
}

// node_addr tells whether addr, whose identity is identity, is a node's
// own address: this node's (host), another's (remote-node), or a known
// node's (its underlay address, or another address of it its record
// lists).
static __always_inline int node_addr(__u32 identity, __u32 addr)
{
	return identity == IDENTITY_HOST || identity == IDENTITY_REMOTE_NODE || bpf_map_lookup_elem(&nodes, &addr) ||
	       bpf_map_lookup_elem(&node_local_addrs, &addr);
}

// to_node tells whether p's destination daddr, whose identity is peer,
// is a node's own address (node_addr) or any address the kernel delivers
// locally (p->to_local).
static __always_inline int to_node(struct pkt *p, __u32 peer, __u32 daddr)
{
	return p->to_local || node_addr(peer, daddr);
}

// nodeport_to_control tells whether a NodePort translation to bip:bport
// (network order; a backend that is no pod of this node, whose identity
// is identity) would reach a node's control port: a node's own address
// (node_addr) on one of the control ports but the kvstore's
// (node_config.kvstore_ports: the chart's clustermesh-apiserver serves
// remote clusters as a NodePort from the host network). The translated
// packet leaves from this node's address, which the other node trusts:
// a Service naming another node's address and its VXLAN port made this
// node carry a world client's VXLAN, with any identity in its VNI, into
// that node's tunnel (and its gossip, proxy and metrics ports were open
// the same way) until 2026-12-07 (TestNodePortToNodeControlPort).
static __always_inline int nodeport_to_control(__u8 proto, __u32 bip, __u16 bport, __u32 identity)
{
	return control_ports_at(proto, bport, 1) && node_addr(identity, bip);
}

// policy_verdict is the decision of endpoint ep's policy in direction dir
// (enforced or not) for a flow of p's protocol and policy port pport whose
// other side has identity peer: REASON_FORWARDED or the drop reason. With
// daddr (egress to a non-local destination) the nodes' control ports are
// checked (p's destination port). *proxy is set to the L7 proxy port of a
// forwarded TCP or UDP flow (the peer's own entry before the any entry).
static __always_inline int policy_verdict(struct endpoint_info *ep, __u8 dir, __u8 enforced, __u32 peer, struct pkt *p,
					  __u16 pport, __u32 daddr, __u32 *proxy)
{
	struct policy_value *v = policy_lookup(ep->ep_id, dir, peer, p->proto, pport);
	// The peer's deny decides whatever the any entry says: no second lookup.
	if (v && v->deny)
		return REASON_POLICY_DENY_RULE;
	struct policy_value *any = policy_lookup(ep->ep_id, dir, 0, p->proto, pport);
	// Scalars from here: clang would otherwise combine the two pointers
	// with bitwise operations, which the verifier refuses.
	__u8 found = 0, deny = 0, named = 0;
	__u16 l7 = 0;
	if (any) {
		found = 1;
		deny = any->deny;
		l7 = any->proxy_port;
	}
	asm volatile("" : "+r"(found));
	if (v) {
		found = 1;
		deny |= v->deny;
		named = v->flags & POLICY_F_PORT;
		l7 = v->proxy_port;
	}
	if (deny)
		return REASON_POLICY_DENY_RULE;
	if (daddr && !named && control_port(p) && to_node(p, peer, daddr))
		return REASON_CONTROL_PORT;
	if (!enforced || found) {
		if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)
			*proxy = l7;
		return REASON_FORWARDED;
	}
	return REASON_POLICY_DENIED;
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
//
// *proxy is set to the L7 proxy port of a forwarded flow (0: none): the
// port of the entry that allowed it (the peer's own entry before the any
// entry), kept in the flow's conntrack entry for its later packets; or
// PROXY_UPSTREAM for a reply to the proxy's upstream connection: found in
// conntrack (the upstream opened it here), or, when skb is given (a tc
// ingress hook where such replies arrive from another node), a TCP packet
// of no known connection that is not a SYN and that a socket of the host
// owns. The latter check costs a socket lookup, only for such packets.
// ct_flags go into the conntrack entry of a new flow (CT_F_UPSTREAM: the
// proxy's upstream connection opens it).
//
// A new forwarded flow is reported (EVENT_POLICY_VERDICT, REASON_FORWARDED)
// as the node config's flow_events says (flow_event): once per connection
// and endpoint, never for its later packets; with EVENT_F_PROXY when its
// verdict sends it to the L7 proxy (*proxy set, a redirected flow). p->reply is set when
// conntrack finds p in the reply direction, for the events of later drops.
//
// Policy audit mode (the node config's policy_audit): a new flow policy
// would drop (REASON_POLICY_DENIED or REASON_POLICY_DENY_RULE) is
// forwarded and tracked like an allowed one, and reported once, whatever
// flow_events says, as EVENT_POLICY_VERDICT with that reason and
// EVENT_F_AUDIT. Other drops (control ports, invalid packets) still drop.
//
// A known flow whose entry was checked at an older datapath revision (the
// agent bumps it after changing policy, ipcache, endpoints, ...) has its
// policy checked again, in the flow's own direction with its first
// packet's policy port and the peer's identity now (a reply: the identity
// the flow was admitted with): a flow the policy no longer allows is
// dropped from its next packet on (its proxy port stays the one it opened
// with).
static __always_inline int enforce(struct __sk_buff *skb, struct endpoint_info *ep, __u8 dir, __u32 peer,
				   __u32 src_id, __u32 dst_id, __u16 peer_ep, struct pkt *p, __u32 ifindex,
				   __u32 daddr, __u8 ct_flags, __u32 *proxy)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 rev = datapath_rev();
	*proxy = 0;
	p->reply = 0; // p may come from another endpoint's enforce (local delivery)
	struct ct_entry *e = 0;
	// A packet from the endpoint's own veth (egress), or from another pod
	// of this node's veth or the node's own stack (CT_F_LOCAL_PEER, the
	// callers checked it): its RST counts at any number (ct_rst_counts).
	int trusted = dir == DIR_EGRESS || (ct_flags & CT_F_LOCAL_PEER);
	int ct = ct_lookup(p, ep->ep_id, dir, now, trusted, proxy, &e);
	// A reply of a revoked flow (not TCP: that connection is over) is
	// judged as a flow of its own, in its own direction: the other side
	// may still be allowed to reach this endpoint (a symmetric UDP port,
	// 7946 both ways, whose egress allow went). Its entry, found before
	// the tombstone from then on, does not carry the revoked side, whose
	// own packets meet their tombstone first.
	// (Not a proxy upstream connection's: a reply to one that is gone
	// is dropped, never delivered to the client.) A reply on such an
	// entry made for a revoked flow (CT_F_NO_CARRY) is judged the same
	// way.
	__u8 no_carry = 0;
	if (ct == CT_REPLY && e && (e->flags & (CT_F_REVOKED | CT_F_NO_CARRY)) && !(e->flags & CT_F_UPSTREAM) &&
	    p->proto != IPPROTO_TCP) {
		ct = CT_NEW;
		*proxy = 0;
		no_carry = CT_F_NO_CARRY;
	}
	if (ct != CT_NEW) {
		p->reply = ct == CT_REPLY;
		// A revoked TCP connection is over, either way (a new one starts
		// with its SYN, judged as new); a revoked flow of another
		// protocol judges its own direction's packets again, going on
		// only when the policy allows them (its replies: above).
		if (e && (e->flags & CT_F_REVOKED) && p->proto == IPPROTO_TCP)
			return REASON_CT_MISSING;
		if (e && (e->rev != rev || (e->flags & CT_F_REVOKED))) {
			__u8 fdir = p->reply ? dir ^ 1 : dir;
			__u8 fenforced = ep->flags & (fdir == DIR_INGRESS ? EP_INGRESS_ENFORCED : EP_EGRESS_ENFORCED);
			// A reply is judged with the identity the flow was admitted
			// with (the VNI's, the proxy's mark's: not the reply's
			// source), as is the proxy's upstream connection; but a
			// flow admitted with a cover identity, which may since have
			// become its peer's own (a /32 installed because policy now
			// tells that peer apart), is judged with the peer's identity
			// now (the reply's VNI or ipcache identity).
			__u32 fpeer = ((p->reply && !(e->flags & CT_F_COVER)) || (e->flags & CT_F_UPSTREAM)) ? e->peer_identity : peer;
			__u32 unused = 0;
			int r = policy_verdict(ep, fdir, fenforced, fpeer, p, e->pport, p->reply ? 0 : daddr, &unused);
			if (r != REASON_FORWARDED && !((r == REASON_POLICY_DENIED || r == REASON_POLICY_DENY_RULE) && policy_audit())) {
				// (audit mode: what policy would drop stays, as when it
				// was let in.) The flow is revoked: its cache goes, and
				// its entry stays marked, so that its every packet, either
				// way, is judged again (until 2026-12-06 the entry
				// expired, and the other side's next packet in a
				// direction not enforced started a flow on which this
				// side's passed as replies: TestRevokedFlowStaysRevoked).
				e->flags |= CT_F_REVOKED;
				e->fast_action = 0;
				return r;
			}
			e->flags &= ~CT_F_REVOKED;
			// A reply's check (with the identity the flow was admitted
			// with) does not stand for the flow's own direction, whose
			// next packet is judged with the peer's identity now: until
			// 2026-12-06 it did, so a relabelled peer speaking first
			// kept the pod's packets to it from the policy
			// (TestReplyCheckDoesNotStandForTheFlow).
			if (!p->reply)
				e->rev = rev;
		}
		return REASON_FORWARDED;
	}
	// An ICMP error about a live flow of the endpoint passes as that
	// flow's (conntrack's RELATED), whatever the policy says of ICMP;
	// it makes no entry of its own.
	if (p->inner_proto && ct_related(p, ep->ep_id, dir, now)) {
		p->reply = 1;
		return REASON_FORWARDED;
	}
	if (skb && upstream_reply(skb, p)) {
		*proxy = PROXY_UPSTREAM;
		p->reply = 1;
		return REASON_FORWARDED;
	}
	__u8 enforced = ep->flags & (dir == DIR_INGRESS ? EP_INGRESS_ENFORCED : EP_EGRESS_ENFORCED);
	if (enforced && p->proto == IPPROTO_TCP && !(p->tcp_flags & TCP_SYN))
		return REASON_CT_MISSING;
	int reason = policy_verdict(ep, dir, enforced, peer, p, p->pport, daddr, proxy);
	if ((reason == REASON_POLICY_DENIED || reason == REASON_POLICY_DENY_RULE) && policy_audit()) {
		// Audit mode: the connection passes (no proxy), reported once
		// with the reason it would have been dropped for.
		*proxy = 0;
		ct_create(p, ep->ep_id, dir, peer, now, 0, ct_flags | no_carry, rev);
		emit_at(now, EVENT_POLICY_VERDICT, reason, dir, ep->ep_id, peer_ep, src_id, dst_id, p, ifindex, EVENT_F_AUDIT);
		return REASON_FORWARDED;
	}
	if (reason == REASON_FORWARDED) {
		ct_create(p, ep->ep_id, dir, peer, now, *proxy, ct_flags | no_carry, rev);
		// Sent to the L7 proxy: redirected (EVENT_F_PROXY); not the
		// proxy's own upstream connection, which the proxy opened.
		__u8 flags = *proxy && !(ct_flags & CT_F_UPSTREAM) ? EVENT_F_PROXY : 0;
		if (flow_event(enforced))
			emit_at(now, EVENT_POLICY_VERDICT, REASON_FORWARDED, dir, ep->ep_id, peer_ep, src_id, dst_id, p, ifindex, flags);
	}
	return reason;
}
