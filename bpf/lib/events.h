// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Counters per reason and direction, events to user space on the ring
// buffer (with the packet's TCP flags, whether it is a reply, whether the
// connection goes to the L7 proxy; service translations with their
// frontend), whether a new connection is reported, events a full ring
// could not take (event_losses), policy audit mode, and drop (count,
// report, TC_ACT_SHOT).
#pragma once

static __always_inline void count(__u32 reason, __u32 dir, __u32 len)
{
	__u32 key = reason * 2 + dir;
	struct counter *c = bpf_map_lookup_elem(&counters, &key);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

// event_new reserves an event on the ring and fills it from p, at time ts
// (bpf_ktime_get_ns; 0 when the ring is full, counted in event_losses);
// flags are EVENT_F_* besides the reply flag p carries.
static __always_inline struct event *event_new(__u64 ts, __u8 type, __u8 reason, __u8 dir, __u16 ep_id, __u16 peer_ep,
						__u32 src_id, __u32 dst_id, struct pkt *p, __u32 ifindex, __u8 flags)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&event_losses, &zero);
		if (lost)
			(*lost)++;
		return 0;
	}
	e->ts = ts;
	e->type = type;
	e->reason = reason;
	e->dir = dir;
	e->proto = p->proto;
	e->ep_id = ep_id;
	e->peer_ep = peer_ep;
	e->src_identity = src_id;
	e->dst_identity = dst_id;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = bpf_ntohs(p->sport);
	e->dport = bpf_ntohs(p->dport);
	e->ifindex = ifindex;
	e->len = p->len;
	e->tcp_flags = p->tcp_flags;
	e->flags = flags | (p->reply ? EVENT_F_REPLY : 0);
	e->pad[0] = e->pad[1] = 0;
	return e;
}

// emit_at reports an event stamped ts: the caller's clock read of the
// same packet (enforce's), which saves a second read.
static __always_inline void emit_at(__u64 ts, __u8 type, __u8 reason, __u8 dir, __u16 ep_id, __u16 peer_ep,
				    __u32 src_id, __u32 dst_id, struct pkt *p, __u32 ifindex, __u8 flags)
{
	struct event *e = event_new(ts, type, reason, dir, ep_id, peer_ep, src_id, dst_id, p, ifindex, flags);
	if (e)
		bpf_ringbuf_submit(e, 0);
}

static __always_inline void emit(__u8 type, __u8 reason, __u8 dir, __u16 ep_id, __u16 peer_ep,
				 __u32 src_id, __u32 dst_id, struct pkt *p, __u32 ifindex, __u8 flags)
{
	emit_at(bpf_ktime_get_ns(), type, reason, dir, ep_id, peer_ep, src_id, dst_id, p, ifindex, flags);
}

// emit_translated reports a service translation of a new connection: p
// goes from the client to the chosen backend, and the frontend
// (svc_addr, svc_port in network order) is what the client asked for.
static __always_inline void emit_translated(__u8 dir, __u16 ep_id, __u16 peer_ep, __u32 src_id, __u32 dst_id,
					    struct pkt *p, __u32 svc_addr, __u16 svc_port)
{
	struct event *e = event_new(bpf_ktime_get_ns(), EVENT_TRANSLATED, REASON_FORWARDED, dir, ep_id, peer_ep, src_id, dst_id, p, 0, 0);
	if (!e)
		return;
	e->svc_addr = svc_addr;
	e->svc_port = bpf_ntohs(svc_port);
	bpf_ringbuf_submit(e, 0);
}

// flow_event tells whether a new forwarded connection at an endpoint
// (whose direction is enforced or not) is reported, as the node config's
// flow_events says. Only new connections pay for the lookup.
static __always_inline int flow_event(__u8 enforced)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	__u32 mode = cfg ? cfg->flow_events : FLOW_EVENTS_CONNECTIONS;
	return mode == FLOW_EVENTS_CONNECTIONS || (mode == FLOW_EVENTS_ENFORCED && enforced);
}

// policy_audit tells whether the node config's policy audit mode is on.
static __always_inline int policy_audit(void)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&config, &zero);
	return cfg && cfg->policy_audit;
}

static __always_inline int drop(struct __sk_buff *skb, int reason, __u8 dir, __u16 ep_id, __u16 peer_ep,
				__u32 src_id, __u32 dst_id, struct pkt *p)
{
	count(reason, dir, skb->len);
	emit(EVENT_DROP, reason, dir, ep_id, peer_ep, src_id, dst_id, p, skb->ifindex, 0);
	return TC_ACT_SHOT;
}
