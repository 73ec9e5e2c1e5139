// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Packet parsing: Ethernet, IPv4 (options honoured; the fragments of UDP
// and ICMP datagrams followed), TCP/UDP/SCTP ports, ICMP type and echo
// identifier.
#pragma once

// parse_frag gives p, a fragment after the first (ip's), the ports its
// datagram's first fragment recorded (parse), and marks it p->frag; it
// returns REASON_FRAGMENT when no first fragment was seen (it is out of
// order, or lost, or the datagram is TCP's, whose segments are never
// followed in fragments).
static __always_inline struct frag_key frag_key_of(struct __sk_buff *skb, struct iphdr *ip)
{
	struct frag_key k = {.ifindex = skb->ifindex, .saddr = ip->saddr, .daddr = ip->daddr, .id = ip->id, .proto = ip->protocol};
	return k;
}

static __always_inline int parse_frag(struct __sk_buff *skb, struct pkt *p, struct iphdr *ip)
{
	struct frag_key k = frag_key_of(skb, ip);
	struct frag_ports *v = bpf_map_lookup_elem(&frags, &k);
	if (!v)
		return REASON_FRAGMENT;
	p->sport = v->sport;
	p->dport = v->dport;
	p->pport = v->pport;
	p->frag = 1;
	return REASON_FORWARDED;
}

// parse_first_frag records the ports of p, the first fragment (ip's) of a
// UDP or ICMP datagram, for its other fragments (parse_frag).
static __always_inline void parse_first_frag(struct __sk_buff *skb, struct pkt *p, struct iphdr *ip)
{
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_ICMP)
		return;
	struct frag_key k = frag_key_of(skb, ip);
	struct frag_ports v = {.sport = p->sport, .dport = p->dport, .pport = p->pport};
	bpf_map_update_elem(&frags, &k, &v, BPF_ANY);
}

// parse_icmp_error reads the tuple of the packet an ICMP error (the ICMP
// message at icmp: destination unreachable, time exceeded, parameter
// problem) quotes, when it is TCP or UDP with a plain IPv4 header, for the
// flow the error is about (ct_related, lb_icmp_reverse); p->inner_proto
// stays 0 for anything else.
static __always_inline void parse_icmp_error(struct pkt *p, __u8 *icmp, void *data_end)
{
	if ((void *)(icmp + 8) > data_end || (icmp[0] != 3 && icmp[0] != 11 && icmp[0] != 12))
		return;
	struct iphdr *q = (void *)(icmp + 8);
	if ((void *)(q + 1) > data_end || q->version != 4 || q->ihl != 5)
		return;
	if (q->protocol != IPPROTO_TCP && q->protocol != IPPROTO_UDP)
		return;
	__u8 *ports = (__u8 *)(q + 1);
	if (ports + 4 > (__u8 *)data_end)
		return;
	p->inner_saddr = q->saddr;
	p->inner_daddr = q->daddr;
	p->inner_sport = *(__u16 *)ports;
	p->inner_dport = *(__u16 *)(ports + 2);
	p->inner_proto = q->protocol;
}

// icmp_tuple gives p, an ICMP message at icmp, its conntrack ports, so that
// an entry stands for one type's exchange only: a request of a query type
// (echo 8, timestamp 13, information 15, address mask 17) is (id,
// tag(its type)), its reply (tag(the request's type), id), which is the
// request's tuple reversed; any other type t is (tag(t), tag(t)).
// ct_icmp_fits then checks the types of a match (an identifier equal to a
// tag would make a request's tuple its reply's). Until 2026-12-05 every
// type but echo was (0, 0), as was an echo of identifier 0, so one allowed
// ICMP message let every other type pass as established both ways
// (TestICMPTypesTrackedApart).
static __always_inline void icmp_tuple(struct pkt *p, __u8 *icmp)
{
	__u8 t = icmp[0];
	__u16 id = *(__u16 *)(icmp + 4);
	switch (t) {
	case 8:
	case 13:
	case 15:
	case 17:
		p->sport = id;
		p->dport = icmp_tag(t);
		break;
	case 0:
	case 14:
	case 16:
	case 18:
		p->sport = icmp_tag(icmp_request(t));
		p->dport = id;
		break;
	default:
		p->sport = p->dport = icmp_tag(t);
	}
}

// parse_rec is parse; a first fragment's ports are recorded for its later
// fragments only when record is set (from_overlay records only what a
// known node sent).
static __always_inline int parse_rec(struct __sk_buff *skb, struct pkt *p, int record)
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
	// The frame's length without what follows the IPv4 packet (a short
	// frame arrives padded to Ethernet's minimum at a device's tc
	// ingress: a pure ACK would count 6 bytes of data, ct_peer_data,
	// lb_nat_tcp). A total length of 0 (BIG TCP, over 64 KiB) leaves it.
	p->len = skb->len;
	__u32 l3 = bpf_ntohs(ip->tot_len);
	if (l3 && l3 + ETH_HLEN < p->len)
		p->len = l3 + ETH_HLEN;
	p->sport = p->dport = p->pport = 0;
	p->tcp_flags = p->tcp_doff = 0;
	p->seq = p->ack = 0;
	p->frag = 0;
	p->inner_proto = 0;
	if (ip->frag_off & bpf_htons(0x1fff))
		return parse_frag(skb, p, ip);
	__u8 *l4 = (void *)ip + hlen;
	switch (ip->protocol) {
	case IPPROTO_TCP:
		if (l4 + 14 > (__u8 *)data_end)
			return REASON_INVALID;
		p->sport = *(__u16 *)l4;
		p->dport = *(__u16 *)(l4 + 2);
		p->tcp_flags = l4[13];
		p->tcp_doff = (l4[12] >> 4) * 4;
		p->seq = *(__u32 *)(l4 + 4);
		p->ack = *(__u32 *)(l4 + 8);
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
		icmp_tuple(p, l4);
		parse_icmp_error(p, l4, data_end);
		break;
	default:
		break;
	}
	if (record && (ip->frag_off & bpf_htons(0x2000))) // IP_MF: the first fragment
		parse_first_frag(skb, p, ip);
	return REASON_FORWARDED;
}

// parse reads Ethernet, IPv4 and the L4 ports; it returns a reason other
// than REASON_FORWARDED for packets it cannot accept, and -1 for non-IP
// traffic that passes untouched (ARP).
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	return parse_rec(skb, p, 1);
}

