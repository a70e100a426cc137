// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// What the tc programs report: counters by reason, and flow events, rate limited per endpoint.

#pragma once

#include "common.h"
#include "config.h"
#include "endpoints.h"
#include "parse.h"
#include "services.h"

// Reasons index the counters and label flow events.
enum reason {
	REASON_FORWARD_POLICY = 0,     // allowed by a policy entry
	REASON_FORWARD_REPLY = 1,      // reply of a tracked flow
	REASON_FORWARD_RELATED = 2,    // ICMP error about a tracked flow
	REASON_FORWARD_UNENFORCED = 3, // no entry, direction not enforced
	REASON_FORWARD_ARP = 4,        // ARP (from a pod: with the pod's own sender address)
	REASON_FORWARD_ND = 5,         // link-scoped IPv6 neighbour discovery and MLD
	REASON_DROP_DENY = 6,          // a deny rule matched
	REASON_DROP_DEFAULT_DENY = 7,  // no rule allows it
	REASON_DROP_SPOOF = 8,         // source address is not the pod's
	REASON_DROP_NOT_ENDPOINT = 9,  // interface is not a known endpoint
	REASON_DROP_MALFORMED = 10,    // truncated or invalid headers
	REASON_DROP_FRAG_NO_FIRST = 11, // later fragment without an allowed first fragment
	REASON_DROP_NO_PROXY = 12,     // an L7 rule applies but no proxy is available
	REASON_DROP_ETHERTYPE = 13,    // VLAN-tagged, or neither IPv4, IPv6 nor ARP
	REASON_DROP_FAIL_CLOSED = 14,  // the endpoint is not programmed: closed until it is
	REASON_FORWARD_REPLY_RECOVERED = 15, // reply of a flow whose entry was evicted: policy re-checked
	REASON_DROP_SERVICE_UNTRANSLATED = 16, // to a Service frontend its socket did not translate
	REASON_FORWARD_PROXY = 17,     // handed to the node's L7 proxy
	REASON_DROP_PROXY_DOWN = 18,   // an L7 rule applies but the proxy's listener (or its socket of the flow) is not up
	REASON_DROP_PROXY_BYPASS = 19, // an L7 rule applies to a packet that did not come through the proxy
	REASON_DROP_PROXY_MIDFLOW = 20, // an L7 rule now applies to a flow opened before it, past the proxy
	REASON_DROP_PROXY_SOCKET_GONE = 21, // an answer to the L7 proxy's UDP query, whose socket is gone
	REASON_AUDIT_DENY = 22,        // passed: a deny rule of a policy in audit mode matched
	REASON_AUDIT_DEFAULT_DENY = 23, // passed: no rule allows it, and only audit-mode policies enforce default deny
	REASON_MAX = 24,
};

struct flow_event {
	__u64 timestamp;
	__u32 ifindex;
	__u32 ep_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;
	__u8 direction;
	__u8 verdict;
	__u8 reason;
	__u8 proto;
	__u8 family;
	__u8 tcp_flags; // the TCP header's flags (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10...), 0 when not TCP
	__u8 pad[2];
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u32 service; // the Service frontend a pod's socket was translated from (egress), or 0
	__u32 pad2;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

// ratelimit is an endpoint's bucket of flow events on one CPU, and the events it held back.
struct ratelimit {
	__u64 last_ns;
	__u64 tokens;
	__u64 limited;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, REASON_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

// events_lost counts, per CPU, the flow events that did not fit in the events ring buffer (the
// reader fell behind): such an event is gone, and without the count its loss would be silent.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events_lost SEC(".maps");

// event_ratelimit: a bucket per endpoint (its ep_id; 0 for packets of no endpoint), so that a pod
// that makes flows faster than the rate holds back only its own events, not the node's.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__type(key, __u32);
	__type(value, struct ratelimit);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_ratelimit SEC(".maps");

// ratelimit_scratch holds a bucket lookup's key and a new bucket's value: off the stack, which
// handle() fills.
struct ratelimit_scratch {
	struct ratelimit init;
	__u32 key;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ratelimit_scratch);
	__uint(max_entries, 1);
} ratelimit_scratch SEC(".maps");

static __always_inline void count(__u32 reason, __u32 len)
{
	struct counter *c = bpf_map_lookup_elem(&counters, &reason);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __attribute__((noinline)) int event_allowed(struct endpoint_info *ep, __u64 now)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!cfg)
		return 0;
	__u64 rate = cfg->events_per_sec;
	if (rate == 0)
		return 1;
	struct ratelimit_scratch *rs = bpf_map_lookup_elem(&ratelimit_scratch, &zero);
	if (!rs)
		return 0;
	rs->key = ep ? ep->ep_id : 0;
	struct ratelimit *rl = bpf_map_lookup_elem(&event_ratelimit, &rs->key);
	if (!rl) {
		// An endpoint's first event: its bucket starts full.
		rs->init.last_ns = now;
		rs->init.tokens = rate - 1;
		rs->init.limited = 0;
		bpf_map_update_elem(&event_ratelimit, &rs->key, &rs->init, BPF_ANY);
		return 1;
	}
	__u64 elapsed = now - rl->last_ns;
	__u64 refill = elapsed >= NS_PER_SEC ? rate : elapsed * rate / NS_PER_SEC;
	if (refill > 0) {
		rl->tokens += refill;
		if (rl->tokens > rate)
			rl->tokens = rate;
		rl->last_ns = now;
	}
	if (rl->tokens == 0) {
		rl->limited++;
		return 0;
	}
	rl->tokens--;
	return 1;
}

// service_of is the Service frontend a pod's socket was translated from, for a packet it sends to
// the backend (0 when none): what the socket programs recorded for the pod's network namespace.
static __attribute__((noinline)) __u32 service_of(__u32 ifindex, struct pkt *p)
{
	__u64 *netns = bpf_map_lookup_elem(&endpoint_netns, &ifindex);
	if (!netns || !*netns)
		return 0;
	struct svc_flow_key fk = {.netns = *netns, .port = p->dport, .proto = p->proto, .family = p->family};
	__builtin_memcpy(fk.addr, p->daddr, 16);
	__u32 *id = bpf_map_lookup_elem(&svc_flows, &fk);
	return id ? *id : 0;
}

static __always_inline void emit(struct __sk_buff *skb, struct endpoint_info *ep, struct pkt *p, __u8 dir,
				 __u8 verdict, __u8 reason, __u32 peer_id, __u32 rule_id)
{
	__u64 now = bpf_ktime_get_ns();
	if (!event_allowed(ep, now))
		return;
	__u32 ifindex = skb->ifindex;
	__u32 service = dir == DIR_EGRESS ? service_of(ifindex, p) : 0;
	struct flow_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&events_lost, &zero);
		if (lost)
			(*lost)++;
		return;
	}
	e->timestamp = now;
	e->ifindex = ifindex;
	e->ep_id = ep ? ep->ep_id : 0;
	__u32 own = ep ? ep->identity : 0;
	e->src_identity = dir == DIR_EGRESS ? own : peer_id;
	e->dst_identity = dir == DIR_EGRESS ? peer_id : own;
	e->rule_id = rule_id;
	e->direction = dir;
	e->verdict = verdict;
	e->reason = reason;
	e->proto = p->proto;
	e->family = p->family;
	e->tcp_flags = p->proto == PROTO_TCP ? p->tcp_flags : 0;
	e->pad[0] = 0;
	e->pad[1] = 0;
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->service = service;
	e->pad2 = 0;
	bpf_ringbuf_submit(e, 0);
}
