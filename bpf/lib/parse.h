// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The parser: what a packet is, read into a per-CPU scratch map.

#pragma once

#include "common.h"
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

// pkt is what the parser learns about a packet.
struct pkt {
	__u8 family;
	__u8 proto;
	__u8 is_frag;    // part of a fragmented datagram
	__u8 later_frag; // a fragment other than the first
	__u8 frag_proto; // IPv4 protocol, or the next header of the IPv6 fragment header: the same in every fragment
	__u32 frag_id;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport; // ICMP: type in the high byte's place, see icmp_port
	__u8 icmp_type;
	__u8 icmp_error; // ICMP error carrying an inner header
	__u8 tcp_flags;
	__u8 hop_limit; // IPv6 hop limit, IPv4 TTL
	// The flow an ICMP error is about, as the inner header gives it.
	__u8 inner_saddr[16];
	__u8 inner_daddr[16];
	__u8 inner_proto;
	__be16 inner_sport;
	__be16 inner_dport;
	__u32 l4_off;
};

// scratch holds the packet being parsed: too large for the 512-byte stack with everything else.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct pkt);
	__uint(max_entries, 1);
} scratch SEC(".maps");

#define ALIGN2 __attribute__((aligned(2)))

// load_bytes copies len bytes at off of the packet to to: straight from the packet's linear data
// when they lie in it (the headers of nearly every packet), else with bpf_skb_load_bytes, whose
// calls cost more than all the rest of the parse. Headers start at even offsets and to is 2-byte
// aligned (ALIGN2: the verifier wants aligned stack writes), so the copy goes 16 bits at a time,
// not byte by byte; a packet at an odd address only makes the loads slower. Returns 0, or < 0
// when the packet is shorter.
static __always_inline int load_bytes(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	// Read as the verifier wants a context field read: at a constant offset of the context itself,
	// which clang, left alone, turns into one offset pointer for both fields.
	void *data, *end;
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(data) : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data)));
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(end) : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data_end)));
	// The bound on off lets the verifier check the offset pointer (it refuses one that could
	// reach past 64 KiB); a header further in is read with the helper.
	if (off < 0x8000 && data + off + len <= end) {
		const __u16 *from = data + off;
#pragma unroll
		for (__u32 i = 0; i < len / 2; i++)
			((__u16 *)to)[i] = from[i];
		if (len & 1)
			((__u8 *)to)[len - 1] = ((const __u8 *)from)[len - 1];
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

// parse_l4 reads ports (or the ICMP type) at off. Returns 0, or -1 for a truncated header.
static __always_inline int parse_l4(struct __sk_buff *skb, struct pkt *p, __u32 off)
{
	p->l4_off = off;
	if (p->later_frag)
		return 0;
	switch (p->proto) {
	case PROTO_TCP: {
		__u8 hdr[14] ALIGN2;
		if (load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return -1;
		__builtin_memcpy(&p->sport, &hdr[0], 2);
		__builtin_memcpy(&p->dport, &hdr[2], 2);
		p->tcp_flags = hdr[13];
		return 0;
	}
	case PROTO_UDP:
	case PROTO_SCTP: {
		__be16 ports[2];
		if (load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		p->sport = ports[0];
		p->dport = ports[1];
		return 0;
	}
	case PROTO_ICMP:
	case PROTO_ICMPV6: {
		__u8 hdr[6] ALIGN2; // type, code, checksum, echo identifier
		if (load_bytes(skb, off, hdr, 1) < 0)
			return -1;
		__u8 type = hdr[0];
		p->icmp_type = type;
		// Policy keys carry the ICMP type as the port; conntrack keys an echo by its identifier
		// too (in the source port's place), as Linux conntrack does.
		p->dport = bpf_htons(type);
		p->sport = 0;
		if (type == 8 || type == 0 || type == 128 || type == 129) {
			if (load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
				return -1;
			__builtin_memcpy(&p->sport, &hdr[4], 2);
		}
		if (p->proto == PROTO_ICMP)
			p->icmp_error = type == 3 || type == 11 || type == 12;
		else
			p->icmp_error = type >= 1 && type <= 4;
		return 0;
	}
	}
	return 0;
}

// parse_inner reads the header an ICMP error carries: the flow it is about.
static __always_inline int parse_inner(struct __sk_buff *skb, struct pkt *p)
{
	__u32 off = p->l4_off + 8;
	__u32 l4;
	if (p->family == FAMILY_V4) {
		struct iphdr ip;
		if (load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.ihl < 5)
			return -1;
		__builtin_memset(p->inner_saddr, 0, 16);
		__builtin_memset(p->inner_daddr, 0, 16);
		__builtin_memcpy(p->inner_saddr, &ip.saddr, 4);
		__builtin_memcpy(p->inner_daddr, &ip.daddr, 4);
		p->inner_proto = ip.protocol;
		l4 = off + ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;
		if (load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		__builtin_memcpy(p->inner_saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->inner_daddr, &ip6.daddr, 16);
		p->inner_proto = ip6.nexthdr;
		l4 = off + sizeof(ip6);
	}
	if (p->inner_proto == PROTO_TCP || p->inner_proto == PROTO_UDP || p->inner_proto == PROTO_SCTP) {
		__be16 ports[2];
		if (load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return -1;
		p->inner_sport = ports[0];
		p->inner_dport = ports[1];
	} else if (p->inner_proto == PROTO_ICMP || p->inner_proto == PROTO_ICMPV6) {
		__u8 hdr[6] ALIGN2;
		if (load_bytes(skb, l4, hdr, sizeof(hdr)) < 0)
			return -1;
		p->inner_sport = 0;
		p->inner_dport = bpf_htons(hdr[0]);
		if (hdr[0] == 8 || hdr[0] == 128)
			__builtin_memcpy(&p->inner_sport, &hdr[4], 2);
	} else {
		p->inner_sport = 0;
		p->inner_dport = 0;
	}
	return 0;
}

#define IPV6_MAX_EXT 6

#define PARSE_IP 1
#define PARSE_ARP 2
#define PARSE_OTHER 0
#define PARSE_MALFORMED -1

// parse returns PARSE_IP for an IP packet, PARSE_ARP for ARP over IPv4 (its sender protocol
// address in saddr), PARSE_OTHER for any other frame, PARSE_MALFORMED for a malformed one. p
// comes zeroed.
static __attribute__((noinline)) int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct ethhdr eth ALIGN2;
	if (load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return PARSE_MALFORMED;
	if (eth.h_proto == bpf_htons(ETH_P_ARP)) {
		// ptype, hlen, plen; then the sender protocol address, 14 bytes into the ARP header
		// (read straight into the scratch map: the stack has no room left).
		__u32 types;
		if (load_bytes(skb, ETH_HLEN + 2, &types, 4) < 0)
			return PARSE_MALFORMED;
		if (types != bpf_htonl(0x08000604))
			return PARSE_OTHER; // not Ethernet/IPv4 ARP: nothing a pod needs
		if (load_bytes(skb, ETH_HLEN + 14, p->saddr, 4) < 0)
			return PARSE_MALFORMED;
		return PARSE_ARP;
	}
	if (eth.h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.version != 4 || ip.ihl < 5)
			return -1;
		p->family = FAMILY_V4;
		p->proto = ip.protocol;
		p->frag_proto = ip.protocol;
		p->hop_limit = ip.ttl;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		__u16 frag = bpf_ntohs(ip.frag_off);
		p->is_frag = (frag & 0x3fff) != 0; // MF or an offset
		p->later_frag = (frag & 0x1fff) != 0;
		p->frag_id = bpf_ntohs(ip.id);
		return parse_l4(skb, p, ETH_HLEN + ip.ihl * 4) < 0 ? -1 : 1;
	}
	if (eth.h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return -1;
		if (ip6.version != 6)
			return -1;
		p->family = FAMILY_V6;
		p->hop_limit = ip6.hop_limit;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		__u8 next = ip6.nexthdr;
		__u32 off = ETH_HLEN + sizeof(ip6);
#pragma unroll
		for (int i = 0; i < IPV6_MAX_EXT; i++) {
			if (next == 0 || next == 43 || next == 60) { // hop-by-hop, routing, destination options
				__u8 ext[2] ALIGN2;
				if (load_bytes(skb, off, ext, 2) < 0)
					return -1;
				next = ext[0];
				off += (ext[1] + 1) * 8;
			} else if (next == 44) { // fragment
				__u8 fh[8] ALIGN2;
				if (load_bytes(skb, off, fh, 8) < 0)
					return -1;
				next = fh[0];
				__u16 offmf = ((__u16)fh[2] << 8) | fh[3];
				p->is_frag = 1;
				p->later_frag = (offmf & 0xfff8) != 0;
				p->frag_proto = next;
				p->frag_id = ((__u32)fh[4] << 24) | ((__u32)fh[5] << 16) | ((__u32)fh[6] << 8) | fh[7];
				off += 8;
				if (p->later_frag) {
					// What follows is the middle of the datagram, not headers: the
					// protocol comes from the first fragment's record.
					p->proto = next;
					p->l4_off = off;
					return 1;
				}
			} else {
				break;
			}
		}
		if (next == 0 || next == 43 || next == 60 || next == 44)
			return -1; // more extension headers than the datapath walks: refuse rather than guess
		p->proto = next;
		return parse_l4(skb, p, off) < 0 ? -1 : 1;
	}
	return PARSE_OTHER;
}

// own_tuple is the packet's own tuple, for a socket lookup.
static __always_inline __u32 own_tuple(struct pkt *p, struct bpf_sock_tuple *t)
{
	if (p->family == FAMILY_V4) {
		__builtin_memcpy(&t->ipv4.saddr, p->saddr, 4);
		__builtin_memcpy(&t->ipv4.daddr, p->daddr, 4);
		t->ipv4.sport = p->sport;
		t->ipv4.dport = p->dport;
		return sizeof(t->ipv4);
	}
	__builtin_memcpy(t->ipv6.saddr, p->saddr, 16);
	__builtin_memcpy(t->ipv6.daddr, p->daddr, 16);
	t->ipv6.sport = p->sport;
	t->ipv6.dport = p->dport;
	return sizeof(t->ipv6);
}
