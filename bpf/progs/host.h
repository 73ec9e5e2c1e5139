// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// from_host: tc ingress of filament_net, the peer of the node's gateway
// device filament_host.
#pragma once

// from_host: in tunnel mode the node routes its own traffic for other
// nodes' pods out of filament_host (NOARP), and it arrives here to be
// encapsulated like a pod's. The VNI is the identity the traffic speaks
// for: a pod of this node when its address is the source (the L7 proxy
// answering as the pod it stands in front of), the flow's source when the
// proxy's upstream mark says so, remote-node when the source is the
// node's own (host_src, the gateway routes' source), and the world for
// anything else: traffic the node forwards for others (a host on the
// underlay routing a remote pod's address through this node) does not
// speak for the node. A local pod's address from the underlay never gets
// here (from_netdev refuses it in tunnel mode).
SEC("tc")
int from_host(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (parse(skb, &p) != REASON_FORWARDED)
		return TC_ACT_SHOT;
	struct ipcache_value *remote = lookup_ipcache(p.daddr);
	if (!remote || !remote->tunnel_ip)
		return drop(skb, REASON_INVALID, DIR_EGRESS, 0, 0, 0, 0, &p);
	__u32 id = IDENTITY_REMOTE_NODE;
	__u32 saddr = p.saddr;
	struct endpoint_info *ep = bpf_map_lookup_elem(&endpoints, &saddr);
	if (ep) {
		id = ep->identity;
	} else if (proxied(skb, &id)) {
		// A node-local identity does not leave the node: the world.
		if (id & IDENTITY_LOCAL_SCOPE)
			id = IDENTITY_WORLD;
	} else {
		__u32 zero = 0;
		struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
		if (cfg && cfg->host_src && saddr != cfg->host_src)
			id = IDENTITY_WORLD;
	}
	count(REASON_FORWARDED, DIR_EGRESS, skb->len);
	return encap(skb, remote->tunnel_ip, id);
}
