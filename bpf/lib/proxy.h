// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The L7 redirect: handing a flow to the node's proxy.

#pragma once

#include "common.h"
#include "config.h"
#include "conntrack.h"
#include "endpoint_addrs.h"
#include "endpoints.h"
#include "events.h"
#include "parse.h"
#include "policy.h"
#include "proxy_syns.h"

// A packet handed to the proxy carries MARK_TO_PROXY under MARK_TO_PROXY_MASK: the node's routing
// rule for it delivers it locally (a table with local 0.0.0.0/0 and ::/0 on lo), as Cilium's
// 0x200/0xf00 does, so that the socket bpf_sk_assign chose receives it.
#define MARK_TO_PROXY 0x200
#define MARK_TO_PROXY_MASK 0xf00

// The port of each L7 parser's proxy listener (on 127.0.0.1 and ::1 of the node); 0: no proxy.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, L7_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_ports SEC(".maps");

// The L7 redirect. bpf_sk_assign works only at tc ingress: a flow is handed to the proxy where
// its packets enter the node's stack (a pod's host veth ingress, the uplink's ingress), to the
// proxy's socket of that flow when there is one, else to the parser's listener on 127.0.0.1 or
// ::1; MARK_TO_PROXY makes the node deliver it locally. A datagram (UDP, the DNS proxy's only)
// always goes to the listener, unchanged: the proxy reads its original destination
// (IP_RECVORIGDSTADDR) and answers from it.

static __always_inline void mark_to_proxy(struct __sk_buff *skb)
{
	skb->mark = (skb->mark & ~MARK_TO_PROXY_MASK) | MARK_TO_PROXY;
}

#define PE_NONE 0     // the node has no socket of the tuple
#define PE_ASSIGNED 1 // the packet goes to the node's socket of its tuple
#define PE_TIMEWAIT 2 // the node's socket of the tuple is in TIME_WAIT: not assigned

// proxy_established assigns a TCP packet to the node's socket of its own tuple: one only the
// proxy can own (a transparent socket with a pod's address). One lookup says which PE_ it is.
static __attribute__((noinline)) int proxy_established(struct __sk_buff *skb, struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	__u32 len = own_tuple(p, &t);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return PE_NONE;
	int ret = PE_NONE;
	if (sk->state == BPF_TCP_TIME_WAIT)
		ret = PE_TIMEWAIT;
	else if (sk->state != BPF_TCP_LISTEN && bpf_sk_assign(skb, sk, 0) == 0)
		ret = PE_ASSIGNED;
	bpf_sk_release(sk);
	if (ret == PE_ASSIGNED)
		mark_to_proxy(skb);
	return ret;
}

// proxy_answer_udp assigns a UDP datagram to the L7 proxy's upstream socket of its tuple: the
// socket the proxy sent a pod's query from (IP_TRANSPARENT, bound to the pod's address and port,
// connected to the server, SO_MARK the proxy's mark). Only that socket: the lookup matched its
// bound address and port, and its peer's when it is connected (the kernel's UDP lookup), but
// it also finds sockets that are not connected, and other processes' of the node.
static __attribute__((noinline)) int proxy_answer_udp(struct __sk_buff *skb, struct pkt *p)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!cfg || !cfg->proxy_mark)
		return PE_NONE;
	__u32 mark = cfg->proxy_mark;
	struct bpf_sock_tuple t = {};
	__u32 len = own_tuple(p, &t);
	struct bpf_sock *sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return PE_NONE;
	int own = sk->mark == mark && sk->dst_port != 0 && sk->dst_port == p->sport;
	int ret = own && bpf_sk_assign(skb, sk, 0) == 0 ? PE_ASSIGNED : PE_NONE;
	bpf_sk_release(sk);
	if (ret == PE_ASSIGNED)
		mark_to_proxy(skb);
	return ret;
}

// udp_redirected says whether a UDP datagram from another node to a pod of this node answers a
// flow of the pod's that the L7 proxy carries (the pod's egress entry of the flow is
// CT_REDIRECT): the answer is the proxy's to see.
static __attribute__((noinline)) int udp_redirected(struct endpoint_info *ep, struct pkt *p)
{
	struct ct_key k;
	ct_fill(&k, ep->ep_id, DIR_EGRESS, p->family, p->proto, p->daddr, p->saddr, p->dport, p->sport);
	struct ct_value *cv = ct_live(&k, ct_now());
	return cv && (cv->flags & CT_REDIRECT) && !(cv->flags & CT_REVOKED);
}

// listener_tuple is the tuple of a packet from p's source to the proxy's listener on port:
// 127.0.0.1 or ::1.
static __always_inline __u32 listener_tuple(struct pkt *p, struct bpf_sock_tuple *t, __u32 port)
{
	__u32 len = own_tuple(p, t);
	if (p->family == FAMILY_V4) {
		t->ipv4.daddr = bpf_htonl(0x7f000001);
		t->ipv4.dport = bpf_htons((__u16)port);
	} else {
		__builtin_memset(t->ipv6.daddr, 0, 16);
		t->ipv6.daddr[3] = bpf_htonl(1);
		t->ipv6.dport = bpf_htons((__u16)port);
	}
	return len;
}

// proxy_listener_udp hands a datagram to the proxy's UDP socket on port. Returns 0, or
// REASON_DROP_PROXY_DOWN when none listens.
static __attribute__((noinline)) int proxy_listener_udp(struct __sk_buff *skb, struct pkt *p, __u32 port)
{
	struct bpf_sock_tuple t = {};
	__u32 len = listener_tuple(p, &t, port);
	struct bpf_sock *sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return REASON_DROP_PROXY_DOWN;
	int ok = bpf_sk_assign(skb, sk, 0) == 0;
	bpf_sk_release(sk);
	if (!ok)
		return REASON_DROP_PROXY_DOWN;
	mark_to_proxy(skb);
	return 0;
}

// proxy_redirect hands a packet to the proxy of parser l7: TCP to any parser's, UDP to the DNS
// proxy's only. Returns 0, or the drop reason: no proxy configured, or its listener (for a new
// TCP flow: a SYN; for every datagram) or its socket of the flow is not there. Fails closed: a
// flow an L7 rule governs never goes on unjudged.
static __attribute__((noinline)) int proxy_redirect(struct __sk_buff *skb, struct pkt *p, __u32 l7)
{
	int udp = p->proto == PROTO_UDP && l7 == L7_DNS;
	if ((p->proto != PROTO_TCP && !udp) || p->is_frag)
		return REASON_DROP_NO_PROXY;
	__u32 *port = bpf_map_lookup_elem(&proxy_ports, &l7);
	if (!port || *port == 0 || *port > 65535)
		return REASON_DROP_NO_PROXY;
	if (udp)
		return proxy_listener_udp(skb, p, *port);
	int est = proxy_established(skb, p);
	if (est == PE_ASSIGNED)
		return 0;
	if (!(p->tcp_flags & 0x02) || (p->tcp_flags & 0x10)) // only a SYN opens a flow at the listener
		return REASON_DROP_PROXY_DOWN;
	int timewait = est == PE_TIMEWAIT;
	struct bpf_sock_tuple t = {};
	__u32 len = listener_tuple(p, &t, *port);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return REASON_DROP_PROXY_DOWN;
	int ok = sk->state == BPF_TCP_LISTEN;
	if (ok && timewait) {
		// The listener is up: the kernel's TIME_WAIT processing hands the SYN to it through
		// proxy_lookup.
		bpf_sk_release(sk);
		struct proxy_syn_key k = {.family = p->family, .sport = p->sport, .dport = p->dport};
		__builtin_memcpy(k.saddr, p->saddr, 16);
		__builtin_memcpy(k.daddr, p->daddr, 16);
		struct proxy_syn v = {.parser = l7, .at = bpf_ktime_get_ns()};
		// From a pod of this node: its own share (tc_from_uplink's packets are other nodes').
		__u32 ifindex = skb->ifindex;
		void *syns = local_endpoint_ifindex(p->family, p->saddr) == ifindex ? proxy_syns_of(ifindex) : (void *)&proxy_syns;
		if (bpf_map_update_elem(syns, &k, &v, BPF_ANY))
			return REASON_DROP_PROXY_DOWN;
		mark_to_proxy(skb);
		return 0;
	}
	ok = ok && bpf_sk_assign(skb, sk, 0) == 0;
	bpf_sk_release(sk);
	if (!ok)
		return REASON_DROP_PROXY_DOWN;
	mark_to_proxy(skb);
	return 0;
}

// ingress_l7 is the parser an L7 rule of the destination's ingress puts a TCP flow to a pod of
// this node in (0 when none does): its proxy judges the flow before it reaches the pod. The
// destination's L3/L4 verdict itself is left to its tc_to_pod.
static __attribute__((noinline)) __u32 ingress_l7(struct endpoint_info *dst, __u32 src_identity, struct pkt *p,
						  __u32 *rule)
{
	if (!dst || (dst->flags & EP_FAIL_CLOSED) || !(dst->flags & EP_HAS_L7_INGRESS))
		return 0; // the lookups only for a destination with L7 rules
	struct policy_value best = {};
	best.rule_id = 0xffffffff;
	policy_lookup(dst, DIR_INGRESS, src_identity, p, &best);
	if (best.verdict != VERDICT_PROXY)
		return 0;
	*rule = best.rule_id;
	return best.l7 ? best.l7 : L7_HTTP;
}
