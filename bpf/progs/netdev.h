// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// lb_snat_port picks a random source port for a translated flow, never
// avoid (host order; the WireGuard port). Network order.
static __always_inline __u16 lb_snat_port(__u16 avoid)
{
	__u16 port = LB_SNAT_PORT_MIN + bpf_get_prandom_u32() % LB_SNAT_PORT_RANGE;
	if (port == avoid)
		port = port + 1 < LB_SNAT_PORT_MIN + LB_SNAT_PORT_RANGE ? port + 1 : LB_SNAT_PORT_MIN;
	return bpf_htons(port);
}

// from_netdev: tc ingress of the node's underlay device (NodePort), and
// lb_forward, which translates a client's packet and sends it on.
#pragma once

// lb_nat_before_peering tells whether n, a client's translation to a
// remote backend, goes as VXLAN (not from the encryption gateway) while
// the backend's node is an encryption peer now.
static __always_inline int lb_nat_before_peering(struct lb_nat *n)
{
	if (!n->tunnel_ip || encrypt_route(n->tunnel_ip) != 0)
		return 0;
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	return cfg && cfg->vxlan_ifindex && !(cfg->encrypt_snat && n->saddr == cfg->encrypt_snat);
}

// lb_forward rewrites p, a client's packet of a NodePort flow, to
// saddr:sport -> daddr:dport and sends it to its backend: up the stack to
// a pod of this node, through the tunnel to the backend's node, or out of
// the device the FIB chooses (native routing, or WireGuard's device). The
// FIB is asked before p is rewritten, so that a packet too big for that
// device is answered as the client sent it (lb_too_big).
static __always_inline int lb_forward(struct __sk_buff *skb, struct pkt *p, __u32 saddr, __u32 daddr, __u16 sport,
				      __u16 dport, __u32 tunnel_ip, int local)
{
	struct bpf_fib_lookup fib = {};
	int via_fib = !local;
	if (!local && tunnel_ip) {
		__u32 zero = 0;
		struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
		// Translated from the gateway: the backend's node is an
		// encryption peer, and the FIB sends it through the device.
		via_fib = !cfg || (cfg->encrypt_snat && saddr == cfg->encrypt_snat) || !cfg->vxlan_ifindex;
	}
	if (via_fib) {
		int rc = lb_fib(skb, p, saddr, daddr, &fib);
		if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
			return lb_too_big(skb, p, fib.mtu_result);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS)
			return lb_fib_refused(skb, p, rc);
	}
	if (lb_rewrite(skb, p, saddr, daddr, sport, dport) < 0)
		return TC_ACT_SHOT;
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	if (via_fib)
		return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
	if (local) {
		skb->mark = MARK_NODEPORT_MAGIC; // to_container: CT_F_NODEPORT
		return TC_ACT_OK;
	}
	return encap(skb, tunnel_ip, IDENTITY_WORLD);
}

// lb_icmp_forward translates p, an ICMP error from the underlay about a
// NodePort flow's reply (it quotes what this node sent the client: from
// the frontend; a router on the way to the client lowering the path MTU,
// or the client refusing a datagram), into the backend's: to the
// backend, quoting the reply as the backend sent it (to the client for a
// local backend, to this node's SNAT address and port for a remote one),
// its source left as it was, and sends it the way the flow's packets go
// (through the stack to a local backend, through the tunnel, the FIB or
// the encryption device to a remote one). The flow's state does not
// move. It returns -1 when p is not such an error, LB_FORGED when a pod
// sent it (lb_icmp_forged: only the client or a host that is no pod
// sends one). Until 2026-12-06 such an error went to the stack
// untranslated, so a backend behind a client's smaller path MTU never
// learned it (TestNodePortICMPErrorAboutAReplyGoesToTheBackend).
//
// n is lb_icmp_nat's entry for p, a forward one: both halves of the
// translation live and pointing at each other (a lone forward entry whose
// reverse tuple another flow took would send the error into that flow). A flow translated from the
// encryption gateway address has the error sent from that address too
// (the peer's WireGuard takes from this node only its own addresses); one
// made before the backend's node became a peer (lb_nat_before_peering)
// is not translated (the tunnel would carry it in clear). A fragmentation
// needed naming an MTU below 1280 is not translated (none of this
// cluster's paths is that small; a forged one would make the backend
// send every NodePort client of a remote backend's flows through this
// node packets of 552 bytes: its path MTU is towards this node).
static __always_inline int lb_icmp_forward(struct __sk_buff *skb, struct pkt *p, struct lb_nat *n)
{
	if (!n || n->reverse || lb_nat_before_peering(n))
		return -1;
	__u8 tc[2];
	__u16 mtu;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 20, tc, 2) < 0 || bpf_skb_load_bytes(skb, ETH_HLEN + 20 + 6, &mtu, 2) < 0)
		return -1;
	if (tc[0] == 3 && tc[1] == 4 && bpf_ntohs(mtu) < 1280)
		return -1;
	if (lb_icmp_forged(p, LB_PATH_UNDERLAY))
		return LB_FORGED;
	__u32 backend = n->daddr, to = n->saddr, tunnel_ip = n->tunnel_ip;
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	int gateway = cfg && cfg->encrypt_snat && to == cfg->encrypt_snat;
	if (lb_icmp_requote(skb, p, backend, n->dport, to, n->sport) < 0 ||
	    lb_rewrite_addr(skb, IP_DST_OFF, p->daddr, backend, 0, 0) < 0 ||
	    (gateway && lb_rewrite_addr(skb, IP_SRC_OFF, p->saddr, to, 0, 0) < 0))
		return TC_ACT_SHOT;
	p->daddr = backend;
	if (gateway)
		p->saddr = to;
	if (bpf_map_lookup_elem(&endpoints, &backend)) {
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	int via_fib = !tunnel_ip || !cfg || gateway || !cfg->vxlan_ifindex;
	if (!via_fib) {
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
		return encap(skb, tunnel_ip, IDENTITY_WORLD);
	}
	struct bpf_fib_lookup fib = {};
	int rc = lb_fib(skb, p, p->saddr, backend, &fib);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return lb_fib_refused(skb, p, rc);
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
}

// vxlan_datagram tells whether p is a datagram for this node's VXLAN
// socket in tunnel mode: UDP to VXLAN_PORT (its source port is the
// sender's flow hash, any), when it is not for a pod of this node (the
// caller checks: a pod's port 8472 may have L7 rules). from_netdev passes
// it untouched: its NodePort lookups cannot match it (a NodePort on the
// overlay's port would take every tunnel packet; a translated flow never
// uses the port as its source port, below), and
// from_overlay judges what it carries once the VXLAN device has opened
// it.
static __always_inline int vxlan_datagram(struct pkt *p)
{
	if (p->proto != IPPROTO_UDP || p->dport != bpf_htons(VXLAN_PORT))
		return 0;
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	return cfg && cfg->vxlan_ifindex;
}

// wireguard_datagram tells whether p is a datagram between two nodes'
// WireGuard sockets: UDP from and to the node config's wireguard_port
// (every node listens on the same port).
static __always_inline int wireguard_datagram(struct pkt *p)
{
	if (p->proto != IPPROTO_UDP)
		return 0;
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->wireguard_port)
		return 0;
	__u16 port = bpf_htons(cfg->wireguard_port);
	return p->dport == port && p->sport == port;
}

// underlay_forged tells whether a packet that came in from the underlay
// has a source address no pod's packet can have on this device, so that
// whoever sent it must not pass as that pod (to_container would give it
// the pod's identity, and forwarded on, the next node or from_host):
//   - whatever the destination, a pod of this node (its packets never
//     come in from the underlay);
// and for a pod of this node:
//   - a remote pod whose ipcache entry (its own, or its node's cover) has
//     a tunnel endpoint, when this node runs the tunnel (such a pod's
//     packets come encapsulated, to from_overlay) or WireGuard and the
//     endpoint is a peer, or in strict mode not yet one (they come through
//     the WireGuard device, or not at all).
// Not refused here: a remote pod's packets in native routing without
// encryption (they do arrive in the clear: that mode trusts the underlay),
// and with IPsec, whose decrypted packets come back on this device (the
// kernel's XFRM forward policies refuse clear ones from a peer's pod
// CIDR). docs/architecture.md, "What the underlay is trusted with". It
// returns the reason to drop the packet for (REASON_FORGED_SOURCE, or
// REASON_NO_ENCRYPT_PEER for a pod of a node that is not a peer yet under
// strict mode: clear traffic of a rollout, not necessarily a forgery),
// with *dstp the destination pod's endpoint; 0 when it passes.
static __always_inline int underlay_forged(struct pkt *p, struct endpoint_info **dstp)
{
	__u32 daddr = p->daddr;
	__u32 saddr = p->saddr;
	struct endpoint_info *dst = bpf_map_lookup_elem(&endpoints, &daddr);
	if (!dst) {
		// For the node or to be forwarded: a local pod's address is
		// forged whatever the destination. Forwarded on, it would speak
		// for that pod (the next node takes a native packet's identity
		// from its address; from_host gives a local pod's address its
		// identity in the VNI).
		return bpf_map_lookup_elem(&endpoints, &saddr) ? REASON_FORGED_SOURCE : 0;
	}
	*dstp = dst;
	if (bpf_map_lookup_elem(&endpoints, &saddr))
		return REASON_FORGED_SOURCE;
	// The ipcache (a longest-prefix lookup) only where its answer counts:
	// native routing without WireGuard, the hot case here, skips it.
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || (!cfg->vxlan_ifindex && !cfg->wireguard_port))
		return 0;
	struct ipcache_value *v = lookup_ipcache(saddr);
	if (!v || !v->tunnel_ip)
		return 0;
	if (cfg->vxlan_ifindex)
		return REASON_FORGED_SOURCE;
	int enc = encrypt_route(v->tunnel_ip);
	if (enc == 0)
		return REASON_FORGED_SOURCE;
	return enc == REASON_NO_ENCRYPT_PEER ? enc : 0;
}

// native_deliver takes p, a TCP or UDP packet from another node for dst, a
// pod of this node, straight into the pod's namespace when p's source is
// a pod or node of the mesh (fib_peer, the traffic the sending node's
// programs forward): the pod's ingress policy here, with the source's
// identity from the ipcache, as to_container would after the kernel routed
// it (which it then no longer does). The caller checks that this node
// forwards native routing's traffic itself (fib_native: not the tunnel,
// encryption or the kernel's forwarding asked for). Anything else goes on
// to the stack and to_container as before: a frame not addressed to this
// node, TTL 1 (the
// kernel answers time-exceeded), a fragment (the stack has the others),
// and other sources (the world, replies to
// what the pod sent through the stack, so that the node's conntrack sees
// both directions; this node's own addresses, which the kernel refuses
// from outside as martians).
static __always_inline int native_deliver(struct __sk_buff *skb, struct pkt *p, struct endpoint_info *dst)
{
	if (skb->pkt_type != 0 /* PACKET_HOST */ || !fib_ip(skb))
		return TC_ACT_OK;
	__u32 saddr = p->saddr;
	struct ipcache_value *remote = lookup_ipcache(saddr);
	if (!fib_peer(remote))
		return TC_ACT_OK;
	if (fast_ingress_ep(skb, p, datapath_rev(), dst->ep_id) < 0) {
		__u32 src_id = remote->identity;
		__u8 ct_flags = (remote->flags & IPCACHE_F_COVER) ? CT_F_COVER : 0;
		__u32 proxy;
		int r = enforce(0, dst, DIR_INGRESS, src_id, src_id, dst->identity, 0, p, dst->ifindex, 0, ct_flags, &proxy);
		if (r == REASON_FORWARDED && proxy)
			r = REASON_PROXY_BYPASS; // l7_ingress steers what the proxy must see
		if (r != REASON_FORWARDED)
			return drop(skb, r, DIR_INGRESS, dst->ep_id, 0, src_id, dst->identity, p);
		count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	}
	if (bpf_skb_store_bytes(skb, 0, dst->mac, 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 6, dst->host_mac, 6, 0) < 0)
		return drop(skb, REASON_INVALID, DIR_INGRESS, dst->ep_id, 0, 0, dst->identity, p);
	return bpf_redirect_peer(dst->ifindex, 0);
}

// nodeport_to_proxy hands p, a SYN to a NodePort frontend, to the node's
// L7 proxy (to_proxy, listener b->proxy_port, source identity src_id),
// and leaves b, the backend, for the proxy in proxy_frontends under p's
// tuple; the entry goes again when the proxy cannot take p. ep_id and
// ep_identity name the backend in a drop's event.
static __always_inline int nodeport_to_proxy(struct __sk_buff *skb, struct pkt *p, struct proxy_backend *b, __u32 src_id,
					     __u16 ep_id, __u32 ep_identity)
{
	struct proxy_origin_key k = {.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport};
	bpf_map_update_elem(&proxy_frontends, &k, b, BPF_ANY);
	int r = to_proxy(skb, p, b->proxy_port, src_id);
	if (r != REASON_FORWARDED) {
		bpf_map_delete_elem(&proxy_frontends, &k);
		return drop(skb, r, DIR_INGRESS, ep_id, 0, src_id, ep_identity, p);
	}
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	return TC_ACT_OK;
}

// nodeport_l7 hands p, the SYN of a new NodePort connection (to the
// frontend, untranslated) given backend bip:bport, a pod of this node
// (bep), to the node's L7 proxy when the pod's ingress L7 rules take
// the connection (l7_port, judged as the translated packet: the client's
// identity, the backend's port; a deny leaves it to the translation and
// to_container): the proxy's socket answers from the frontend's address,
// so the replies need no translation, and the backend is left for it in
// proxy_frontends. It returns -1 when the rules do not take it, else a
// tc verdict. A remote backend's node steers the tunnelled connection
// itself; UDP is translated as before (to_container drops a datagram
// its pod's L7 rules should see).
static __always_inline int nodeport_l7(struct __sk_buff *skb, struct pkt *p, struct endpoint_info *bep, __u32 bip, __u16 bport)
{
	if (!new_tcp(p))
		return -1;
	struct pkt t = *p;
	t.daddr = bip;
	t.dport = bport;
	t.pport = bport;
	__u32 src_id = 0;
	__u32 port = l7_port(skb, bep, &t, &src_id);
	if (!port || port == PROXY_UPSTREAM)
		return -1;
	if (!src_id)
		src_id = lookup_identity(p->saddr);
	struct proxy_backend b = {.addr = bip, .port = bport, .proxy_port = port, .at = bpf_ktime_get_ns()};
	return nodeport_to_proxy(skb, p, &b, src_id, bep->ep_id, bep->identity);
}

// nodeport_l7_again hands p, a SYN to a NodePort frontend, to the proxy
// when a SYN of its tuple went there less than CT_TIMEOUT_SYN ago and the
// proxy has not taken the connection yet (its proxy_frontends entry is
// there): a retransmitted SYN goes where the first went, with the
// backend it was given, whatever the policy or the backends say now
// (the proxy holds the half-open connection; translated, the client
// would meet a second SYN-ACK and lose it). It returns -1 otherwise.
static __always_inline int nodeport_l7_again(struct __sk_buff *skb, struct pkt *p)
{
	if (!new_tcp(p))
		return -1;
	struct proxy_origin_key k = {.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport};
	struct proxy_backend *e = bpf_map_lookup_elem(&proxy_frontends, &k);
	if (!e)
		return -1;
	struct proxy_backend b = *e;
	__u64 now = bpf_ktime_get_ns();
	if (now - b.at >= CT_TIMEOUT_SYN)
		return -1;
	return nodeport_to_proxy(skb, p, &b, lookup_identity(p->saddr), 0, 0);
}

// from_netdev: tc ingress of the node's underlay device. NodePort traffic
// that did not come from a local socket is translated here: DNAT to a
// backend, plus SNAT to this node when the backend is elsewhere so that the
// reply returns through this node; the translation of a new connection is
// reported (EVENT_TRANSLATED). A packet for a pod of this node with a
// forged pod source (underlay_forged) is dropped before anything else; in
// native routing with the programs forwarding, one from the mesh goes
// into the pod (native_deliver) before the NodePort lookups.
// Everything else passes untouched.
//
// WireGuard's own datagrams (wireguard_datagram: one array load and two
// compares, after the forged-source check's one lookup of the destination,
// which is the node's address) pass next, without the lookups below, none
// of which is theirs: this program enforces no policy (the encryption device's socket
// authenticates them, to_container checks what they carry); a NodePort
// frontend on the WireGuard port could not be served anyway (the device's
// socket owns it); a translated NodePort flow never uses it as its source
// port (below), so no reply of one looks like a datagram; and one to a pod
// of this node with L7 ingress rules on that port, which would be steered
// to the proxy, is dropped by to_container instead (never around the
// proxy).
SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	// Every packet with an IPv4 header, whatever its protocol and even if
	// the rest does not parse (a fragment the node may reassemble), is
	// checked for a forged pod source first.
	int r = parse(skb, &p);
	struct endpoint_info *dst = 0;
	int forged = underlay_forged(&p, &dst);
	if (forged)
		return drop(skb, forged, DIR_INGRESS, dst ? dst->ep_id : 0, 0, IDENTITY_WORLD, dst ? dst->identity : 0, &p);
	if (r != REASON_FORWARDED)
		return TC_ACT_OK;
	if (p.proto == IPPROTO_ICMP && !dst) {
		// A remote backend's ICMP error about a NodePort flow (native
		// routing: it comes from the underlay) goes to the flow's
		// client, translated.
		struct lb_nat *n = lb_icmp_nat(&p);
		r = lb_icmp_reverse(skb, &p, n, LB_PATH_UNDERLAY);
		// Or a router's (or the client's) error about a NodePort
		// flow's reply goes to its backend, translated.
		if (r == -1)
			r = lb_icmp_forward(skb, &p, n);
		if (r == LB_FORGED)
			return drop(skb, REASON_FORGED_SOURCE, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &p);
		return r >= 0 ? r : TC_ACT_OK;
	}
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
		return TC_ACT_OK;
	if (wireguard_datagram(&p) || (!dst && vxlan_datagram(&p)))
		return TC_ACT_OK;
	// Native routing with the programs forwarding, a packet for a pod
	// here: a pod's address is never a NodePort frontend nor the
	// translated side of a flow that lb_reverse answers (a remote
	// backend's replies go to this node's address; a pod here is never a
	// NodePort client), so the NodePort lookups below are skipped. Its
	// ingress L7 is steered, the rest delivered or passed up the stack.
	if (dst && fib_native()) {
		r = l7_ingress_ep(skb, &p, dst);
		return r >= 0 ? r : native_deliver(skb, &p, dst);
	}
	// One lookup for both directions of a translated flow: a backend's
	// reply goes back to its client, a client's packet to its backend. A
	// reply whose backend's replies never come from the underlay (a local
	// backend's, or one to the WireGuard gateway address) is not
	// translated into the client's flow nor moves its state, whoever sent
	// it.
	struct lb_nat *n = lb_nat_lookup(&p, LB_PATH_UNDERLAY);
	if (n && lb_nat_foreign(n, LB_PATH_UNDERLAY))
		return drop(skb, REASON_FORGED_SOURCE, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &p);
	if (n && n->reverse)
		return lb_reverse_entry(skb, &p, n);
	if (n && lb_nat_before_peering(n)) {
		// Made (as VXLAN) before the backend's node became an encryption
		// peer, which refuses VXLAN from this node now (from_overlay): both
		// halves go, and the packet makes a translation through the
		// device below (a TCP connection's next segment, no SYN, ends
		// it). Until 2026-12-06 a UDP client that kept sending kept the
		// stale translation, its flow dead (TestNodePortTranslationRedoneAfterPeering).
		struct lb_nat_key fk = {.saddr = p.saddr, .daddr = p.daddr, .sport = p.sport, .dport = p.dport, .proto = p.proto};
		struct lb_nat_key rk = {.saddr = n->daddr, .daddr = n->saddr, .sport = n->dport, .dport = n->sport, .proto = p.proto};
		lb_nat_delete(&rk);
		lb_nat_delete(&fk);
		n = 0;
	}
	if (n) {
		__u32 tunnel_ip = n->tunnel_ip;
		__u32 daddr = n->daddr;
		int local = bpf_map_lookup_elem(&endpoints, &daddr) != 0;
		return lb_forward(skb, &p, n->saddr, n->daddr, n->sport, n->dport, tunnel_ip, local);
	}
	struct lb_key k = {.vip = p.daddr, .port = p.dport, .proto = p.proto};
	struct lb_service *svc = bpf_map_lookup_elem(&lb_services, &k);
	if (!svc || !(svc->flags & LB_FLAG_NODEPORT)) {
		// Native routing: ingress L7 of a pod here is steered now, the
		// last tc ingress hook the flow passes.
		r = l7_ingress(skb, &p);
		return r >= 0 ? r : TC_ACT_OK;
	}
	if (p.proto == IPPROTO_TCP && !new_tcp(&p))
		return TC_ACT_OK; // not a flow we translated (a SYN with ACK, RST or FIN opens none): the stack answers it
	// Never a pod of this node as the client: underlay_forged refused it
	// above (they reach a NodePort through the socket programs; a local
	// backend would take it as that pod, and a remote backend's replies
	// would be sent into it), before a backend or an affinity is chosen.
	// Nor this node's own address (identity host: only a forgery comes
	// from the underlay with it): the translation claimed for it would
	// take a local backend's replies to the node's own connections with
	// the same ports, kubelet's probes among them.
	struct ipcache_value *client = lookup_ipcache(p.saddr);
	if (client && client->identity == IDENTITY_HOST)
		return drop(skb, REASON_FORGED_SOURCE, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &p);
	r = nodeport_l7_again(skb, &p);
	if (r >= 0)
		return r;
	struct lb_backend *b = lb_pick(svc, p.saddr, 1, lb_hash(p.saddr, p.daddr, p.sport, p.dport, p.proto));
	if (!b)
		return drop(skb, REASON_NO_BACKEND, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &p);
	__u32 bip = b->ip;
	__u16 bport = b->port;
	struct endpoint_info *bep = bpf_map_lookup_elem(&endpoints, &bip);
	if (bep) {
		r = nodeport_l7(skb, &p, bep, bip, bport);
		if (r >= 0)
			return r;
	}
	int local = bep != 0;
	struct ipcache_value *where = local ? 0 : lookup_ipcache(bip);
	// Never to a node's control port (a Service naming a node's address).
	if (!local && nodeport_to_control(p.proto, bip, bport, where ? where->identity : 0))
		return drop(skb, REASON_CONTROL_PORT, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &p);
	__u32 tunnel_ip = where ? where->tunnel_ip : 0;
	// A backend on another node goes through the encryption device when
	// that node is a peer (never in clear under strict mode).
	int enc = tunnel_ip ? encrypt_route(tunnel_ip) : -1;
	if (enc == REASON_NO_ENCRYPT_PEER)
		return drop(skb, enc, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &p);
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	__u32 snat = p.daddr;
	if (enc == 0 && cfg && cfg->encrypt_snat)
		snat = cfg->encrypt_snat;
	__u64 now = bpf_ktime_get_ns();
	__u64 expires = now + lb_nat_timeout(p.proto, CT_STATE_NEW);
	// The reply's tuple must be unique: a local backend sees the client
	// itself; a remote one sees this node and a random port of the SNAT
	// range (LB_SNAT_PORT_MIN: never one the node's own connections take,
	// never the overlay's port; never the WireGuard port, whose replies
	// could pass as WireGuard's datagrams, wireguard_datagram).
	__u32 nsaddr = local ? p.saddr : snat;
	__u16 wg = cfg ? cfg->wireguard_port : 0;
	__u16 nsport = local ? p.sport : lb_snat_port(wg);
	// A TCP flow knows the client's numbers from its SYN (lb_nat_tcp).
	__u8 nflags = p.proto == IPPROTO_TCP ? LB_NAT_SEQ_CLIENT : 0;
	// Never on the tuple of a live connection of a local backend's: its
	// packets would go out as the frontend's (lb_tuple_in_use).
	if (bep && lb_tuple_in_use(bep->ep_id, p.saddr, bip, p.sport, bport, p.proto, now))
		return drop(skb, REASON_LB_NAT, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &p);
	struct lb_nat rev = {.expires = expires, .saddr = p.daddr, .daddr = p.saddr, .sport = p.dport, .dport = p.sport, .reverse = 1,
			     .flags = nflags,
			     .path = local ? LB_PATH_LOCAL : (snat != p.daddr ? LB_PATH_WIREGUARD : LB_PATH_UNDERLAY)};
	int i, ok = 0;
	for (i = 0; i < LB_SNAT_TRIES; i++) {
		// The last try may take over an idle translation never
		// established (lb_nat_claim): only when the others found none free.
		if (lb_nat_claim(bip, nsaddr, bport, nsport, p.proto, &rev, now, i == LB_SNAT_TRIES - 1) == 0) {
			ok = 1;
			break;
		}
		if (local) {
			// The same client tuple again to this frontend (a SYN
			// retransmitted or on a closed flow's tuple): replace it.
			// Never another frontend's flow to this backend from the same
			// client port: its translation stays.
			struct lb_nat_key rk = {.saddr = bip, .daddr = nsaddr, .sport = bport, .dport = nsport, .proto = p.proto};
			__u64 t = now;
			int fresh;
			struct lb_nat *old = lb_nat_find(&rk, &t, &fresh);
			if (old && old->saddr == p.daddr && old->sport == p.dport)
				ok = lb_nat_put(bip, nsaddr, bport, nsport, p.proto, &rev) == 0;
			break;
		}
		nsport = lb_snat_port(wg);
	}
	if (!ok)
		return drop(skb, REASON_LB_NAT, DIR_INGRESS, 0, 0, IDENTITY_WORLD, 0, &p);
	// A local backend's replies on this tuple go through lb_reverse from now on.
	if (bep)
		fast_forget(bip, nsaddr, bport, nsport, p.proto, bep->ep_id);
	struct lb_nat fwd = {.expires = expires, .saddr = nsaddr, .daddr = bip, .sport = nsport, .dport = bport, .tunnel_ip = local ? 0 : tunnel_ip,
			     .flags = nflags, .acked = bpf_ntohl(p.seq), .end = bpf_ntohl(p.seq) + 1};
	lb_nat_put(p.saddr, p.daddr, p.sport, p.dport, p.proto, &fwd);
	// Reported once per connection (its later packets take the NAT entry
	// above): the client to the backend, at the backend's ingress.
	struct pkt t = p;
	t.daddr = bip;
	t.dport = bport;
	if (flow_event(bep && (bep->flags & EP_INGRESS_ENFORCED)))
		emit_translated(DIR_INGRESS, bep ? bep->ep_id : 0, 0, lookup_identity(p.saddr),
				bep ? bep->identity : (where ? where->identity : IDENTITY_WORLD), &t, p.daddr, p.dport);
	return lb_forward(skb, &p, nsaddr, bip, nsport, bport, local ? 0 : tunnel_ip, local);
}
