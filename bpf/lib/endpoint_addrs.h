// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The node's endpoints by address: shared by the tc programs and proxy_lookup.

#pragma once

#include "common.h"

// The node's endpoints by address, for the ingress L7 redirect where a packet enters the node.
struct endpoint_addr_key {
	__u32 family;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_addr_key);
	__type(value, __u32); // ifindex of the endpoint's host-side veth
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoint_addrs SEC(".maps");

// local_endpoint_ifindex is the host-side veth of the node's endpoint with this address, or 0.
static __always_inline __u32 local_endpoint_ifindex(__u32 family, const __u8 *addr)
{
	struct endpoint_addr_key ak = {.family = family};
	__builtin_memcpy(ak.addr, addr, 16);
	__u32 *ifindex = bpf_map_lookup_elem(&endpoint_addrs, &ak);
	return ifindex ? *ifindex : 0;
}
