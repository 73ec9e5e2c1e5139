// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// from_overlay: tc ingress of the VXLAN device.
#pragma once

// remote_vni_ok tells whether a node whose nodes map value is node may
// send identity id as a VNI. This cluster's nodes may send any; a remote
// cluster's node only its own cluster's identities, the world's (a client
// of its NodePort) and remote-node's (its own traffic): until 2026-12-07 a
// node of a remote cluster (a compromised cluster of the mesh) could send
// this cluster's identities, an admin pod's, and pass this cluster's
// policies as that pod (TestRemoteClusterNodeSendsOnlyItsIdentities). A
// value without the remote's cluster (an older agent's, until the agent
// writes its nodes again) is taken as before.
static __always_inline int remote_vni_ok(__u32 node, __u32 id)
{
	if (node & NODE_F_CLUSTER)
		return 1;
	__u32 cluster = NODE_CLUSTER_ID(node), shift = NODE_CLUSTER_SHIFT(node);
	if (!cluster || !shift)
		return 1;
	if (id == IDENTITY_WORLD || id == IDENTITY_REMOTE_NODE)
		return 1;
	return (id >> shift) == cluster && (id & ((1U << shift) - 1)) > IDENTITY_MAX_RESERVED;
}

// from_overlay: tc ingress of the VXLAN device. Only known nodes may send
// encapsulated traffic, and with encryption on only nodes that are not
// encryption peers (and none under strict mode); the VNI carries the
// source identity, and the destination pod's ingress policy is enforced
// with it before delivery.
SEC("tc")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct pkt p = {};
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, REASON_INVALID, DIR_INGRESS, 0, 0, 0, 0, &p);
	__u32 outer = bpf_htonl(key.remote_ipv4);
	__u32 src_id = key.tunnel_id;
	// With encryption on, a peer's traffic comes through the encryption
	// device, never as VXLAN: VXLAN from a peer's address is forged (the
	// outer source is not authenticated, and the VNI would be taken as the
	// identity), and under strict mode no VXLAN is accepted at all.
	__u32 *nv = bpf_map_lookup_elem(&nodes, &outer);
	int known = nv != 0;
	__u32 node = nv ? *nv : 0;
	int enc = known ? encrypt_route(outer) : -1;
	// Parsed before the source checks for the drop's event, but a first
	// fragment's ports are recorded only when a node that may send VXLAN
	// sent it.
	int r = parse_rec(skb, &p, known && enc < 0);
	if (!known) {
		p.len = skb->len;
		return drop(skb, REASON_TUNNEL_SOURCE, DIR_INGRESS, 0, 0, src_id, 0, &p);
	}
	if (enc == 0)
		enc = REASON_FORGED_SOURCE;
	if (enc > 0) {
		p.len = skb->len;
		return drop(skb, enc, DIR_INGRESS, 0, 0, src_id, 0, &p);
	}
	if (!remote_vni_ok(node, src_id)) {
		p.len = skb->len;
		return drop(skb, REASON_FOREIGN_VNI, DIR_INGRESS, 0, 0, src_id, 0, &p);
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
		r = lb_reverse(skb, &p, LB_PATH_UNDERLAY);
		if (r == LB_FORGED)
			return drop(skb, REASON_FORGED_SOURCE, DIR_INGRESS, 0, 0, src_id, 0, &p);
		if (r >= 0)
			return r;
		return TC_ACT_OK;
	}
	__u32 proxy;
	r = enforce(skb, dst, DIR_INGRESS, src_id, src_id, dst->identity, 0, &p, skb->ifindex, 0, 0, &proxy);
	if (r == REASON_FORWARDED && proxy) {
		// Ingress L7, or a reply to the proxy's upstream connection (which
		// has the pod's address): to this node's proxy, up the stack.
		bpf_skb_change_type(skb, 0 /* PACKET_HOST */);
		r = to_proxy(skb, &p, proxy, src_id);
		if (r == REASON_FORWARDED) {
			count(REASON_FORWARDED, DIR_INGRESS, skb->len);
			return TC_ACT_OK;
		}
	}
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
