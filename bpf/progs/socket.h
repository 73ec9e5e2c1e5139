// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// cgroup connect4/sendmsg4 (translate a frontend to a backend once, at
// connect or send) and recvmsg4/getpeername4 (show the service address
// back), for sockets of the namespaces this node registered.
#pragma once

static __always_inline int lb_sock_registered(void *ctx)
{
	__u64 ns = bpf_get_netns_cookie(ctx);
	return bpf_map_lookup_elem(&lb_netns, &ns) != 0;
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

// lb_sock_translate rewrites the destination of a socket operation that
// targets a frontend. It returns 0 to refuse (a frontend without backends).
// The agent's own control-plane sockets are never translated, so no
// service can take its kvstore connection away.
static __always_inline int lb_sock_translate(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sock = ctx->sk;
	if (sock && sock->mark == CONTROL_MARK)
		return 1;
	if (!lb_sock_registered(ctx))
		return 1;
	__u8 proto = lb_sock_proto(ctx);
	if (!proto)
		return 1;
	struct lb_key k = {.vip = ctx->user_ip4, .port = (__u16)ctx->user_port, .proto = proto};
	struct lb_service *svc = bpf_map_lookup_elem(&lb_services, &k);
	if (!svc)
		return 1;
	__u64 client = bpf_get_netns_cookie(ctx);
	struct lb_backend *b = lb_pick(svc, client, bpf_get_prandom_u32());
	if (!b)
		return 0;
	struct lb_sock_key sk = {.cookie = bpf_get_socket_cookie(ctx), .ip = b->ip, .port = b->port};
	struct lb_sock_value sv = {.vip = k.vip, .port = k.port};
	bpf_map_update_elem(&lb_sock_revnat, &sk, &sv, BPF_ANY);
	ctx->user_ip4 = b->ip;
	ctx->user_port = b->port;
	return 1;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx) { return lb_sock_translate(ctx); }

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx) { return lb_sock_translate(ctx); }

// The reverse: a reply or peer address from a backend is shown as the
// service address the application asked for.
static __always_inline int lb_sock_reverse(struct bpf_sock_addr *ctx)
{
	if (!lb_sock_registered(ctx))
		return 1;
	struct lb_sock_key sk = {.cookie = bpf_get_socket_cookie(ctx), .ip = ctx->user_ip4, .port = (__u16)ctx->user_port};
	struct lb_sock_value *sv = bpf_map_lookup_elem(&lb_sock_revnat, &sk);
	if (sv) {
		ctx->user_ip4 = sv->vip;
		ctx->user_port = sv->port;
	}
	return 1;
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx) { return lb_sock_reverse(ctx); }

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx) { return lb_sock_reverse(ctx); }
