// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The programs on each endpoint's host-side veth: from_container (tc
// ingress: what the pod sends) and to_container (tc egress: what the kernel
// routes to the pod). Both first try the established fast path
// (lib/fastpath.h): from_container its cached forwarding, to_container
// its entry's policy revision.
#pragma once

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
	__u32 rev = datapath_rev();
	r = fast_egress(skb, &p, rev);
	if (r >= 0)
		return r;

	__u32 saddr = p.saddr;
	struct endpoint_info *src = bpf_map_lookup_elem(&endpoints, &saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop(skb, REASON_BAD_SOURCE, DIR_EGRESS, 0, 0, 0, 0, &p);
	fast_slot(skb->ifindex, src->ep_id);

	__u32 daddr = p.daddr;
	struct endpoint_info *dst = bpf_map_lookup_elem(&endpoints, &daddr);
	struct ipcache_value *remote = dst ? 0 : lookup_ipcache(daddr);
	__u32 dst_id = dst ? dst->identity : (remote ? remote->identity : IDENTITY_WORLD);
	__u16 dst_ep = dst ? dst->ep_id : 0;

	__u32 proxy;
	__u8 cover = remote && (remote->flags & IPCACHE_F_COVER) ? CT_F_COVER : 0;
	__u8 local_peer = dst ? CT_F_LOCAL_PEER : 0;
	if (!dst)
		local_control(skb, &p);
	r = enforce(0, src, DIR_EGRESS, dst_id, src->identity, dst_id, dst_ep, &p, skb->ifindex, dst ? 0 : daddr, cover | local_peer, &proxy);
	// Egress L7: the proxy checks the destination's ingress too. Or a reply
	// to the proxy's upstream connection (PROXY_UPSTREAM): to its socket,
	// whatever the destination (the client here or on another node).
	if (r == REASON_FORWARDED && proxy)
		r = to_proxy(skb, &p, proxy, src->identity);
	if (r != REASON_FORWARDED)
		return drop(skb, r, DIR_EGRESS, src->ep_id, dst_ep, src->identity, dst_id, &p);
	if (proxy) {
		count(REASON_FORWARDED, DIR_EGRESS, skb->len);
		return TC_ACT_OK;
	}

	if (!dst) {
		count(REASON_FORWARDED, DIR_EGRESS, skb->len);
		// A backend answering a NodePort client goes back as the
		// frontend. A SYN opening a connection answers nothing: it skips
		// the NAT lookup (and is never cached).
		int syn = new_tcp(&p);
		if (!syn) {
			r = lb_reverse(skb, &p, LB_PATH_LOCAL);
			if (r == LB_FORGED)
				return drop(skb, REASON_FORGED_SOURCE, DIR_EGRESS, src->ep_id, 0, src->identity, 0, &p);
			if (r >= 0)
				return r;
		}
		// Cached for the flow's next packets unless it is a SYN, a
		// NodePort translation knows its tuple, or it is an ICMP error
		// (lb_reverse must see them: a later error may be about a
		// translated flow).
		int cache = !syn && !lb_nat_known(&p) && !p.inner_proto;
		__u8 action = FAST_PASS;
		__u32 out = 0, vni = 0;
		if (remote && remote->tunnel_ip) {
			r = encrypt_route(remote->tunnel_ip);
			if (r == REASON_NO_ENCRYPT_PEER)
				return drop(skb, r, DIR_EGRESS, src->ep_id, 0, src->identity, dst_id, &p);
			if (r != 0)
				action = FAST_ENCAP, out = remote->tunnel_ip, vni = src->identity;
		}
		// Native routing to a pod or node of the mesh: out of the FIB's
		// device, not through the node's IP forwarding.
		if (fib_peer(remote) && fib_native())
			action = FAST_ROUTE;
		if (cache) {
			fast_remember(&p, src->ep_id, skb->ifindex, rev, action, out, vni, 0);
			// A NodePort translation set up meanwhile on another CPU
			// (from_netdev writes its entry, then forgets the cache):
			// not cached after all.
			if (lb_nat_known(&p))
				fast_remember(&p, src->ep_id, skb->ifindex, rev, 0, 0, 0, 0);
		} else if (!syn) {
			fast_remember(&p, src->ep_id, skb->ifindex, rev, 0, 0, 0, 0); // nothing stale stays
		}
		if (action == FAST_ENCAP)
			return encap(skb, out, vni);
		if (action == FAST_ROUTE) {
			r = fib_redirect(skb, &p);
			if (r >= 0)
				return r;
		}
		return TC_ACT_OK; // the node routes it (through the encryption device when encrypt_route says so)
	}
	// A pod of this node: its ingress policy here, then straight into its namespace.
	r = enforce(0, dst, DIR_INGRESS, src->identity, src->identity, dst_id, src->ep_id, &p, dst->ifindex, 0, CT_F_LOCAL_PEER, &proxy);
	if (r == REASON_FORWARDED && proxy)
		r = to_proxy(skb, &p, proxy, src->identity);
	if (r != REASON_FORWARDED)
		return drop(skb, r, DIR_INGRESS, dst->ep_id, src->ep_id, src->identity, dst_id, &p);
	if (proxy) {
		count(REASON_FORWARDED, DIR_EGRESS, skb->len);
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	if (bpf_skb_store_bytes(skb, 0, dst->mac, 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 6, dst->host_mac, 6, 0) < 0)
		return drop(skb, REASON_INVALID, DIR_INGRESS, dst->ep_id, src->ep_id, src->identity, dst_id, &p);
	// Not an ICMP error: one passes as related to a flow of the
	// destination's (ct_related) that no entry of the source's stands
	// for; cached, any error of the source's on the same ICMP tuple went
	// into the destination unjudged (until 2026-12-07,
	// TestRelatedICMPErrorNotCachedLocally).
	if (!new_tcp(&p) && !p.inner_proto)
		fast_remember(&p, src->ep_id, skb->ifindex, rev, FAST_LOCAL, dst->ifindex, 0, dst);
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
	r = fast_ingress(skb, &p, datapath_rev());
	if (r >= 0)
		return r;
	__u32 daddr = p.daddr;
	struct endpoint_info *dst = bpf_map_lookup_elem(&endpoints, &daddr);
	if (!dst) {
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		return TC_ACT_OK; // not for a known endpoint: leave it to the kernel
	}
	// Leaving by the endpoint's own veth: the fast path's hint for it, so
	// that a pod that has sent nothing yet gets the fast path too.
	if (dst->ifindex == skb->ifindex)
		fast_slot(skb->ifindex, dst->ep_id);
	__u32 saddr = p.saddr;
	struct endpoint_info *src = bpf_map_lookup_elem(&endpoints, &saddr);
	// A pod of this node as the source: only what came in on its own veth
	// (or from the node's own sockets, ingress_ifindex 0: the L7 proxy's
	// upstream connections carry their client's address). Anything else
	// (another interface, a packet the tunnel passed up) would get that
	// pod's identity without being from it.
	if (src && skb->ingress_ifindex && skb->ingress_ifindex != src->ifindex)
		return drop(skb, REASON_FORGED_SOURCE, DIR_INGRESS, dst->ep_id, 0, IDENTITY_WORLD, dst->identity, &p);
	struct ipcache_value *remote = src ? 0 : lookup_ipcache(saddr);
	__u32 src_id = src ? src->identity : (remote ? remote->identity : IDENTITY_WORLD);
	__u16 src_ep = src ? src->ep_id : 0;
	// The proxy's upstream connection speaks for the flow's source, whose
	// L7 rules it has already applied.
	int from_proxy = proxied(skb, &src_id);
	__u32 proxy;
	// A connection the proxy's upstream socket opens (from the client's
	// address) is flagged: the pod's replies go back to the proxy's socket
	// (from_container).
	__u8 ct_flags = from_proxy ? CT_F_UPSTREAM : (remote && (remote->flags & IPCACHE_F_COVER) ? CT_F_COVER : 0);
	if (src)
		ct_flags |= CT_F_LOCAL_PEER;
	if ((skb->mark & MARK_MAGIC_MASK) == MARK_NODEPORT_MAGIC)
		ct_flags |= CT_F_NODEPORT; // translated by from_netdev (lb_forward)
	r = enforce(0, dst, DIR_INGRESS, src_id, src_id, dst->identity, src_ep, &p, skb->ifindex, 0, ct_flags, &proxy);
	if (r == REASON_FORWARDED && proxy && !from_proxy)
		r = REASON_PROXY_BYPASS; // L7 rules apply: never around the proxy
	if (r != REASON_FORWARDED)
		return drop(skb, r, DIR_INGRESS, dst->ep_id, src_ep, src_id, dst->identity, &p);
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	return TC_ACT_OK;
}
