// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The host's socket that owns a TCP or UDP packet's tuple: the L7 proxy's
// connections (accepted, half-open, and upstream ones, which have the
// client's address as their source) and its connected UDP upstream
// sockets (DNS queries sent from the client's address).
#pragma once

// tuple_owner returns the connected socket of the host's namespace that
// the TCP or UDP packet p belongs to (a reference to release), or 0. The
// programs on host-side devices look in the host's namespace: a pod's own
// sockets live in the pod's. A listener, or an unconnected UDP socket, is
// no owner: a wildcard one is found for any destination.
static __always_inline struct bpf_sock *tuple_owner(struct __sk_buff *skb, struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p->saddr;
	t.ipv4.daddr = p->daddr;
	t.ipv4.sport = p->sport;
	t.ipv4.dport = p->dport;
	struct bpf_sock *sk;
	if (p->proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk && !sk->dst_port) {
			bpf_sk_release(sk);
			return 0;
		}
		return sk;
	}
	if (p->proto != IPPROTO_TCP)
		return 0;
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return 0;
	}
	return sk;
}

// upstream_reply tells whether the TCP or UDP packet p, of no connection
// the datapath knows and not opening one, belongs to a socket of the host:
// a reply to the L7 proxy's upstream connection from another node (the
// upstream left this node without conntrack state of the client's).
static __always_inline int upstream_reply(struct __sk_buff *skb, struct pkt *p)
{
	if ((p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP) || new_tcp(p))
		return 0;
	struct bpf_sock *sk = tuple_owner(skb, p);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}
