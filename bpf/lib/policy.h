// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Policy: what an endpoint's entries say about a peer, and the re-check of a reply whose
// conntrack entry was evicted.

#pragma once

#include "common.h"
#include "conntrack.h"
#include "endpoints.h"
#include "parse.h"
#include "services.h"

// policy_key is matched by longest prefix: everything up to and including proto exactly, the
// port (network byte order) by prefix, so that a port range is a few entries.
struct policy_key {
	__u32 prefixlen;
	__u32 ep_id;
	__u32 identity;
	__u8 direction;
	__u8 proto;
	__be16 port;
};

struct policy_value {
	__u32 rule_id;
	__u8 verdict;
	__u8 pad;
	__u16 l7; // enum l7_parser of a proxy verdict: the proxy_ports slot the flow goes to
};

// prefix_policy_key matches peers by address (Kubernetes ipBlock): exact endpoint, direction,
// protocol and an aligned block of ports (port_bits low bits wildcarded, port the block's first
// port), then the address by prefix. A port range is a few blocks, never one entry per port;
// the lookup tries each block size the endpoint uses (endpoint_info.prefix_port_bits).
struct prefix_policy_key {
	__u32 prefixlen;
	__u32 ep_id;
	__u8 direction;
	__u8 proto;
	__u8 port_bits;
	__u8 pad;
	__be16 port;
	__u16 pad2;
	__u32 family;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct prefix_policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} prefix_policy SEC(".maps");

// rank orders entries: deny, then a redirect to the DNS proxy (which learns the answers
// toFQDNs needs; the engine widened its rules to every name where a plain allow also applies, as
// Cilium's redirect wins there), then allow, then a redirect to another proxy.
static __always_inline int rank(const struct policy_value *v)
{
	if (v->verdict == VERDICT_DENY)
		return 4;
	if (v->verdict == VERDICT_PROXY && v->l7 == L7_DNS)
		return 3;
	if (v->verdict == VERDICT_ALLOW)
		return 2;
	if (v->verdict == VERDICT_PROXY)
		return 1;
	return 0;
}

static __always_inline void consider(struct policy_value *v, struct policy_value *best)
{
	if (!v)
		return;
	if (rank(v) > rank(best) ||
	    (v->verdict == best->verdict && v->rule_id < best->rule_id))
		*best = *v;
}

// policy_lookup finds the strongest entry for a peer (rank), ties going to the lowest rule id:
// the same order the engine's Lookup uses.
// policy_lookup finds the strongest entry for the packet (a function of its own: its keys do
// not fit on handle's stack next to the deny responses').
static __attribute__((noinline)) int policy_lookup(struct endpoint_info *ep, __u8 dir, __u32 peer_id, struct pkt *p,
						   struct policy_value *best)
{
	__u32 ep_id = ep->ep_id;
	int prefixes = ep->flags & EP_HAS_PREFIX_POLICY;
	__u32 port_bits = ep->prefix_port_bits;
	// dir may carry DIR_AUDIT: the audit keys of the same direction.
	const __u8 *peer_addr = (dir & 1) == DIR_EGRESS ? p->daddr : p->saddr;
	struct policy_key k = {};
	k.ep_id = ep_id;
	k.direction = dir;
	k.prefixlen = 8 * (sizeof(k) - sizeof(k.prefixlen));
	k.port = p->dport;

	k.identity = peer_id;
	k.proto = p->proto;
	consider(bpf_map_lookup_elem(&policy, &k), best);
	k.proto = 0;
	k.port = 0;
	consider(bpf_map_lookup_elem(&policy, &k), best);
	k.identity = 0;
	consider(bpf_map_lookup_elem(&policy, &k), best);
	k.proto = p->proto;
	k.port = p->dport;
	consider(bpf_map_lookup_elem(&policy, &k), best);
	if (!prefixes)
		return 0;

	struct prefix_policy_key pk = {};
	pk.prefixlen = 8 * (sizeof(pk) - sizeof(pk.prefixlen));
	pk.ep_id = ep_id;
	pk.direction = dir;
	pk.family = p->family;
	__builtin_memcpy(pk.addr, peer_addr, 16);
	pk.proto = p->proto;
	__u16 port = bpf_ntohs(p->dport);
#pragma unroll
	for (int b = 0; b <= 16; b++) {
		if (!(port_bits & (1u << b)))
			continue;
		pk.port_bits = b;
		pk.port = bpf_htons(b == 16 ? 0 : port & (__u16)(0xffff << b));
		consider(bpf_map_lookup_elem(&prefix_policy, &pk), best);
	}
	// Any protocol: one entry per prefix.
	pk.proto = 0;
	pk.port_bits = 16;
	pk.port = 0;
	consider(bpf_map_lookup_elem(&prefix_policy, &pk), best);
	return 0;
}

// to_service_frontend says whether the packet goes to a Service frontend's address and port.
static __attribute__((noinline)) int to_service_frontend(struct pkt *p)
{
	if (p->proto != PROTO_TCP && p->proto != PROTO_UDP)
		return 0;
	struct svc_key sk = {.port = p->dport, .proto = p->proto, .family = p->family};
	__builtin_memcpy(sk.addr, p->daddr, 16);
	return bpf_map_lookup_elem(&services, &sk) != 0;
}

// recover_reply: a packet with no conntrack entry may be a reply of a flow whose entry the
// node's LRU evicted (another pod opened many flows): a mid-stream TCP packet (ACK, no SYN), or
// (udp_reply) a UDP datagram to a pod's socket connected to its sender. Rather than drop it (it
// was about to be dropped by default deny, with no entry of its own, not even a revoked one),
// check the policy of the flow it would answer (the other direction, ports swapped) as it stands
// now; if the policy allows that flow, re-create its entry and pass the packet as its reply: the
// traffic is then what the policy allows for a flow opened the other way. how is the direction,
// with RECOVER_UDP when udp_connected_reply said yes (a BPF function takes five arguments).
// Returns 1 when it did; p is swapped back when it did not.
#define RECOVER_UDP 0x100
static __attribute__((noinline)) int recover_reply(struct endpoint_info *ep, __u32 how, __u32 peer_id, struct pkt *p,
						   __u32 rev)
{
	__u32 dir = how & 1;
	int udp_reply = (how & RECOVER_UDP) != 0;
	if (p->is_frag)
		return 0;
	if (p->proto == PROTO_TCP) {
		if (!(p->tcp_flags & 0x10) || (p->tcp_flags & 0x02))
			return 0;
	} else if (p->proto != PROTO_UDP || !udp_reply) {
		return 0;
	}
	__u8 tmp[16];
	__be16 port;
	__builtin_memcpy(tmp, p->saddr, 16);
	__builtin_memcpy(p->saddr, p->daddr, 16);
	__builtin_memcpy(p->daddr, tmp, 16);
	port = p->sport;
	p->sport = p->dport;
	p->dport = port;
	__u8 odir = dir ^ 1;
	struct policy_value best = {};
	best.rule_id = 0xffffffff;
	policy_lookup(ep, odir, peer_id, p, &best);
	// An audited default deny let the flow through: its reply passes too.
	__u32 enforced = ep->flags & (odir == DIR_EGRESS ? EP_ENFORCE_EGRESS : EP_ENFORCE_INGRESS);
	if (ep->flags & (odir == DIR_EGRESS ? EP_AUDIT_EGRESS : EP_AUDIT_INGRESS))
		enforced = 0;
	if (best.verdict == VERDICT_ALLOW || (best.verdict == 0 && !enforced)) {
		struct ct_key k;
		ct_fill(&k, ep->ep_id, odir, p->family, p->proto, p->saddr, p->daddr, p->sport, p->dport);
		struct ct_value nv = {.last_seen = ct_now(), .rule_id = best.verdict ? best.rule_id : 0,
				      .flags = CT_SEEN_REPLY, .policy_rev = rev};
		bpf_map_update_elem(&conntrack, &k, &nv, BPF_ANY);
		return 1;
	}
	__builtin_memcpy(tmp, p->saddr, 16);
	__builtin_memcpy(p->saddr, p->daddr, 16);
	__builtin_memcpy(p->daddr, tmp, 16);
	port = p->sport;
	p->sport = p->dport;
	p->dport = port;
	return 0;
}
