// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Connection tracking per endpoint and direction: timeouts, lookup (an
// established packet or a reply), update and creation.
#pragma once

#define CT_TIMEOUT_SYN (60 * NSEC)
#define CT_TIMEOUT_TCP (21600 * NSEC)
#define CT_TIMEOUT_CLOSE (10 * NSEC)
#define CT_TIMEOUT_UDP (60 * NSEC)
#define CT_TIMEOUT_ICMP (30 * NSEC)
#define CT_TIMEOUT_OTHER (60 * NSEC)

// An established packet updates its entry's expiry only when the last
// update is CT_REFRESH_JIFFIES old or more (at most 1 s at any HZ, which
// is at least 100): an entry lives between its timeout less 1 s and its
// timeout after the flow's last packet.
#define CT_REFRESH_JIFFIES 100

#define CT_STATE_NEW 0
#define CT_STATE_ESTABLISHED 1
#define CT_STATE_CLOSING 2

static __always_inline __u64 ct_timeout(struct pkt *p, __u8 state)
{
	switch (p->proto) {
	case IPPROTO_TCP:
		if (state == CT_STATE_CLOSING)
			return CT_TIMEOUT_CLOSE;
		return state == CT_STATE_ESTABLISHED ? CT_TIMEOUT_TCP : CT_TIMEOUT_SYN;
	case IPPROTO_UDP:
		return CT_TIMEOUT_UDP;
	case IPPROTO_ICMP:
		return CT_TIMEOUT_ICMP;
	}
	return CT_TIMEOUT_OTHER;
}

#define CT_NEW 0
#define CT_ESTABLISHED 1
#define CT_REPLY 2

// ct_entry.flags
#define CT_F_REPLY 1    // a reply was seen
#define CT_F_UPSTREAM 2 // opened by the L7 proxy's upstream socket: its replies go back to it
#define CT_F_COVER 4    // admitted with a cover identity (IPCACHE_F_COVER): replies are judged with their own
// CT_F_REVOKED: the policy revoked the flow; the entry stays (refreshed by
// its packets like any) so that its packets, either way, are dropped (TCP)
// or judged again, as the flow's own or its replies as a flow of their
// own direction (enforce), instead of
// the other side's next packet starting a flow of its own in a direction
// not enforced, on which the revoked side's packets would pass as replies.
#define CT_F_REVOKED 16
// CT_F_NO_CARRY: made for a revoked flow's reply, as a flow of its own
// direction: it carries no packet of the other side as its reply (those
// are judged as flows of their own too), so the revoked side does not
// pass on it once its tombstone expires.
#define CT_F_NO_CARRY 32
// The peer is a pod of this node: its packets reach to_container only
// through the node's stack, from its own veth, which the slow path checks
// (fast_ingress leaves them to it).
#define CT_F_LOCAL_PEER 8
// CT_F_HANDSHAKE: opened by a TCP SYN: the entry moves from conntrack_new
// to conntrack only at the opener's ACK of the other side's SYN-ACK
// (ct_settle).
#define CT_F_HANDSHAKE 64
// CT_F_NODEPORT: made by a NodePort flow's translated packet
// (MARK_NODEPORT_MAGIC): the flow's tuple is the client's own, and the
// entry does not hold it against that client's next NodePort flow
// (lb_tuple_in_use), whatever state it was left in.
#define CT_F_NODEPORT 128

// ct_entry.fin: the flow's own side sent a FIN, its replying side did. A
// FIN closes one direction only: a half-closed connection lives on (ssh
// host cmd </dev/null: the client's FIN first, the output maybe minutes
// later); the entry is closing (CT_TIMEOUT_CLOSE) once both sides sent
// theirs, or at an RST. Until 2026-12-06 any FIN made it closing, and a
// half-closed connection idle 10 s lost its entry
// (TestHalfClosedConnectionKeepsItsEntry).
#define CT_FIN_OWN 1
#define CT_FIN_REPLY 2
// CT_ACK_KNOWN (in ct_entry.fin): isn holds (network order) the next
// number the endpoint expects from its peer as far as this node saw: the
// acknowledgement of the endpoint's own last TCP segment on the flow,
// moved past the peer's data and FIN that start exactly there. An RST
// from outside the endpoint (anything but its own veth) then changes the
// entry only at exactly that number (RFC 5961's test, which the
// endpoint's kernel applies too: it answers any other in its window with
// an ACK, and a peer that really lost the connection answers that with an
// RST at exactly that number), or the one before it after the peer's FIN;
// the endpoint's own RST at any. Known when the entry moves to conntrack
// (ct_settle: the number is known from the handshake), then moved by the
// endpoint's segments (ct_local_ack, on the fast path too) and the peer's
// (ct_peer_data, likewise). A SYN on a live established connection's
// tuple leaves that entry as it is (ct_create); one admitted otherwise
// makes a new entry that keeps the number until the endpoint's SYN-ACK
// says a new connection answered. Until 2026-12-06 an RST at any number
// made an established entry closing: anyone able to send a segment with
// the flow's tuple cut an idle connection 10 s later
// (TestConntrackBlindRSTLeavesConnectionsOpen). Zero in an earlier
// agent's entries: their RSTs count at any number until the endpoint's
// next segment on the flow.
#define CT_ACK_KNOWN 4
// CT_ACK_RESYNC: the endpoint sent a SYN on the tuple of the established
// connection this entry is (ct_create kept it): its next ACK, of a new
// connection's SYN-ACK, sets the number whatever it is, and until then
// an RST from outside counts at any number (the peer's refusal of that
// SYN: the old connection is gone for the endpoint).
#define CT_ACK_RESYNC 8

// ct_seq_after tells whether a comes after b in the sequence space
// (network order both).
static __always_inline int ct_seq_after(__u32 a, __u32 b)
{
	return (__s32)(bpf_ntohl(a) - bpf_ntohl(b)) > 0;
}

// ct_rst_counts tells whether p, a TCP RST on e's flow from side (CT_FIN_*
// of its sender), ends it: sent by the endpoint itself (local: from its
// veth); or, when the endpoint's number is known (CT_ACK_KNOWN), at
// exactly that number (isn), or at the one before it once the sender's
// FIN was counted there (the endpoint's kernel takes that too, in
// CLOSE_WAIT).
static __always_inline int ct_rst_counts(struct ct_entry *e, struct pkt *p, int local, __u8 side)
{
	// Also while the endpoint opens a new connection on the tuple
	// (CT_ACK_RESYNC: its own SYN, the old connection gone for it): the
	// peer's refusal answers that SYN's number, which is not kept.
	if (local || (e->fin & (CT_ACK_KNOWN | CT_ACK_RESYNC)) != CT_ACK_KNOWN || p->seq == e->isn)
		return 1;
	return (e->fin & side) && bpf_ntohl(p->seq) + 1 == bpf_ntohl(e->isn);
}

// ct_fin_counts tells whether p, a TCP FIN on e's flow, closes its
// sender's side: sent by the endpoint itself or another pod of this node
// (local); or, when the endpoint's number is known (CT_ACK_KNOWN), from a
// segment that starts at exactly that number (the next the endpoint
// expects: its data, then the FIN), and none while the endpoint opens a
// new connection on the tuple (CT_ACK_RESYNC: the number is the old
// connection's). A FIN elsewhere is passed on (the endpoint's kernel
// judges it) and counts nothing: until 2026-12-06 one at any number did,
// and with the endpoint's own FIN a blind forger made a half-closed
// connection's entry closing
// (TestConntrackBlindFINLeavesHalfClosedConnectionsOpen). A peer's real
// FIN whose segment does not start there (it came ahead of data before
// it, or a retransmission joined it to data seen already) is not counted
// when the endpoint acknowledges it later: the entry then ends at an RST
// or its timeout.
static __always_inline int ct_fin_counts(struct ct_entry *e, struct pkt *p, int local)
{
	if (local || !(e->fin & CT_ACK_KNOWN))
		return 1;
	return !(e->fin & CT_ACK_RESYNC) && p->seq == e->isn;
}

// ct_local_ack moves e's number (CT_ACK_KNOWN) by p, the endpoint's own
// segment on the flow (in conntrack; side: its CT_FIN_* side): to its
// acknowledgement when later (the endpoint's segments may reach here out
// of order), or whatever it is for its SYN-ACK or its first ACK after its
// own SYN on the tuple (CT_ACK_RESYNC): a new connection's numbers.
static __always_inline void ct_local_ack(struct ct_entry *e, struct pkt *p, __u8 side)
{
	if (p->proto != IPPROTO_TCP || (p->tcp_flags & (TCP_ACK | TCP_RST)) != TCP_ACK)
		return;
	__u8 f = e->fin;
	if ((p->tcp_flags & TCP_SYN) || (f & CT_ACK_RESYNC)) {
		// A new connection on the tuple (the endpoint's SYN-ACK, or its
		// ACK after its own SYN): its numbers, and no side's FIN yet (an
		// entry left established by a FIN not counted would otherwise
		// hand the old connection's to it, and its first FIN would make
		// it closing); but its own, when this segment carries it
		// (ct_update counted it just now: a Fast Open client's data and
		// FIN on that ACK).
		e->isn = p->ack;
		e->fin = (f & ~(CT_ACK_RESYNC | CT_FIN_OWN | CT_FIN_REPLY)) | CT_ACK_KNOWN |
			 ((p->tcp_flags & TCP_FIN) ? side : 0);
		return;
	}
	if (!(f & CT_ACK_KNOWN) || ct_seq_after(p->ack, e->isn))
		e->isn = p->ack;
	if (!(f & CT_ACK_KNOWN))
		e->fin = f | CT_ACK_KNOWN;
}

// ct_peer_data moves e's number by p, a segment from outside on the flow:
// one that starts exactly there (the next the endpoint expects) moves it
// past its data and FIN, so that the peer's RST right after them (close
// with unread input, SO_LINGER 0: at the number after its last, before
// the endpoint acknowledged them) counts. A blind forger must guess the
// number exactly, as for an RST.
static __always_inline void ct_peer_data(struct ct_entry *e, struct pkt *p)
{
	if (p->proto != IPPROTO_TCP || !(e->fin & CT_ACK_KNOWN) || p->seq != e->isn ||
	    (p->tcp_flags & (TCP_ACK | TCP_SYN | TCP_RST)) != TCP_ACK)
		return;
	__u32 hdr = ETH_HLEN + p->ihl + p->tcp_doff;
	__u32 n = (p->len > hdr ? p->len - hdr : 0) + ((p->tcp_flags & TCP_FIN) ? 1 : 0);
	if (n)
		e->isn = bpf_htonl(bpf_ntohl(p->seq) + n);
}

// ct_update moves entry e on by p, a packet of its flow (reply: in the
// reply direction; local: sent by the endpoint, from its veth, or by
// another pod of this node or the node's own stack: ct_lookup's trusted).
static __always_inline void ct_update(struct ct_entry *e, struct pkt *p, __u64 now, int reply, int local)
{
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, p->len);
	if (reply && !(e->flags & CT_F_REPLY))
		e->flags |= CT_F_REPLY;
	if (p->proto == IPPROTO_TCP) {
		__u8 side = reply ? CT_FIN_REPLY : CT_FIN_OWN;
		if (p->tcp_flags & TCP_RST) {
			if (ct_rst_counts(e, p, local, side))
				e->state = CT_STATE_CLOSING;
		} else if (p->tcp_flags & TCP_FIN) {
			if (!(e->fin & side) && ct_fin_counts(e, p, local))
				e->fin |= side;
			if ((e->fin & (CT_FIN_OWN | CT_FIN_REPLY)) == (CT_FIN_OWN | CT_FIN_REPLY))
				e->state = CT_STATE_CLOSING;
			else if (e->state == CT_STATE_NEW && reply)
				e->state = CT_STATE_ESTABLISHED;
		} else if (e->state == CT_STATE_NEW && reply) {
			e->state = CT_STATE_ESTABLISHED;
		}
	} else if (reply) {
		e->state = CT_STATE_ESTABLISHED;
	}
	e->expires = now + ct_timeout(p, e->state);
	e->refreshed = bpf_jiffies64();
}

// datapath_rev is the revision of the agent's maps (revision map).
static __always_inline __u32 datapath_rev(void)
{
	__u32 zero = 0;
	__u32 *rev = bpf_map_lookup_elem(&revision, &zero);
	return rev ? *rev : 0;
}

// new_tcp tells whether p opens a TCP connection (SYN without ACK, RST or
// FIN): it is judged as new even when an entry for its tuple remains (a
// closed connection's, kept for CT_TIMEOUT_CLOSE), so a policy change
// applies to a connection that reuses the tuple. A SYN with RST or FIN
// (which no TCP sends) is judged as a segment of the tuple's flow: until
// 2026-12-06 one such packet made the entry anew, closing.
static __always_inline int new_tcp(struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN)) == TCP_SYN;
}

// icmp_tag is the port that names ICMP type t (a request's, for a
// request and its reply) in a conntrack tuple: never 0, distinct per type.
#define icmp_tag(t) bpf_htons(0xff00 | (t))

// icmp_request is the request type of ICMP reply type t (echo, timestamp,
// information, address mask), or t itself.
static __always_inline __u8 icmp_request(__u8 t)
{
	switch (t) {
	case 0:
		return 8;
	case 14:
	case 16:
	case 18:
		return t - 1;
	}
	return t;
}

// ct_icmp_fits tells whether entry e, found for p, stands for p's ICMP
// type (anything else fits): the same type as the flow's first packet
// (e->pport) in its direction, the reply type of that request in the
// reverse one. With icmp_tuple's tags only the message of a type and its
// reply can meet in one tuple; this tells them apart when an identifier
// equals a tag.
static __always_inline int ct_icmp_fits(struct ct_entry *e, struct pkt *p, int reply)
{
	if (p->proto != IPPROTO_ICMP)
		return 1;
	if (!reply)
		return e->pport == p->pport;
	__u8 t = bpf_ntohs(p->pport);
	return t != icmp_request(t) && bpf_htons(icmp_request(t)) == e->pport;
}

// Two tables hold the entries (Conntrack in docs/architecture.md): a
// flow starts in conntrack_new and moves to conntrack once established,
// so that a flood of flows never established (forged SYNs, datagrams
// nobody answers) evicts only entries of its own kind from their LRU,
// never an established flow's (whose next segment would then be dropped
// where its direction is enforced). Established means:
// - a TCP connection opened by a SYN (CT_F_HANDSHAKE): the opener's ACK
//   of the other side's SYN-ACK, the number checked (isn + 1), so a
//   source that cannot see the SYN-ACK (a forged one) cannot complete it;
//   or a reply that is a plain ACK (no SYN, no RST), which only a side
//   holding the connection sends: a SYN on an established connection's
//   tuple that made its entry anew (ct_create) is answered with one (a
//   challenge ACK) and the entry moves back;
// - a TCP flow picked up without its SYN (an entry lost, an agent
//   upgrade): a reply that is no RST (a segment nobody has a connection
//   for is answered with one);
// - UDP and other protocols: a reply;
// - ICMP: never (every pod answers an echo, forged or not; its flows
//   live 30 s).
// An entry waiting in conntrack_new lives at most CT_TIMEOUT_SYN after its
// last packet. Until 2026-12-06 every flow had one LRU, and about 260,000
// forged SYNs or datagrams to any pod the world may reach evicted other
// pods' idle connections (TestConntrackFloodSparesEstablishedFlows).

// ct_find is the entry of key k: conntrack's, else conntrack_new's (*fresh
// set), else NULL.
static __always_inline struct ct_entry *ct_find(struct ct_key *k, int *fresh)
{
	struct ct_entry *e = bpf_map_lookup_elem(&conntrack, k);
	*fresh = 0;
	if (e)
		return e;
	*fresh = 1;
	return bpf_map_lookup_elem(&conntrack_new, k);
}

// ct_settle is for entry e of key k in conntrack_new, just updated by p
// (reply: in the reply direction; local: the endpoint's own): it moves
// the entry to conntrack when p establishes the flow (above), else bounds
// its life; it returns the entry to use from now on, *fresh cleared when
// it moved. The moved entry knows the endpoint's last acknowledgement
// (CT_ACK_KNOWN) when p is the endpoint's own ACK, or the opener's ACK of
// a handshake the endpoint answered (the SYN-ACK acknowledged what that
// ACK's sequence number is).
static __always_inline struct ct_entry *ct_settle(struct ct_key *k, struct ct_entry *e, struct pkt *p, int reply, __u64 now,
						   int local, int *fresh)
{
	int move = reply && p->proto != IPPROTO_ICMP;
	if (p->proto == IPPROTO_TCP) {
		__u8 f = p->tcp_flags;
		if (f & TCP_RST)
			move = 0;
		else if (!(e->flags & CT_F_HANDSHAKE))
			move = reply;
		else if (reply) {
			if ((f & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)) {
				e->isn = p->seq;
				if (local && (e->fin & CT_ACK_KNOWN))
					e->fin &= ~CT_ACK_KNOWN; // the endpoint answered a new connection
			}
			move = (f & (TCP_SYN | TCP_ACK)) == TCP_ACK;
		} else
			move = (e->flags & CT_F_REPLY) && (f & (TCP_SYN | TCP_ACK)) == TCP_ACK &&
			       bpf_ntohl(p->ack) == bpf_ntohl(e->isn) + 1;
	}
	if (!move) {
		__u64 most = now + CT_TIMEOUT_SYN;
		if (e->expires > most)
			e->expires = most;
		return e;
	}
	struct ct_entry c = *e;
	c.fast_action = 0; // cached by a slow path nothing read it after
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_ACK)) {
		if (local) {
			c.isn = p->ack;
			c.fin |= CT_ACK_KNOWN;
		} else if ((e->flags & CT_F_HANDSHAKE) && !reply) {
			c.isn = p->seq;
			c.fin |= CT_ACK_KNOWN;
		}
	}
	if (bpf_map_update_elem(&conntrack, k, &c, BPF_ANY))
		return e;
	// Deleted from conntrack_new only once found in conntrack: e stays
	// the entry (and the key in conntrack_new) if another CPU's ct_create
	// took the copy away meanwhile.
	struct ct_entry *m = bpf_map_lookup_elem(&conntrack, k);
	if (!m)
		return e;
	bpf_map_delete_elem(&conntrack_new, k);
	*fresh = 0;
	return m;
}

// ct_lookup finds the connection of p in the scope of endpoint ep_id and
// direction dir: the same direction (established: *proxy is its L7 proxy
// port) or the reverse (reply: *proxy is PROXY_UPSTREAM when the
// connection is the L7 proxy's upstream one). A SYN opening a connection
// is always new. *entry is the entry found (unset for CT_NEW).
static __always_inline int ct_lookup(struct pkt *p, __u16 ep_id, __u8 dir, __u64 now, int trusted, __u32 *proxy,
				     struct ct_entry **entry)
{
	if (new_tcp(p))
		return CT_NEW;
	int fresh, reply = 0;
	struct ct_key k = {
		.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport,
		.proto = p->proto, .dir = dir, .ep_id = ep_id,
	};
	struct ct_entry *e = ct_find(&k, &fresh);
	if (!e || e->expires <= now || !ct_icmp_fits(e, p, 0)) {
		// The reply direction: k becomes the reverse key.
		k.saddr = p->daddr;
		k.daddr = p->saddr;
		k.sport = p->dport;
		k.dport = p->sport;
		k.dir = dir ^ 1;
		reply = 1;
		e = ct_find(&k, &fresh);
		if (!e || e->expires <= now || !ct_icmp_fits(e, p, 1))
			return CT_NEW;
	}
	int local = dir == DIR_EGRESS; // from the endpoint's veth (from_container)
	ct_update(e, p, now, reply, local || trusted);
	if (fresh)
		e = ct_settle(&k, e, p, reply, now, local, &fresh);
	if (!fresh)
		local ? ct_local_ack(e, p, reply ? CT_FIN_REPLY : CT_FIN_OWN) : ct_peer_data(e, p);
	*entry = e;
	if (!reply) {
		*proxy = e->proxy_port;
		return CT_ESTABLISHED;
	}
	if (e->flags & CT_F_UPSTREAM)
		*proxy = PROXY_UPSTREAM;
	return CT_REPLY;
}

// ct_related tells whether p, an ICMP error quoting a TCP or UDP packet
// (p->inner_proto), is about a live flow of endpoint ep_id and goes back
// to the quoted packet's sender: the quoted packet is the flow's in its
// own direction (dir ^ 1: an error coming in about what the endpoint
// sent, or going out about what it received) or in its reply direction
// (dir: an error about a reply).
//
// The error must come from the quoted packet's destination (the flow's
// peer), or from an address that is no pod's (a node, a router, the
// world: the hops between): until 2026-12-07 any pod knowing (or
// sweeping) the tuple of an endpoint's flow with a third party could send
// it errors about that flow, its ingress policy never asked
// (TestRelatedICMPErrorFromAnotherPodRefused). A pod's address is
// anti-spoofed at its node, so its errors carry it.
static __always_inline int ct_related(struct pkt *p, __u16 ep_id, __u8 dir, __u64 now)
{
	if (!p->inner_proto || p->inner_saddr != p->daddr)
		return 0;
	if (p->saddr != p->inner_daddr) {
		// (A node's other addresses, its pod gateway among them, pass:
		// under a remote cluster's cover prefix it reads as a pod. Its
		// underlay address is host or remote-node in the ipcache.)
		struct ipcache_key ik = {.prefixlen = 32, .ip = p->saddr};
		if (!bpf_map_lookup_elem(&node_local_addrs, &ik.ip)) {
			struct ipcache_value *iv = bpf_map_lookup_elem(&ipcache, &ik);
			if (iv && iv->identity > IDENTITY_MAX_RESERVED && !(iv->identity & IDENTITY_LOCAL_SCOPE))
				return 0;
		}
	}
	struct ct_key k = {
		.saddr = p->inner_saddr, .daddr = p->inner_daddr, .sport = p->inner_sport, .dport = p->inner_dport,
		.proto = p->inner_proto, .dir = dir ^ 1, .ep_id = ep_id,
	};
	int fresh;
	struct ct_entry *e = ct_find(&k, &fresh);
	if (e && e->expires > now && !(e->flags & CT_F_REVOKED))
		return 1;
	struct ct_key r = {
		.saddr = p->inner_daddr, .daddr = p->inner_saddr, .sport = p->inner_dport, .dport = p->inner_sport,
		.proto = p->inner_proto, .dir = dir, .ep_id = ep_id,
	};
	e = ct_find(&r, &fresh);
	return e && e->expires > now && !(e->flags & CT_F_REVOKED);
}

// CT_F_VERDICT: the flags that record how a flow was admitted (a SYN on
// an established connection's tuple keeps that entry only when its own
// verdict gives the same, ct_create).
#define CT_F_VERDICT (CT_F_UPSTREAM | CT_F_COVER | CT_F_LOCAL_PEER | CT_F_NO_CARRY | CT_F_REVOKED)

// ct_create starts the entry of p's new flow, with the CT_F_* flags; its
// policy was checked at revision rev. It goes to conntrack_new (ct_settle
// moves it), and an entry of the tuple in conntrack (a closed connection's)
// is deleted. A SYN on the tuple of a live established connection whose
// endpoint's number is known (CT_ACK_KNOWN), admitted as that connection
// was (the peer's identity, the proxy port, CT_F_VERDICT), leaves its
// entry as it is and makes none: a stray or forged SYN (the endpoint
// answers it with an ACK of the connection, which passes as its reply),
// or a new connection whose peer lost the old one unseen (the endpoint's
// SYN-ACK and the rest pass on the entry, judged at the revision it has).
// Until 2026-12-06 the SYN made the entry anew in conntrack_new: a
// forged SYN, then an RST at any number, made an idle connection's entry
// closing; two forged SYNs within the endpoint's rate limit of challenge
// ACKs left it there, new, for 60 s
// (TestConntrackBlindRSTLeavesConnectionsOpen). Otherwise the entry made
// keeps the old one's number while it is live and established, for RSTs
// from outside (CT_ACK_KNOWN), until a SYN-ACK says a new connection
// answered.
static __always_inline void ct_create(struct pkt *p, __u16 ep_id, __u8 dir, __u32 peer, __u64 now, __u16 proxy, __u8 flags,
				      __u32 rev)
{
	struct ct_key k = {
		.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport,
		.proto = p->proto, .dir = dir, .ep_id = ep_id,
	};
	struct ct_entry *old = bpf_map_lookup_elem(&conntrack, &k);
	int known = old && p->proto == IPPROTO_TCP && old->state == CT_STATE_ESTABLISHED && old->expires > now &&
		    (old->fin & CT_ACK_KNOWN);
	if (known && new_tcp(p) && old->peer_identity == peer && old->proxy_port == proxy &&
	    (old->flags & CT_F_VERDICT) == (flags & CT_F_VERDICT)) {
		if (dir == DIR_EGRESS && !(old->fin & CT_ACK_RESYNC))
			old->fin |= CT_ACK_RESYNC; // the endpoint's own SYN
		// Whose tuple it is now: a NodePort flow's SYN (translated) or
		// a direct one's (lb_tuple_in_use).
		if ((old->flags ^ flags) & CT_F_NODEPORT)
			old->flags ^= CT_F_NODEPORT;
		return;
	}
	struct ct_entry e = {.packets = 1, .bytes = p->len, .peer_identity = peer, .proxy_port = proxy, .flags = flags};
	if (new_tcp(p))
		e.flags |= CT_F_HANDSHAKE;
	e.state = CT_STATE_NEW;
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_RST))
		e.state = CT_STATE_CLOSING;
	else if (p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_FIN))
		e.fin = CT_FIN_OWN;
	e.expires = now + ct_timeout(p, e.state);
	e.refreshed = bpf_jiffies64();
	e.rev = rev;
	e.pport = p->pport;
	struct ct_entry *carry = known ? old : 0;
	if (!carry && new_tcp(p)) {
		// A SYN again on a tuple whose entry an earlier SYN made anew
		// keeping the number: it keeps it too (else a second forged SYN,
		// then an RST at any number, would close it).
		struct ct_entry *n = bpf_map_lookup_elem(&conntrack_new, &k);
		if (n && n->expires > now && (n->fin & CT_ACK_KNOWN))
			carry = n;
	}
	if (carry) {
		e.isn = carry->isn;
		e.fin |= CT_ACK_KNOWN;
		if (dir == DIR_EGRESS)
			e.fin |= CT_ACK_RESYNC; // the endpoint's own SYN: the peer's refusal counts
	}
	if (old) // a lookup takes no lock, a delete does
		bpf_map_delete_elem(&conntrack, &k);
	bpf_map_update_elem(&conntrack_new, &k, &e, BPF_ANY);
}
