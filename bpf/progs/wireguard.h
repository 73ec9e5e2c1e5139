// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// from_wireguard: tc ingress of the encryption device.
#pragma once

// from_wireguard_nat translates a packet of a NodePort flow that came back
// decrypted (a reply, or an ICMP error about it) and sends it to the
// client: it gets a MAC header so the shared code applies.
static __always_inline int from_wireguard_nat(struct __sk_buff *skb)
{
	if (bpf_skb_change_head(skb, ETH_HLEN, 0) < 0)
		return TC_ACT_SHOT;
	__u16 eth_ip = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 12, &eth_ip, 2, 0) < 0)
		return TC_ACT_SHOT;
	struct pkt q = {};
	if (parse(skb, &q) != REASON_FORWARDED)
		return TC_ACT_SHOT;
	int r = lb_reverse(skb, &q, LB_PATH_WIREGUARD);
	if (r >= 0)
		return r;
	// A local backend's tuple through the tunnel, or a translation only
	// half alive: nothing to send on.
	return drop(skb, r == LB_FORGED ? REASON_FORGED_SOURCE : REASON_LB_NAT, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &q);
}

// from_wireguard: tc ingress of the encryption device (layer 3: packets
// start at the IPv4 header). Replies of NodePort flows this node sent to a
// backend on a peer come back decrypted here, to the gateway address, as
// do the backend's ICMP errors about them; they are translated back to the
// frontend and sent to the client (from_wireguard_nat). Everything else
// passes untouched.
SEC("tc")
int from_wireguard(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data;
	if ((void *)(ip + 1) > data_end || ip->version != 4)
		return TC_ACT_OK;
	if (ip->frag_off & bpf_htons(0x1fff)) {
		// A later fragment (no ports in it): of a NodePort reply when
		// its first fragment was one (from_wireguard_nat's parse
		// recorded it, Fragments in lib/parse.h).
		struct frag_key k = frag_key_of(skb, ip);
		return bpf_map_lookup_elem(&frags, &k) ? from_wireguard_nat(skb) : TC_ACT_OK;
	}
	if (ip->protocol == IPPROTO_ICMP) {
		// An ICMP error about a NodePort flow (lb_icmp_reverse): the
		// packet it quotes went to the backend, so that packet's reply
		// tuple is a live translation's.
		struct pkt e = {};
		if (ip->ihl != 5)
			return TC_ACT_OK;
		parse_icmp_error(&e, (__u8 *)(ip + 1), data_end);
		struct pkt r = {.saddr = e.inner_daddr, .daddr = e.inner_saddr, .sport = e.inner_dport, .dport = e.inner_sport,
				.proto = e.inner_proto};
		if (!e.inner_proto || !lb_nat_reply(&r))
			return TC_ACT_OK;
		return from_wireguard_nat(skb);
	}
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	__u8 *l4 = (__u8 *)data + ip->ihl * 4;
	if (ip->ihl < 5 || l4 + 4 > (__u8 *)data_end)
		return TC_ACT_OK;
	struct pkt p = {.saddr = ip->saddr, .daddr = ip->daddr, .proto = ip->protocol, .len = skb->len};
	p.sport = *(__u16 *)l4;
	p.dport = *(__u16 *)(l4 + 2);
	p.pport = p.dport;
	if (!lb_nat_reply(&p)) {
		// Ingress L7 of a pod here: to the proxy, before the kernel routes it.
		int r = l7_ingress(skb, &p);
		return r >= 0 ? r : TC_ACT_OK;
	}
	return from_wireguard_nat(skb);
}
