//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// proxy_lookup runs in the node's socket lookups for a listener (sk_lookup): for a pod's SYN that
// tc delivered past a TIME_WAIT socket of its tuple (proxy_syns), the proxy's listener. Any
// other lookup goes on as the kernel does it.

#include "lib/common.h"
#include "lib/endpoint_addrs.h"
#include "lib/proxy_syns.h"

char __license[] SEC("license") = "Dual BSD/GPL";

// The proxy's listeners for proxy_lookup, at parser * 2 (127.0.0.1) and parser * 2 + 1 (::1).
// Sockets of the enforcer's process: not pinned; a closed listener leaves the map.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, L7_MAX * 2);
} proxy_listeners SEC(".maps");

SEC("sk_lookup")
int proxy_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	struct proxy_syn_key k = {};
	__u32 v6 = 0;
	if (ctx->family == 2) { // AF_INET
		k.family = FAMILY_V4;
		__u32 a = ctx->remote_ip4;
		__builtin_memcpy(k.saddr, &a, 4);
		a = ctx->local_ip4;
		__builtin_memcpy(k.daddr, &a, 4);
	} else if (ctx->family == 10) { // AF_INET6
		k.family = FAMILY_V6;
		v6 = 1;
		__u32 a;
		a = ctx->remote_ip6[0];
		__builtin_memcpy(k.saddr, &a, 4);
		a = ctx->remote_ip6[1];
		__builtin_memcpy(k.saddr + 4, &a, 4);
		a = ctx->remote_ip6[2];
		__builtin_memcpy(k.saddr + 8, &a, 4);
		a = ctx->remote_ip6[3];
		__builtin_memcpy(k.saddr + 12, &a, 4);
		a = ctx->local_ip6[0];
		__builtin_memcpy(k.daddr, &a, 4);
		a = ctx->local_ip6[1];
		__builtin_memcpy(k.daddr + 4, &a, 4);
		a = ctx->local_ip6[2];
		__builtin_memcpy(k.daddr + 8, &a, 4);
		a = ctx->local_ip6[3];
		__builtin_memcpy(k.daddr + 12, &a, 4);
	} else {
		return SK_PASS;
	}
	k.sport = ctx->remote_port;
	k.dport = bpf_htons((__u16)ctx->local_port);
	// A pod of this node wrote into its own share.
	__u32 ifindex = local_endpoint_ifindex(k.family, k.saddr);
	void *syns = ifindex ? proxy_syns_of(ifindex) : (void *)&proxy_syns;
	struct proxy_syn *v = bpf_map_lookup_elem(syns, &k);
	if (!v)
		return SK_PASS;
	__u32 slot = v->parser * 2 + v6;
	__u64 age = bpf_ktime_get_ns() - v->at;
	bpf_map_delete_elem(syns, &k);
	if (age > PROXY_SYN_NS)
		return SK_PASS; // not this SYN's: the lookup goes on as the kernel does it
	struct bpf_sock *sk = bpf_map_lookup_elem(&proxy_listeners, &slot);
	if (!sk)
		return SK_DROP; // the proxy went away since tc judged the SYN: fail closed
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}
