// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// cgroup connect4/sendmsg4 (translate a frontend to a backend once, at
// connect or send, and report it: EVENT_TRANSLATED) and recvmsg4/getpeername4 (show the service address
// back), for sockets of the namespaces this node registered; their IPv6
// twins for dual-stack sockets' v4-mapped addresses.
#pragma once

// lb_sock_netns returns the lb_netns entry of the socket's namespace (the
// address of the pod it belongs to, 0 for the node's own), 0 when this
// node did not register it.
static __always_inline __u32 *lb_sock_netns(void *ctx)
{
	__u64 ns = bpf_get_netns_cookie(ctx);
	return bpf_map_lookup_elem(&lb_netns, &ns);
}

// lb_sock_event reports the translation of a new connection (or a UDP
// socket's first datagram to that backend) as the client's egress: the
// client is the pod whose namespace the socket is in (its address, port
// unknown) or the node (address unknown), as flow_events says.
static __always_inline void lb_sock_event(__u32 client, struct lb_key *k, __u32 bip, __u16 bport)
{
	struct endpoint_info *src = client ? bpf_map_lookup_elem(&endpoints, &client) : 0;
	if (!flow_event(src && (src->flags & EP_EGRESS_ENFORCED)))
		return;
	struct endpoint_info *dst = bpf_map_lookup_elem(&endpoints, &bip);
	struct pkt p = {.saddr = src ? client : 0, .daddr = bip, .dport = bport, .proto = k->proto};
	emit_translated(DIR_EGRESS, src ? src->ep_id : 0, dst ? dst->ep_id : 0, src ? src->identity : IDENTITY_HOST,
			dst ? dst->identity : lookup_identity(bip), &p, k->vip, k->port);
}

static __always_inline __u8 lb_sock_proto(struct bpf_sock_addr *ctx)
{
	if (ctx->type == 1 /* SOCK_STREAM */)
		return IPPROTO_TCP;
	if (ctx->type == 2 /* SOCK_DGRAM */)
		return IPPROTO_UDP;
	return 0;
}

// CONTROL_MARK is the socket mark of the agent's own control-plane
// connections (the kvstore); keep in sync with agent/kvstore ControlMark.
#define CONTROL_MARK 0x0f1a0000

// lb_sock_mapped4 tells whether an IPv6 hook's address is v4-mapped
// (::ffff:a.b.c.d): a dual-stack socket (Java's default) reaching an IPv4
// service, which the kernel takes down the IPv4 path without running the
// IPv4 hooks. The IPv6 hooks translate those (v6 set), and nothing else.
static __always_inline int lb_sock_mapped4(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == bpf_htonl(0xffff);
}

// lb_sock_nodeport is the NodePort service a pod's socket reaches at k:
// another node of this cluster's address (the nodes map says so) and a
// node port of this node's (every node of the cluster has the same), or
// 0. Translated here, the pod's egress policy judges the backend, as
// for this node's own NodePorts; until 2026-12-07 it judged the other
// node (remote-node, the node port), which then translated the flow, so
// an egress deny of the backend did not hold (found by a review; Cilium
// translates such NodePorts at the socket too).
static __always_inline struct lb_service *lb_sock_nodeport(struct lb_key *k)
{
	__u32 *n = bpf_map_lookup_elem(&nodes, &k->vip);
	if (!n || !(*n & NODE_F_CLUSTER))
		return 0;
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->node_ip)
		return 0;
	struct lb_key own = {.vip = cfg->node_ip, .port = k->port, .proto = k->proto};
	struct lb_service *svc = bpf_map_lookup_elem(&lb_services, &own);
	if (!svc || !(svc->flags & LB_FLAG_NODEPORT))
		return 0;
	return svc;
}

// lb_sock_translate rewrites the destination of a socket operation that
// targets a frontend (v6: an IPv6 hook's v4-mapped address). It returns 0
// to refuse (a frontend without backends). The agent's own control-plane
// sockets are never translated, so no service can take its kvstore
// connection away.
static __always_inline int lb_sock_translate(struct bpf_sock_addr *ctx, int v6)
{
	if (v6 && !lb_sock_mapped4(ctx))
		return 1;
	struct bpf_sock *sock = ctx->sk;
	if (sock && sock->mark == CONTROL_MARK)
		return 1;
	__u32 *reg = lb_sock_netns(ctx);
	if (!reg)
		return 1;
	__u32 caddr = *reg;
	__u8 proto = lb_sock_proto(ctx);
	if (!proto)
		return 1;
	__u32 vip = v6 ? ctx->user_ip6[3] : ctx->user_ip4;
	struct lb_key k = {.vip = vip, .port = (__u16)ctx->user_port, .proto = proto};
	struct lb_service *svc = bpf_map_lookup_elem(&lb_services, &k);
	// Pods' sockets only: the node's own are judged by no egress policy,
	// and its gossip or WireGuard datagrams to another node must not be
	// taken by a Service whose node port is their port.
	if (!svc && caddr)
		svc = lb_sock_nodeport(&k);
	if (!svc)
		return 1;
	__u64 client = bpf_get_netns_cookie(ctx);
	struct lb_backend *b = lb_pick(svc, client, 0, bpf_get_prandom_u32());
	if (!b)
		return 0;
	__u32 bip = b->ip;
	__u16 bport = b->port;
	struct lb_sock_key sk = {.cookie = bpf_get_socket_cookie(ctx), .ip = bip, .port = bport};
	// A socket translated to this backend for this frontend before (an
	// unconnected UDP socket's next datagram) is no new connection.
	struct lb_sock_value *old = bpf_map_lookup_elem(&lb_sock_revnat, &sk);
	int fresh = !old || old->vip != k.vip || old->port != k.port;
	struct lb_sock_value sv = {.vip = k.vip, .port = k.port, .proto = proto, .backend = b->id};
	bpf_map_update_elem(&lb_sock_revnat, &sk, &sv, BPF_ANY);
	if (v6)
		ctx->user_ip6[3] = bip;
	else
		ctx->user_ip4 = bip;
	ctx->user_port = bport;
	if (fresh)
		lb_sock_event(caddr, &k, bip, bport);
	return 1;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx) { return lb_sock_translate(ctx, 0); }

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx) { return lb_sock_translate(ctx, 0); }

SEC("cgroup/connect6")
int sock_connect6(struct bpf_sock_addr *ctx) { return lb_sock_translate(ctx, 1); }

SEC("cgroup/sendmsg6")
int sock_sendmsg6(struct bpf_sock_addr *ctx) { return lb_sock_translate(ctx, 1); }

// The reverse: a reply or peer address from a backend is shown as the
// service address the application asked for, while that backend is still
// one of the service's. Once it is not (the service or the backend gone,
// its address perhaps another pod's now), its datagrams show their own
// address: a long-lived socket does not take them as the service's.
static __always_inline int lb_sock_reverse(struct bpf_sock_addr *ctx, int v6)
{
	if (v6 && !lb_sock_mapped4(ctx))
		return 1;
	if (!lb_sock_netns(ctx))
		return 1;
	__u32 ip = v6 ? ctx->user_ip6[3] : ctx->user_ip4;
	struct lb_sock_key sk = {.cookie = bpf_get_socket_cookie(ctx), .ip = ip, .port = (__u16)ctx->user_port};
	struct lb_sock_value *sv = bpf_map_lookup_elem(&lb_sock_revnat, &sk);
	if (!sv)
		return 1;
	struct lb_key k = {.vip = sv->vip, .port = sv->port, .proto = sv->proto};
	struct lb_service *svc = bpf_map_lookup_elem(&lb_services, &k);
	if (!svc)
		svc = lb_sock_nodeport(&k);
	if (!svc)
		return 1;
	struct lb_member_key mk = {.id = svc->id, .backend = sv->backend};
	struct lb_backend *b = bpf_map_lookup_elem(&lb_members, &mk);
	if (!b || b->ip != sk.ip || b->port != sk.port)
		return 1;
	if (v6)
		ctx->user_ip6[3] = sv->vip;
	else
		ctx->user_ip4 = sv->vip;
	ctx->user_port = sv->port;
	return 1;
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx) { return lb_sock_reverse(ctx, 0); }

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx) { return lb_sock_reverse(ctx, 0); }

SEC("cgroup/recvmsg6")
int sock_recvmsg6(struct bpf_sock_addr *ctx) { return lb_sock_reverse(ctx, 1); }

SEC("cgroup/getpeername6")
int sock_getpeername6(struct bpf_sock_addr *ctx) { return lb_sock_reverse(ctx, 1); }
