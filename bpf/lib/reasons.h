// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Why a packet was dropped (0: forwarded) and the kinds of events. Go reads
// them from the generated bindings (bpf2go -type reason -type event_type).
#pragma once

// Reasons; 0 is "forwarded". agent/datapath names them (ReasonName).
enum reason {
	REASON_FORWARDED = 0,
	REASON_POLICY_DENIED = 1,   // no rule allows it (default deny)
	REASON_POLICY_DENY_RULE = 2, // a deny rule matched
	REASON_CT_MISSING = 3,      // TCP packet of no known connection and not a SYN
	REASON_INVALID = 4,         // truncated or malformed headers
	REASON_FRAGMENT = 5,        // a later IPv4 fragment whose first was not seen (or of TCP, or to the L7 proxy)
	REASON_UNSUPPORTED_L3 = 6,  // IPv6 and other non-IPv4 traffic from a pod
	REASON_BAD_SOURCE = 7,      // source address is not the endpoint's
	REASON_TUNNEL_SOURCE = 8,   // encapsulated packet from an address that is not a known node
	REASON_NO_BACKEND = 9,      // a service frontend with no backend to take the connection
	REASON_LB_NAT = 10,         // a NodePort translation could not be set up (no free source port, or a local backend's live connection holds the tuple), or a reply came for one half gone
	REASON_NO_ENCRYPT_PEER = 11, // strict encryption: the destination's node is not an encryption peer yet
	REASON_CONTROL_PORT = 12,   // a pod to a node's control port (gossip, metrics, ...) without a policy naming the port
	REASON_NO_PROXY = 13,       // an L7 rule applies but the node's proxy is not listening
	REASON_PROXY_BYPASS = 14,   // an L7 rule applies to a flow that reached the pod without the proxy
	REASON_FORGED_SOURCE = 15,  // to a pod, from a pod's address, on a way that pod's packets never come
	REASON_FRAG_NEEDED = 16,    // a NodePort packet too big for the path the FIB chose (ICMP fragmentation needed sent back when DF is set)
	REASON_NO_ROUTE = 17,       // the FIB has no way out for a translated NodePort packet
	REASON_FOREIGN_VNI = 18,    // a remote cluster's node sent an identity of no pod of its cluster as the VNI
	REASON_MAX = 19,
};

enum event_type {
	EVENT_DROP = 1,
	EVENT_POLICY_VERDICT = 2,
	EVENT_TRANSLATED = 3, // a service frontend translated to a backend for a new connection
};

// Referenced so bpf2go emits Go types for them.
const enum reason *unused_reason __attribute__((unused));
const enum event_type *unused_event_type __attribute__((unused));
