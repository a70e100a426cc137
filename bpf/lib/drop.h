// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Dropping a packet: counted, reported, and for a policy drop with the deny response on, turned
// into an ICMP error back to its sender.

#pragma once

#include <linux/pkt_cls.h>
#include "common.h"
#include "config.h"
#include "endpoints.h"
#include "events.h"
#include "parse.h"

static __always_inline __u16 csum_fold(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

// deny_response_v4 rewrites a dropped IPv4 packet into an ICMP "destination unreachable,
// communication administratively prohibited" to its sender, and sends it back the way it came.
static __attribute__((noinline)) int deny_response_v4(struct __sk_buff *skb, __u8 dir)
{
	struct ethhdr eth;
	struct iphdr orig;
	__u8 quote[28]; // the original IP header and the first 8 bytes of its payload
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 || bpf_skb_load_bytes(skb, ETH_HLEN, &orig, sizeof(orig)) < 0)
		return -1;
	if (orig.ihl != 5 || orig.protocol == PROTO_ICMP)
		return -1; // no responses to options-bearing packets or to ICMP itself
	if (bpf_skb_load_bytes(skb, ETH_HLEN, quote, sizeof(quote)) < 0)
		return -1;
	if (bpf_skb_change_tail(skb, ETH_HLEN + 20 + 8 + sizeof(quote), 0) < 0)
		return -1;
	struct ethhdr neth = {};
	__builtin_memcpy(neth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(neth.h_source, eth.h_dest, ETH_ALEN);
	neth.h_proto = bpf_htons(ETH_P_IP);
	struct iphdr ip = {};
	ip.version = 4;
	ip.ihl = 5;
	ip.ttl = 64;
	ip.protocol = PROTO_ICMP;
	ip.tot_len = bpf_htons(20 + 8 + sizeof(quote));
	ip.saddr = orig.daddr;
	ip.daddr = orig.saddr;
	ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0));
	struct {
		__u8 type;
		__u8 code;
		__u16 check;
		__u32 unused;
		__u8 quote[28];
	} icmp = {.type = 3, .code = 13};
	__builtin_memcpy(icmp.quote, quote, sizeof(quote));
	icmp.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&icmp, sizeof(icmp), 0));
	if (bpf_skb_store_bytes(skb, 0, &neth, sizeof(neth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + 20, &icmp, sizeof(icmp), 0) < 0)
		return -1;
	skb->mark = response_mark();
	if (!skb->mark)
		return -1;
	// What the pod sent goes back into the pod; what came for the pod goes back to the host.
	return bpf_redirect(skb->ifindex, dir == DIR_EGRESS ? 0 : BPF_F_INGRESS);
}

// deny_response_v6 is deny_response_v4 for IPv6: ICMPv6 destination unreachable, code 1
// (communication with destination administratively prohibited).
static __attribute__((noinline)) int deny_response_v6(struct __sk_buff *skb, __u8 dir)
{
	struct ethhdr eth;
	__u8 nexthdr;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + __builtin_offsetof(struct ipv6hdr, nexthdr), &nexthdr, 1) < 0)
		return -1;
	if (nexthdr == PROTO_ICMPV6)
		return -1;
	struct {
		__u8 type;
		__u8 code;
		__u16 check;
		__u32 unused;
		__u8 quote[48]; // the original IPv6 header and 8 bytes after it
	} icmp = {.type = 1, .code = 1};
	if (bpf_skb_load_bytes(skb, ETH_HLEN, icmp.quote, sizeof(icmp.quote)) < 0)
		return -1;
	// The answer goes back: from the original destination to the original source (read from
	// the quote, which holds the original header, before the packet is rewritten).
	struct ipv6hdr ip = {};
	ip.version = 6;
	ip.payload_len = bpf_htons(sizeof(icmp));
	ip.nexthdr = PROTO_ICMPV6;
	ip.hop_limit = 64;
	__builtin_memcpy(&ip.saddr, icmp.quote + __builtin_offsetof(struct ipv6hdr, daddr), 16);
	__builtin_memcpy(&ip.daddr, icmp.quote + __builtin_offsetof(struct ipv6hdr, saddr), 16);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(struct ipv6hdr) + sizeof(icmp), 0) < 0)
		return -1;
	struct ethhdr neth = {};
	__builtin_memcpy(neth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(neth.h_source, eth.h_dest, ETH_ALEN);
	neth.h_proto = bpf_htons(ETH_P_IPV6);
	// The pseudo-header: the addresses (contiguous in the header), then length and next header.
	struct {
		__be32 len;
		__be32 next;
	} pseudo = {.len = bpf_htonl(sizeof(icmp)), .next = bpf_htonl(PROTO_ICMPV6)};
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)&ip.saddr, 32, 0);
	sum = bpf_csum_diff(0, 0, (__be32 *)&pseudo, sizeof(pseudo), (__u32)sum);
	sum = bpf_csum_diff(0, 0, (__be32 *)&icmp, sizeof(icmp), (__u32)sum);
	icmp.check = csum_fold((__u32)sum);
	if (bpf_skb_store_bytes(skb, 0, &neth, sizeof(neth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(ip), &icmp, sizeof(icmp), 0) < 0)
		return -1;
	skb->mark = response_mark();
	if (!skb->mark)
		return -1;
	return bpf_redirect(skb->ifindex, dir == DIR_EGRESS ? 0 : BPF_F_INGRESS);
}

static __always_inline int drop(struct __sk_buff *skb, struct endpoint_info *ep, struct pkt *p, __u8 dir, __u8 reason,
				__u32 peer_id, __u32 rule_id)
{
	count(reason, skb->len);
	emit(skb, ep, p, dir, VERDICT_DENY, reason, peer_id, rule_id);
	if ((reason == REASON_DROP_DENY || reason == REASON_DROP_DEFAULT_DENY) && !p->is_frag) {
		__u32 zero = 0;
		struct config *cfg = bpf_map_lookup_elem(&settings, &zero);
		if (cfg && (cfg->flags & CFG_DENY_ICMP)) {
			int ret = p->family == FAMILY_V4 ? deny_response_v4(skb, dir) : deny_response_v6(skb, dir);
			if (ret >= 0)
				return ret;
		}
	}
	return TC_ACT_SHOT;
}
