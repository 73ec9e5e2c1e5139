//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Filament datapath skeleton: tc programs for the host side of an endpoint's
// veth. They pass every packet today and count it per direction and verdict;
// identity-based policy fills in the verdicts with the datapath issue.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

enum direction { DIR_EGRESS = 0, DIR_INGRESS = 1, DIR_MAX };
enum verdict { VERDICT_FORWARDED = 0, VERDICT_DROPPED = 1, VERDICT_MAX };

struct counter {
	__u64 packets;
	__u64 bytes;
};

// counters: index = direction * VERDICT_MAX + verdict.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DIR_MAX * VERDICT_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} counters SEC(".maps");

const struct counter *unused_counter __attribute__((unused));

static __always_inline int account(struct __sk_buff *skb, enum direction dir, enum verdict v)
{
	__u32 key = dir * VERDICT_MAX + v;
	struct counter *c = bpf_map_lookup_elem(&counters, &key);
	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
	return v == VERDICT_FORWARDED ? TC_ACT_UNSPEC : TC_ACT_SHOT;
}

// from_container: packets the pod sends (tc ingress of the host-side veth).
SEC("tc")
int from_container(struct __sk_buff *skb)
{
	return account(skb, DIR_EGRESS, VERDICT_FORWARDED);
}

// to_container: packets for the pod (tc egress of the host-side veth).
SEC("tc")
int to_container(struct __sk_buff *skb)
{
	return account(skb, DIR_INGRESS, VERDICT_FORWARDED);
}

char __license[] SEC("license") = "Dual BSD/GPL";
