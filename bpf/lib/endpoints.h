// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The node's endpoints: a pod's host-side veth, its identity, flags and addresses, and its
// network namespace.

#pragma once

#include "common.h"
#include "endpoint_addrs.h"

struct endpoint_info {
	__u32 ep_id;
	__u32 identity;
	__u32 flags;
	__u8 ipv4[4];
	__u8 ipv6[16];
	// prefix_port_bits has bit b set when a prefix_policy entry of the endpoint wildcards b
	// low port bits (b = 16: every port).
	__u32 prefix_port_bits;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); // ifindex of the host-side veth
	__type(value, struct endpoint_info);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); // ifindex of the host-side veth
	__type(value, __u64); // the pod's network namespace cookie
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoint_netns SEC(".maps");

// Each endpoint's pod network namespace as the node's namespace numbers it (its nsid): where
// tc looks up the pod's sockets.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);  // ifindex of the host-side veth
	__type(value, __s32); // the nsid of the pod's network namespace
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoint_nsid SEC(".maps");

// local_endpoint is the node's endpoint with this address, or 0.
static __always_inline struct endpoint_info *local_endpoint(__u8 family, const __u8 *addr)
{
	struct endpoint_addr_key ak = {.family = family};
	__builtin_memcpy(ak.addr, addr, 16);
	__u32 *ifindex = bpf_map_lookup_elem(&endpoint_addrs, &ak);
	if (!ifindex)
		return 0;
	return bpf_map_lookup_elem(&endpoints, ifindex);
}
