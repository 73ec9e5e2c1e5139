// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Steering a flow, and the replies to the proxy's upstream connections, to
// the node's transparent L7 proxy with bpf_sk_assign (tc ingress only),
// and reading the proxy's upstream mark.
#pragma once

// to_proxy hands the TCP or UDP packet p to the proxy listening on port:
// to the socket that already owns the packet's tuple (the proxy's accepted
// or half-open connection, or its upstream one for PROXY_UPSTREAM) when
// there is one, else, for a new connection or any datagram of a UDP flow
// (DNS), to the proxy's listener, which the kernel finds for 0.0.0.0 with
// a lookup of 127.0.0.1, when its socket mark is MARK_PROXY_LISTENER: a
// socket of anyone else bound to the port while the proxy is not there
// (a restart, a crash, an agent's start) gets nothing (until 2026-12-07
// it got the pods' DNS and NodePort L7 connections). The mark sends it to the
// local table, so the kernel delivers it here although its destination is
// not a local address. A reply to an upstream connection that is gone is
// dropped, never delivered to the client. A fragment after the first is
// refused (REASON_FRAGMENT): the kernel's reassembly forgets the socket a
// fragment was assigned, so a datagram through the proxy must fit one
// packet.
static __always_inline int to_proxy(struct __sk_buff *skb, struct pkt *p, __u32 port, __u32 src_id)
{
	if (p->frag)
		return REASON_FRAGMENT;
	struct bpf_sock *sk = tuple_owner(skb, p);
	if (!sk) {
		if (port == PROXY_UPSTREAM)
			return REASON_NO_PROXY;
		struct bpf_sock_tuple t = {};
		t.ipv4.saddr = p->saddr;
		t.ipv4.sport = p->sport;
		t.ipv4.daddr = bpf_htonl(0x7f000001);
		t.ipv4.dport = bpf_htons(port);
		if (p->proto == IPPROTO_UDP)
			sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		else
			sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return REASON_NO_PROXY;
		struct bpf_sock *full = bpf_sk_fullsock(sk);
		if (!full || full->mark != MARK_PROXY_LISTENER ||
		    (p->proto == IPPROTO_TCP && sk->state != BPF_TCP_LISTEN)) {
			bpf_sk_release(sk);
			return REASON_NO_PROXY;
		}
		// A new connection (or a datagram): the proxy learns its source's
		// identity here.
		struct proxy_origin_key ok = {.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport};
		bpf_map_update_elem(&proxy_origin, &ok, &src_id, BPF_ANY);
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return REASON_NO_PROXY;
	skb->mark = MARK_TO_PROXY;
	return REASON_FORWARDED;
}

// proxied tells whether the packet comes from the proxy's upstream socket;
// *src_id is then the identity of the flow's original source.
static __always_inline int proxied(struct __sk_buff *skb, __u32 *src_id)
{
	__u32 magic = skb->mark & MARK_MAGIC_MASK;
	if (magic != MARK_PROXY_MAGIC && magic != MARK_PROXY_LOCAL_MAGIC)
		return 0;
	*src_id = skb->mark & ~MARK_MAGIC_MASK;
	if (magic == MARK_PROXY_LOCAL_MAGIC)
		*src_id |= IDENTITY_LOCAL_SCOPE;
	return 1;
}

// l7_port is the L7 proxy port for a TCP or UDP packet p arriving for endpoint ep
// on a device where the kernel, not this program, delivers it (native
// routing, WireGuard): the port its conntrack
// entry holds; none for a reply of the pod's own connection; PROXY_UPSTREAM
// for a packet of no connection of the pod's that a socket of the host
// owns (a reply to the proxy's upstream connection, which has the pod's
// address); else the port of the policy entry that would allow it (none
// when a deny applies: to_container drops it), judged with the identity
// of p's source, which is looked up (the ipcache LPM) only then and left
// in *peer (else *peer stays 0): a packet of a known connection costs no
// identity lookup. Nothing is created or counted here; to_container
// enforces the flows that are not proxied.
static __always_inline __u32 l7_port(struct __sk_buff *skb, struct endpoint_info *ep, struct pkt *p, __u32 *peer)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return 0;
	if (new_tcp(p))
		goto policy;
	struct ct_key k = {
		.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport,
		.proto = p->proto, .dir = DIR_INGRESS, .ep_id = ep->ep_id,
	};
	int fresh;
	struct ct_entry *e = ct_find(&k, &fresh);
	if (e)
		return e->proxy_port;
	struct ct_key r = {
		.saddr = p->daddr, .daddr = p->saddr, .sport = p->dport, .dport = p->sport,
		.proto = p->proto, .dir = DIR_EGRESS, .ep_id = ep->ep_id,
	};
	if (ct_find(&r, &fresh))
		return 0;
	if (upstream_reply(skb, p))
		return PROXY_UPSTREAM;
policy:;
	*peer = lookup_identity(p->saddr);
	struct policy_value *v = policy_lookup(ep->ep_id, DIR_INGRESS, *peer, p->proto, p->pport);
	struct policy_value *any = policy_lookup(ep->ep_id, DIR_INGRESS, 0, p->proto, p->pport);
	if ((v && v->deny) || (any && any->deny))
		return 0;
	return v ? v->proxy_port : (any ? any->proxy_port : 0);
}

// l7_ingress steers p to the proxy when it is for a pod of this node whose
// ingress L7 rules apply, or when it is a reply to the proxy's upstream
// connection (see l7_port). It returns -1 when they do not (the
// packet goes on), else a tc verdict.
//
// l7_ingress_ep is the same for dst, the endpoint of p's destination, when
// the caller has it.
static __always_inline int l7_ingress_ep(struct __sk_buff *skb, struct pkt *p, struct endpoint_info *dst)
{
	__u32 src_id = 0;
	__u32 port = l7_port(skb, dst, p, &src_id);
	if (!port)
		return -1;
	if (!src_id)
		src_id = lookup_identity(p->saddr);
	int r = to_proxy(skb, p, port, src_id);
	if (r != REASON_FORWARDED)
		return drop(skb, r, DIR_INGRESS, dst->ep_id, 0, src_id, dst->identity, p);
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	return TC_ACT_OK;
}

static __always_inline int l7_ingress(struct __sk_buff *skb, struct pkt *p)
{
	__u32 daddr = p->daddr;
	struct endpoint_info *dst = bpf_map_lookup_elem(&endpoints, &daddr);
	return dst ? l7_ingress_ep(skb, p, dst) : -1;
}
