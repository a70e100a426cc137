// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// netpact's own connection tracking: flows by endpoint and direction, the ports of first
// fragments for the later ones, and the socket lookup that tells a UDP reply from a new flow.

#pragma once

#include "common.h"
#include "endpoints.h"
#include "parse.h"

#define CT_SEEN_REPLY 1
#define CT_CLOSING 2
#define CT_REVOKED 4 // policy dropped the flow: no reply passes, and it is not an evicted flow
#define CT_REDIRECT 8 // the flow goes to the node's L7 proxy (ct_value.l7 names the parser)
#define CT_PROXY 16   // the flow is the L7 proxy's own connection: its replies go back to the proxy

struct ct_key {
	__u32 ep_id;
	__u8 direction;
	__u8 family;
	__u8 proto;
	__u8 pad;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
};

struct ct_value {
	__u64 last_seen;
	__u32 rule_id;
	__u32 flags;
	__u32 policy_rev; // the policy revision the flow was last checked against
	__u32 l7;         // CT_REDIRECT: the parser whose proxy the flow goes to
};

struct frag_key {
	__u8 family;
	__u8 proto;
	__u16 pad;
	__u32 id;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct frag_value {
	__be16 sport;
	__be16 dport;
	__u8 proto; // the first fragment's transport protocol (IPv6: after its extension headers)
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fragments SEC(".maps");

static __always_inline void ct_fill(struct ct_key *k, __u32 ep_id, __u8 dir, __u8 family, __u8 proto,
				    const __u8 *saddr, const __u8 *daddr, __be16 sport, __be16 dport)
{
	k->ep_id = ep_id;
	k->direction = dir;
	k->family = family;
	k->proto = proto;
	k->pad = 0;
	__builtin_memcpy(k->saddr, saddr, 16);
	__builtin_memcpy(k->daddr, daddr, 16);
	k->sport = sport;
	k->dport = dport;
}

static __always_inline __u64 ct_timeout(__u8 proto, __u32 flags)
{
	if (proto == PROTO_TCP) {
		if (flags & CT_CLOSING)
			return 10 * NS_PER_SEC;
		if (flags & CT_SEEN_REPLY)
			return 21600 * NS_PER_SEC;
		return 60 * NS_PER_SEC;
	}
	return 60 * NS_PER_SEC;
}

// ct_now is conntrack's clock (ct_value.last_seen): CLOCK_MONOTONIC at the kernel tick's
// resolution, plenty for timeouts of seconds and a fraction of what the precise clock costs a
// packet (about 30 ns on a KVM guest).
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

// ct_live returns the entry for k if it exists and has not timed out.
static __always_inline struct ct_value *ct_live(struct ct_key *k, __u64 now)
{
	struct ct_value *v = bpf_map_lookup_elem(&conntrack, k);
	if (!v)
		return 0;
	// A signed age: an entry written a tick later by another CPU (or, before an upgrade, with the
	// precise clock) is live, not ancient.
	if ((__s64)(now - v->last_seen) > (__s64)ct_timeout(k->proto, v->flags)) {
		bpf_map_delete_elem(&conntrack, k);
		return 0;
	}
	return v;
}

// ct_touch marks a flow seen now. The store is skipped when the coarse clock has not moved: the
// entry is written by the packets of both directions, often on two CPUs, and a write per packet
// would bounce its cache line between them.
static __always_inline void ct_touch(struct ct_value *v, __u64 now)
{
	if (v->last_seen != now)
		v->last_seen = now;
}

// Related ICMP errors are at most this long (IP header included): what RFC 1812 and RFC 4443
// let an error carry, so that a "related" packet cannot be a channel for bulk data.
#define RELATED_MAX_V4 576
#define RELATED_MAX_V6 1280

// frag_key_of is the key of the datagram p is a fragment of (fk zeroed before).
static __always_inline void frag_key_of(struct frag_key *fk, struct pkt *p)
{
	fk->family = p->family;
	fk->proto = p->frag_proto;
	fk->id = p->frag_id;
	__builtin_memcpy(fk->saddr, p->saddr, 16);
	__builtin_memcpy(fk->daddr, p->daddr, 16);
}

// frag_restore gives a later fragment, which carries no ports, those of its first fragment.
// Returns 0 when no first fragment of its datagram passed.
static __always_inline int frag_restore(struct pkt *p)
{
	struct frag_key fk = {};
	frag_key_of(&fk, p);
	struct frag_value *fv = bpf_map_lookup_elem(&fragments, &fk);
	if (!fv)
		return 0;
	p->sport = fv->sport;
	p->dport = fv->dport;
	p->proto = fv->proto;
	return 1;
}

// frag_record remembers the ports of a first fragment that passed, for its later fragments
// (which carry none). Called for every first fragment that passes: by policy and as a reply.
static __attribute__((noinline)) int frag_record(struct pkt *p)
{
	if (!p->is_frag || p->later_frag)
		return 0;
	struct frag_key fk = {};
	frag_key_of(&fk, p);
	struct frag_value fv = {.sport = p->sport, .dport = p->dport, .proto = p->proto};
	bpf_map_update_elem(&fragments, &fk, &fv, BPF_ANY);
	return 0;
}

// ct_revoke marks a tracked flow dropped by policy (kept, not deleted: a flow that vanished
// from the map can then only have been evicted).
static __always_inline void ct_revoke(struct ct_key *k)
{
	struct ct_value *cv = bpf_map_lookup_elem(&conntrack, k);
	if (cv)
		cv->flags |= CT_REVOKED;
}

// udp_connected_reply: a UDP datagram to a pod that a socket of the pod connected to its sender
// receives (connect(2) on both addresses and ports, as resolvers and most UDP clients do) answers
// a flow the pod opened. A socket bound but not connected says nothing about who spoke first.
static __attribute__((noinline)) int udp_connected_reply(struct __sk_buff *skb, struct pkt *p)
{
	__u32 ifindex = skb->ifindex;
	__s32 *nsid = bpf_map_lookup_elem(&endpoint_nsid, &ifindex);
	if (!nsid || *nsid < 0)
		return 0;
	struct bpf_sock_tuple t = {};
	__u32 len = own_tuple(p, &t);
	struct bpf_sock *sk = bpf_sk_lookup_udp(skb, &t, len, (__u32)*nsid, 0);
	if (!sk)
		return 0;
	// A socket that is not connected has port 0 for its peer: never a match, even for a datagram
	// from port 0.
	int ok = sk->dst_port != 0 && sk->dst_port == p->sport;
	if (p->family == FAMILY_V4)
		ok = ok && sk->dst_ip4 == t.ipv4.saddr;
	else
		ok = ok && sk->dst_ip6[0] == t.ipv6.saddr[0] && sk->dst_ip6[1] == t.ipv6.saddr[1] &&
		     sk->dst_ip6[2] == t.ipv6.saddr[2] && sk->dst_ip6[3] == t.ipv6.saddr[3];
	bpf_sk_release(sk);
	return ok;
}
