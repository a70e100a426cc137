// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The SYNs tc delivered past a TIME_WAIT socket, for proxy_lookup: shared by the tc programs
// (which write them) and proxy_lookup (which takes them).

#pragma once

#include "common.h"

// A pod's SYN handed to the L7 proxy that meets a TIME_WAIT socket of the node with its tuple
// (the proxy closed that connection first, as a server does): tc does not hand it to the listener
// itself (the TIME_WAIT socket would keep its handshake from completing) but only delivers it to
// the node; the kernel's TIME_WAIT processing takes the SYN and looks up a listener for the
// pod's destination, and proxy_lookup (sk_lookup) names the proxy's, for the tuples tc put here.
struct proxy_syn_key {
	__u32 family;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
};

struct proxy_syn {
	__u32 parser;
	__u32 pad;
	__u64 at; // bpf_ktime_get_ns when tc delivered the SYN
};

// An entry is taken by the lookup, or is good for PROXY_SYN_NS: a retransmitted SYN is judged
// again and writes it anew.
#define PROXY_SYN_NS 2000000000ULL

// Not pinned (an entry lives PROXY_SYN_NS, and the node agent makes the pods' shares anew): the
// lookup object is handed the tc object's maps when it is loaded.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct proxy_syn_key);
	__type(value, struct proxy_syn);
	__uint(max_entries, 4096);
} proxy_syns SEC(".maps");

// A pod's own share of proxy_syns: an LRU per endpoint (the node agent adds one per endpoint),
// so that a pod whose SYNs write many entries evicts only its own. proxy_syns holds the SYNs of
// other nodes' pods.
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32); // ifindex of the endpoint's host-side veth
	__uint(max_entries, 4096);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LRU_HASH);
		__type(key, struct proxy_syn_key);
		__type(value, struct proxy_syn);
		__uint(max_entries, 256);
	});
} proxy_syns_pod SEC(".maps");

// proxy_syns_of is the proxy_syns share of the endpoint on ifindex, or the shared map.
static __always_inline void *proxy_syns_of(__u32 ifindex)
{
	void *m = bpf_map_lookup_elem(&proxy_syns_pod, &ifindex);
	return m ? m : (void *)&proxy_syns;
}
