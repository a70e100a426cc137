// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Service frontends and the translations pods' sockets made: shared by the socket programs
// (which translate) and the tc programs (which judge and report what was translated).

#pragma once

#include "common.h"

struct svc_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 family;
};

struct svc_value {
	__u32 id;    // the service frontend's id: backends and reverse entries are keyed by it
	__u32 count; // backends in slots 1..count; 0: no ready backend, connections are refused
};

// A translation a pod's socket made, for its flow events: keyed by the pod's network namespace
// and the backend it was sent to.
struct svc_flow_key {
	__u64 netns;
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 family;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct svc_flow_key);
	__type(value, __u32); // the service frontend's id
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} svc_flows SEC(".maps");
