// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Leaving for another node: VXLAN with the source identity as VNI, or the
// encryption device for a peer (strict mode: never in clear).
#pragma once

// VXLAN_PORT is the overlay's UDP port (agent/routing VXLANPort).
#define VXLAN_PORT 8472

// encap sends the packet to a pod on another node through the VXLAN device,
// with the source's security identity as the VNI.
static __always_inline int encap(struct __sk_buff *skb, __u32 tunnel_ip, __u32 identity)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->vxlan_ifindex)
		return TC_ACT_OK;
	struct bpf_tunnel_key key = {};
	key.remote_ipv4 = bpf_ntohl(tunnel_ip);
	key.tunnel_id = identity & 0xffffff;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

// encrypt_route decides how a packet for a pod on node reaches it: 0 =
// routed through the encryption device (node is a peer), -1 = the usual
// way (encryption off, or not strict and no peer yet), or
// REASON_NO_ENCRYPT_PEER (strict: it would leave in clear).
static __always_inline int encrypt_route(__u32 node)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !(cfg->encrypt & ENCRYPT_ON))
		return -1;
	if (bpf_map_lookup_elem(&encrypt_peers, &node))
		return 0;
	return (cfg->encrypt & ENCRYPT_STRICT) ? REASON_NO_ENCRYPT_PEER : -1;
}
