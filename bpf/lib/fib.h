// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Native routing without the nodes' IP forwarding: a pod's packet for a pod
// on another node leaves through the device the kernel's FIB chooses
// (fib_redirect), and one from another node for a pod here goes straight
// into the pod's namespace (native_deliver, in progs/netdev.h). Both only
// when the node neither tunnels nor encrypts (fib_native) and the agent
// has not asked for the kernel's forwarding (--native-forwarding kernel).
// And which destinations the node delivers to itself (local_control, for
// the control ports).
#pragma once

#ifndef AF_INET
#define AF_INET 2
#endif

// fib_native tells whether this node forwards native routing's pod
// traffic itself: no tunnel, no encryption (WireGuard's device and
// IPsec's XFRM policies are the kernel's, on its own forwarding path) and
// not turned off.
static __always_inline int fib_native(void)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	return cfg && !cfg->vxlan_ifindex && !cfg->encrypt && !cfg->kernel_forwarding;
}

// fib_peer tells whether v (an ipcache entry, or none) is a pod or a node
// of the mesh, whose traffic the programs forward in native routing. Not
// the world nor a CIDR of a policy (a node-local identity): whatever the
// node does to traffic leaving the mesh (its netfilter rules, masquerade)
// still applies to it.
static __always_inline int fib_peer(struct ipcache_value *v)
{
	if (!v)
		return 0;
	if (v->identity == IDENTITY_REMOTE_NODE)
		return 1;
	return v->identity > IDENTITY_MAX_RESERVED && !(v->identity & IDENTITY_LOCAL_SCOPE);
}

// fib_ip returns the IPv4 header of a packet the programs may forward
// themselves, 0 when it goes to the stack: TTL 1 or less (the kernel
// answers time-exceeded), or a fragment (more fragments follow, or an
// offset, which parse already refuses: a first fragment goes to the stack
// so that a node that reassembles the datagram has all of it).
static __always_inline struct iphdr *fib_ip(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end || ip->ttl <= 1 || (ip->frag_off & bpf_htons(0x3fff))) // IP_MF | IP_OFFSET
		return 0;
	return ip;
}

// fib_redirect sends p, a pod's TCP or UDP packet for a pod or node of
// the mesh, out of the device the kernel's FIB chooses, as the node's IP
// forwarding would but without passing through it (nor its netfilter
// hooks): the TTL goes down by one and bpf_redirect_neigh has the
// kernel's neighbour table resolve the next hop (and probe it, as its own
// forwarding would). It returns the tc action, or -1 when the kernel must
// forward the packet itself: not TCP or UDP (ICMP goes through the stack
// both ways, so the node's conntrack sees both halves of an echo), a
// fragment, TTL about to run out, no unicast route (or one through an IPv6
// next hop), forwarding off on the pod's veth, or
// a packet too big for the device (the kernel sends the ICMP errors).
static __always_inline int fib_redirect(struct __sk_buff *skb, struct pkt *p)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return -1;
	struct iphdr *ip = fib_ip(skb);
	if (!ip)
		return -1;
	struct bpf_fib_lookup f = {};
	f.family = AF_INET;
	f.tos = ip->tos;
	f.l4_protocol = ip->protocol;
	f.sport = p->sport;
	f.dport = p->dport;
	f.ipv4_src = ip->saddr;
	f.ipv4_dst = ip->daddr;
	f.ifindex = skb->ifindex;
	// tot_len 0: the kernel checks the skb itself against the device's
	// MTU, GSO included. The neighbour is bpf_redirect_neigh's to find.
	long rc = bpf_fib_lookup(skb, &f, sizeof(f), BPF_FIB_LOOKUP_SKIP_NEIGH);
	// (An IPv4 route through an IPv6 next hop comes back as AF_INET6:
	// the stack's.)
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || f.family != AF_INET)
		return -1;
	// TTL and protocol are one 16-bit word of the header's checksum.
	__u16 old = *(__u16 *)&ip->ttl;
	__u8 ttl = ip->ttl - 1;
	__u16 new = old;
	*(__u8 *)&new = ttl;
	if (bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), old, new, 2) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, ttl), &ttl, 1, 0) < 0)
		return TC_ACT_SHOT;
	// The FIB left the next hop (the route's gateway, else the
	// destination) in ipv4_dst.
	struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = f.ipv4_dst};
	return bpf_redirect_neigh(f.ifindex, &nh, sizeof(nh), 0);
}

// local_dest tells whether daddr (network order) is an address every node
// delivers to itself whatever its routes: the limited broadcast, a
// multicast group (224.0.0.1, all hosts, is joined on every interface,
// and a socket on 0.0.0.0 gets the groups the node joined), 0.0.0.0/8
// and loopback's 127.0.0.0/8.
static __always_inline int local_dest(__u32 daddr)
{
	__u32 a = bpf_ntohl(daddr);
	return a == 0xffffffff || (a >> 28) == 0xe || (a >> 24) == 0 || (a >> 24) == 127;
}

// local_control sets p->to_local when p, a pod's packet leaving through
// its veth (skb) for no local endpoint, goes to a control port of an
// address this node's kernel delivers to itself: a second interface's, a
// bridge's (docker0), a broadcast or multicast address (local_dest),
// whatever identity the ipcache gives it (the world, a policy's CIDR).
// The FIB says so for the unicast ones (a local or broadcast route: not
// forwarded); only packets to a control port ask it. The lookup resolves
// the next hop too (BPF_FIB_LOOKUP_SKIP_NEIGH is 6.3's): any answer but
// a route that forwards (or refuses) it, forwarding off on the veth or an
// error among them, counts as local (fail closed).
static __always_inline void local_control(struct __sk_buff *skb, struct pkt *p)
{
	p->to_local = 0;
	if (!control_port(p))
		return;
	if (local_dest(p->daddr)) {
		p->to_local = 1;
		return;
	}
	struct bpf_fib_lookup f = {};
	f.family = AF_INET;
	f.l4_protocol = p->proto;
	f.sport = p->sport;
	f.dport = p->dport;
	f.ipv4_src = p->saddr;
	f.ipv4_dst = p->daddr;
	f.ifindex = skb->ifindex;
	long r = bpf_fib_lookup(skb, &f, sizeof(f), 0);
	switch (r) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
	case BPF_FIB_LKUP_RET_UNSUPP_LWT:
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return;
	}
	p->to_local = 1;
}
