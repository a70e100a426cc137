// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The node's settings, which the node agent writes and every tc program reads.

#pragma once

#include "common.h"

#define CFG_DENY_ICMP 1
#define CFG_SOCKET_LB 2 // the socket programs translate Service frontends on this node

struct config {
	__u64 events_per_sec;
	__u32 flags;
	// policy_rev changes whenever the policy or ipcache maps change; a tracked flow checked at
	// the current revision needs no new lookup.
	__u32 policy_rev;
	// response_mark marks the ICMP deny responses the programs write (random, set by the
	// loader): they pass the other program once. Not a constant, so that a host process that
	// may set SO_MARK but not read BPF maps cannot forge it.
	__u32 response_mark;
	// proxy_mark is the SO_MARK of the L7 proxy's upstream sockets (random, high 16 bits only, so
	// it meets neither MARK_TO_PROXY nor kube-proxy's bits): a pod's ingress lets such a packet
	// through an entry whose L7 rules the proxy has applied. 0: no proxy.
	__u32 proxy_mark;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} settings SEC(".maps");

// Packets the datapath wrote itself (ICMP deny responses) carry config.response_mark and pass
// the other program once.
static __always_inline __u32 response_mark(void)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&settings, &zero);
	return cfg ? cfg->response_mark : 0;
}
