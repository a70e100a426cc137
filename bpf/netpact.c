//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// netpact's datapath: one program per direction on the host side of each pod's veth.
// tc_from_pod (tcx ingress of the host veth) sees what the pod sends: the pod's egress.
// tc_to_pod (tcx egress of the host veth) sees what the pod receives: the pod's ingress.
//
// Every packet in a flow's original direction is checked against the endpoint's policy, so
// revoking an allow cuts open connections; replies and related ICMP errors pass by conntrack.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define FAMILY_V4 4
#define FAMILY_V6 6

#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define PROTO_SCTP 132

// Flags of an endpoint (endpoint_info.flags); bpf2go generates them for the Go side.
enum endpoint_flag {
	EP_ENFORCE_INGRESS = 1,
	EP_ENFORCE_EGRESS = 2,
	EP_HAS_PREFIX_POLICY = 4, // the endpoint has address-matched (ipBlock) entries
	EP_FAIL_CLOSED = 8,       // not programmed (yet, or its policy could not be written): drop all
	EP_HAS_L7 = 16,           // some entry of the endpoint is a proxy verdict (either direction)
	EP_HAS_L7_INGRESS = 32,   // some ingress entry is: flows to it may go to the proxy
};
const enum endpoint_flag *unused_endpoint_flag __attribute__((unused));

#define VERDICT_ALLOW 1
#define VERDICT_DENY 2
#define VERDICT_PROXY 3

#define CFG_DENY_ICMP 1
#define CFG_SOCKET_LB 2 // the socket programs translate Service frontends on this node

#define CT_SEEN_REPLY 1
#define CT_CLOSING 2
#define CT_REVOKED 4 // policy dropped the flow: no reply passes, and it is not an evicted flow
#define CT_REDIRECT 8 // the flow goes to the node's L7 proxy (ct_value.l7 names the parser)
#define CT_PROXY 16   // the flow is the L7 proxy's own connection: its replies go back to the proxy

// L7 parsers (policy_value.l7, ct_value.l7): which of the node's proxies a redirect goes to.
enum l7_parser {
	L7_NONE = 0,
	L7_HTTP = 1,
	L7_KAFKA = 2,
	L7_DNS = 3,
	L7_MAX = 4,
};
const enum l7_parser *unused_l7_parser __attribute__((unused));

// A packet handed to the proxy carries MARK_TO_PROXY under MARK_TO_PROXY_MASK: the node's routing
// rule for it delivers it locally (a table with local 0.0.0.0/0 and ::/0 on lo), as Cilium's
// 0x200/0xf00 does, so that the socket bpf_sk_assign chose receives it.
#define MARK_TO_PROXY 0x200
#define MARK_TO_PROXY_MASK 0xf00

#define NS_PER_SEC 1000000000ULL

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
	REASON_MAX = 21,
};

// Emits enum reason into BTF, so that bpf2go generates its constants for the Go side.
const enum reason *unused_reason __attribute__((unused));

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

struct ipcache_key {
	__u32 prefixlen;
	__u32 family;
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;
	__u32 pad;
};

// policy_key is matched by longest prefix: everything up to and including proto exactly, the
// port (network byte order) by prefix, so that a port range is a few entries.
struct policy_key {
	__u32 prefixlen;
	__u32 ep_id;
	__u32 identity;
	__u8 direction;
	__u8 proto;
	__be16 port;
};

struct policy_value {
	__u32 rule_id;
	__u8 verdict;
	__u8 pad;
	__u16 l7; // enum l7_parser of a proxy verdict: the proxy_ports slot the flow goes to
};

// prefix_policy_key matches peers by address (Kubernetes ipBlock): exact endpoint, direction,
// protocol and an aligned block of ports (port_bits low bits wildcarded, port the block's first
// port), then the address by prefix. A port range is a few blocks, never one entry per port;
// the lookup tries each block size the endpoint uses (endpoint_info.prefix_port_bits).
struct prefix_policy_key {
	__u32 prefixlen;
	__u32 ep_id;
	__u8 direction;
	__u8 proto;
	__u8 port_bits;
	__u8 pad;
	__be16 port;
	__u16 pad2;
	__u32 family;
	__u8 addr[16];
};

struct ct_key {
	__u32 ep_id;
	__u8 direction;
	__u8 family;
	__u8 proto;
	__u8 pad;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
};

struct ct_value {
	__u64 last_seen;
	__u32 rule_id;
	__u32 flags;
	__u32 policy_rev; // the policy revision the flow was last checked against
	__u32 l7;         // CT_REDIRECT: the parser whose proxy the flow goes to
};

struct frag_key {
	__u8 family;
	__u8 proto;
	__u16 pad;
	__u32 id;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct frag_value {
	__be16 sport;
	__be16 dport;
	__u8 proto; // the first fragment's transport protocol (IPv6: after its extension headers)
	__u8 pad[3];
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
	__u8 pad[3];
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u32 service; // the Service frontend a pod's socket was translated from (egress), or 0
	__u32 pad2;
};

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
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); // ifindex of the host-side veth
	__type(value, struct endpoint_info);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct prefix_policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} prefix_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fragments SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} settings SEC(".maps");

// Service translation's maps (the programs are at the end of the file).
#define SVC_ECONNREFUSED 111

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

struct backend_key {
	__u32 id;
	__u32 slot;
};

struct backend_value {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad;
};

struct revnat_key {
	__u64 cookie; // the socket's
	__u8 addr[16]; // the backend's
	__be16 port;
	__u8 family;
	__u8 pad[5];
};

struct revnat_value {
	__u8 addr[16]; // the frontend's
	__be16 port;
	__u16 pad;
	__u32 id;
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
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct revnat_key);
	__type(value, struct revnat_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_revnat SEC(".maps");

// A pod's own share of reverse translations: an LRU per pod network namespace (the node agent
// adds one per endpoint), so that a pod that makes many translated sockets evicts only its own
// entries. sock_revnat holds those of sockets in no endpoint's namespace (the node's).
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u64); // the pod's network namespace cookie
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LRU_HASH);
		__type(key, struct revnat_key);
		__type(value, struct revnat_value);
		__uint(max_entries, 4096);
	});
} sock_revnat_pod SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct svc_flow_key);
	__type(value, __u32); // the service frontend's id
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} svc_flows SEC(".maps");

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

// The port of each L7 parser's proxy listener (on 127.0.0.1 and ::1 of the node); 0: no proxy.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, L7_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_ports SEC(".maps");

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

// local_endpoint_ifindex is the host-side veth of the node's endpoint with this address, or 0.
static __always_inline __u32 local_endpoint_ifindex(__u32 family, const __u8 *addr)
{
	struct endpoint_addr_key ak = {.family = family};
	__builtin_memcpy(ak.addr, addr, 16);
	__u32 *ifindex = bpf_map_lookup_elem(&endpoint_addrs, &ak);
	return ifindex ? *ifindex : 0;
}

// proxy_syns_of is the proxy_syns share of the endpoint on ifindex, or the shared map.
static __always_inline void *proxy_syns_of(__u32 ifindex)
{
	void *m = bpf_map_lookup_elem(&proxy_syns_pod, &ifindex);
	return m ? m : (void *)&proxy_syns;
}

// The proxy's listeners for proxy_lookup, at parser * 2 (127.0.0.1) and parser * 2 + 1 (::1).
// Sockets of the enforcer's process: not pinned; a closed listener leaves the map.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, L7_MAX * 2);
} proxy_listeners SEC(".maps");

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

// Unused values that make bpf2go emit Go mirrors of the event and key types.
const struct flow_event *unused_flow_event __attribute__((unused));


static __always_inline void count(__u32 reason, __u32 len)
{
	struct counter *c = bpf_map_lookup_elem(&counters, &reason);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __attribute__((noinline)) int event_allowed(struct endpoint_info *ep)
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
	__u64 now = bpf_ktime_get_ns();
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

// to_service_frontend says whether the packet goes to a Service frontend's address and port.
static __attribute__((noinline)) int to_service_frontend(struct pkt *p)
{
	if (p->proto != PROTO_TCP && p->proto != PROTO_UDP)
		return 0;
	struct svc_key sk = {.port = p->dport, .proto = p->proto, .family = p->family};
	__builtin_memcpy(sk.addr, p->daddr, 16);
	return bpf_map_lookup_elem(&services, &sk) != 0;
}

static __always_inline void emit(struct __sk_buff *skb, struct endpoint_info *ep, struct pkt *p, __u8 dir,
				 __u8 verdict, __u8 reason, __u32 peer_id, __u32 rule_id)
{
	if (!event_allowed(ep))
		return;
	__u32 ifindex = skb->ifindex;
	__u32 service = dir == DIR_EGRESS ? service_of(ifindex, p) : 0;
	struct flow_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return;
	e->timestamp = bpf_ktime_get_ns();
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
	e->pad[0] = 0;
	e->pad[1] = 0;
	e->pad[2] = 0;
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->service = service;
	e->pad2 = 0;
	bpf_ringbuf_submit(e, 0);
}

// parse_l4 reads ports (or the ICMP type) at off. Returns 0, or -1 for a truncated header.
static __always_inline int parse_l4(struct __sk_buff *skb, struct pkt *p, __u32 off)
{
	p->l4_off = off;
	if (p->later_frag)
		return 0;
	switch (p->proto) {
	case PROTO_TCP: {
		__u8 hdr[14];
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return -1;
		__builtin_memcpy(&p->sport, &hdr[0], 2);
		__builtin_memcpy(&p->dport, &hdr[2], 2);
		p->tcp_flags = hdr[13];
		return 0;
	}
	case PROTO_UDP:
	case PROTO_SCTP: {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		p->sport = ports[0];
		p->dport = ports[1];
		return 0;
	}
	case PROTO_ICMP:
	case PROTO_ICMPV6: {
		__u8 hdr[6]; // type, code, checksum, echo identifier
		if (bpf_skb_load_bytes(skb, off, hdr, 1) < 0)
			return -1;
		__u8 type = hdr[0];
		p->icmp_type = type;
		// Policy keys carry the ICMP type as the port; conntrack keys an echo by its identifier
		// too (in the source port's place), as Linux conntrack does.
		p->dport = bpf_htons(type);
		p->sport = 0;
		if (type == 8 || type == 0 || type == 128 || type == 129) {
			if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
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
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
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
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		__builtin_memcpy(p->inner_saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->inner_daddr, &ip6.daddr, 16);
		p->inner_proto = ip6.nexthdr;
		l4 = off + sizeof(ip6);
	}
	if (p->inner_proto == PROTO_TCP || p->inner_proto == PROTO_UDP || p->inner_proto == PROTO_SCTP) {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return -1;
		p->inner_sport = ports[0];
		p->inner_dport = ports[1];
	} else if (p->inner_proto == PROTO_ICMP || p->inner_proto == PROTO_ICMPV6) {
		__u8 hdr[6];
		if (bpf_skb_load_bytes(skb, l4, hdr, sizeof(hdr)) < 0)
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
// address in saddr), PARSE_OTHER for any other frame, PARSE_MALFORMED for a malformed one.
static __attribute__((noinline)) int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct ethhdr eth;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return PARSE_MALFORMED;
	__builtin_memset(p->saddr, 0, 16);
	__builtin_memset(p->daddr, 0, 16);
	if (eth.h_proto == bpf_htons(ETH_P_ARP)) {
		// ptype, hlen, plen; then the sender protocol address, 14 bytes into the ARP header
		// (read straight into the scratch map: the stack has no room left).
		__u32 types;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 2, &types, 4) < 0)
			return PARSE_MALFORMED;
		if (types != bpf_htonl(0x08000604))
			return PARSE_OTHER; // not Ethernet/IPv4 ARP: nothing a pod needs
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 14, p->saddr, 4) < 0)
			return PARSE_MALFORMED;
		return PARSE_ARP;
	}
	if (eth.h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
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
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
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
				__u8 ext[2];
				if (bpf_skb_load_bytes(skb, off, ext, 2) < 0)
					return -1;
				next = ext[0];
				off += (ext[1] + 1) * 8;
			} else if (next == 44) { // fragment
				__u8 fh[8];
				if (bpf_skb_load_bytes(skb, off, fh, 8) < 0)
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

static __always_inline void ct_fill(struct ct_key *k, __u32 ep_id, __u8 dir, __u8 family, __u8 proto,
				    const __u8 *saddr, const __u8 *daddr, __be16 sport, __be16 dport)
{
	k->ep_id = ep_id;
	k->direction = dir;
	k->family = family;
	k->proto = proto;
	k->pad = 0;
	__builtin_memcpy(k->saddr, saddr, 16);
	__builtin_memcpy(k->daddr, daddr, 16);
	k->sport = sport;
	k->dport = dport;
}

static __always_inline __u64 ct_timeout(__u8 proto, __u32 flags)
{
	if (proto == PROTO_TCP) {
		if (flags & CT_CLOSING)
			return 10 * NS_PER_SEC;
		if (flags & CT_SEEN_REPLY)
			return 21600 * NS_PER_SEC;
		return 60 * NS_PER_SEC;
	}
	return 60 * NS_PER_SEC;
}

// ct_live returns the entry for k if it exists and has not timed out.
static __always_inline struct ct_value *ct_live(struct ct_key *k, __u64 now)
{
	struct ct_value *v = bpf_map_lookup_elem(&conntrack, k);
	if (!v)
		return 0;
	if (now - v->last_seen > ct_timeout(k->proto, v->flags)) {
		bpf_map_delete_elem(&conntrack, k);
		return 0;
	}
	return v;
}

static __always_inline int rank(__u8 verdict)
{
	if (verdict == VERDICT_DENY)
		return 3;
	if (verdict == VERDICT_ALLOW)
		return 2;
	if (verdict == VERDICT_PROXY)
		return 1;
	return 0;
}

static __always_inline void consider(struct policy_value *v, struct policy_value *best)
{
	if (!v)
		return;
	if (rank(v->verdict) > rank(best->verdict) ||
	    (v->verdict == best->verdict && v->rule_id < best->rule_id))
		*best = *v;
}

// policy_lookup finds the strongest entry for a peer: deny beats allow beats proxy, ties go to
// the lowest rule id; the same order the engine's Lookup uses.
// policy_lookup finds the strongest entry for the packet (a function of its own: its keys do
// not fit on handle's stack next to the deny responses').
static __attribute__((noinline)) int policy_lookup(struct endpoint_info *ep, __u8 dir, __u32 peer_id, struct pkt *p,
						   struct policy_value *best)
{
	__u32 ep_id = ep->ep_id;
	int prefixes = ep->flags & EP_HAS_PREFIX_POLICY;
	__u32 port_bits = ep->prefix_port_bits;
	const __u8 *peer_addr = dir == DIR_EGRESS ? p->daddr : p->saddr;
	struct policy_key k = {};
	k.ep_id = ep_id;
	k.direction = dir;
	k.prefixlen = 8 * (sizeof(k) - sizeof(k.prefixlen));
	k.port = p->dport;

	k.identity = peer_id;
	k.proto = p->proto;
	consider(bpf_map_lookup_elem(&policy, &k), best);
	k.proto = 0;
	k.port = 0;
	consider(bpf_map_lookup_elem(&policy, &k), best);
	k.identity = 0;
	consider(bpf_map_lookup_elem(&policy, &k), best);
	k.proto = p->proto;
	k.port = p->dport;
	consider(bpf_map_lookup_elem(&policy, &k), best);
	if (!prefixes)
		return 0;

	struct prefix_policy_key pk = {};
	pk.prefixlen = 8 * (sizeof(pk) - sizeof(pk.prefixlen));
	pk.ep_id = ep_id;
	pk.direction = dir;
	pk.family = p->family;
	__builtin_memcpy(pk.addr, peer_addr, 16);
	pk.proto = p->proto;
	__u16 port = bpf_ntohs(p->dport);
#pragma unroll
	for (int b = 0; b <= 16; b++) {
		if (!(port_bits & (1u << b)))
			continue;
		pk.port_bits = b;
		pk.port = bpf_htons(b == 16 ? 0 : port & (__u16)(0xffff << b));
		consider(bpf_map_lookup_elem(&prefix_policy, &pk), best);
	}
	// Any protocol: one entry per prefix.
	pk.proto = 0;
	pk.port_bits = 16;
	pk.port = 0;
	consider(bpf_map_lookup_elem(&prefix_policy, &pk), best);
	return 0;
}

static __always_inline __u32 ipcache_identity(__u8 family, const __u8 *addr)
{
	struct ipcache_key k = {};
	k.family = family;
	__builtin_memcpy(k.addr, addr, 16);
	k.prefixlen = family == FAMILY_V4 ? 32 + 32 : 32 + 128;
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache, &k);
	if (v)
		return v->identity;
	return family == FAMILY_V4 ? 9 : 10; // world-ipv4, world-ipv6
}

// The kernel's conntrack, read through its kfuncs: only the fields netpact reads, relocated to
// the running kernel's layout (CO-RE).
union nf_inet_addr {
	__u32 all[4];
	__be32 ip;
	__be32 ip6[4];
} __attribute__((preserve_access_index));
struct nf_conntrack_man {
	union nf_inet_addr u3;
} __attribute__((preserve_access_index));
struct nf_conntrack_tuple {
	struct nf_conntrack_man src;
} __attribute__((preserve_access_index));
struct nf_conntrack_tuple_hash {
	struct nf_conntrack_tuple tuple;
} __attribute__((preserve_access_index));
struct nf_conn {
	unsigned long status;
	struct nf_conntrack_tuple_hash tuplehash[2];
} __attribute__((preserve_access_index));
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};
extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple_sz,
					 struct bpf_ct_opts *opts, __u32 opts_sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

// ct_scratch holds a conntrack lookup's arguments and result: off the 512-byte stack.
struct ct_scratch {
	struct bpf_sock_tuple t;
	struct bpf_ct_opts opts;
	__u8 client[16];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ct_scratch);
	__uint(max_entries, 1);
} ct_scratch SEC(".maps");

#define IPS_SRC_NAT (1 << 4)
#define ID_HOST 1

// nat_client_identity: a packet to a pod from a node address may be Service traffic the host
// translated (kube-proxy's NodePort, LoadBalancer or external IP: DNAT, then masquerade to the
// node's address). Judged as the host, the host allowance would let every client in. The
// kernel's conntrack entry for the flow, found by the tuple of its reply (this packet's, turned
// round), was source-NATed: its original source is the client, and its identity is returned.
// 0: no such entry (the host's own connection, such as the kubelet's probes).
static __always_inline __u32 nat_client_identity(struct __sk_buff *skb, const struct pkt *p)
{
	__u32 zero = 0;
	struct ct_scratch *cs = bpf_map_lookup_elem(&ct_scratch, &zero);
	if (!cs)
		return 0;
	__builtin_memset(cs, 0, sizeof(*cs));
	__u32 size;
	if (p->family == FAMILY_V4) {
		__builtin_memcpy(&cs->t.ipv4.saddr, p->daddr, 4);
		__builtin_memcpy(&cs->t.ipv4.daddr, p->saddr, 4);
		cs->t.ipv4.sport = p->dport;
		cs->t.ipv4.dport = p->sport;
		size = sizeof(cs->t.ipv4);
	} else {
		__builtin_memcpy(cs->t.ipv6.saddr, p->daddr, 16);
		__builtin_memcpy(cs->t.ipv6.daddr, p->saddr, 16);
		cs->t.ipv6.sport = p->dport;
		cs->t.ipv6.dport = p->sport;
		size = sizeof(cs->t.ipv6);
	}
	cs->opts.netns_id = -1;
	cs->opts.l4proto = p->proto;
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, &cs->t, size, &cs->opts, sizeof(cs->opts));
	if (!ct)
		return 0;
	__u8 *client = cs->client;
	int natted = (ct->status & IPS_SRC_NAT) != 0;
	if (natted) {
		if (p->family == FAMILY_V4) {
			__be32 a = ct->tuplehash[0].tuple.src.u3.ip;
			__builtin_memcpy(client, &a, 4);
		} else {
			for (int i = 0; i < 4; i++) {
				__be32 a = ct->tuplehash[0].tuple.src.u3.ip6[i];
				__builtin_memcpy(client + 4 * i, &a, 4);
			}
		}
	}
	bpf_ct_release(ct);
	if (!natted)
		return 0;
	// The node itself, through its own NodePort (loopback before the masquerade): the host.
	if ((p->family == FAMILY_V4 && client[0] == 127) ||
	    (p->family == FAMILY_V6 && client[15] == 1 && (client[0] | client[1] | client[2] | client[3] | client[4] |
	     client[5] | client[6] | client[7] | client[8] | client[9] | client[10] | client[11] | client[12] |
	     client[13] | client[14]) == 0))
		return ID_HOST;
	return ipcache_identity(p->family, client);
}

static __always_inline int bytes_equal(const __u8 *a, const __u8 *b, int n)
{
	__u8 diff = 0;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (i < n)
			diff |= a[i] ^ b[i];
	}
	return diff == 0;
}

static __always_inline int is_zero(const __u8 *a, int n)
{
	__u8 any = 0;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (i < n)
			any |= a[i];
	}
	return any == 0;
}

static __always_inline int is_link_local(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
}

// source_is_pod: the packet's source is the pod's own address of its family (a pod without an
// address of that family has none).
static __always_inline int source_is_pod(struct endpoint_info *ep, struct pkt *p)
{
	if (p->family == FAMILY_V4)
		return !is_zero(ep->ipv4, 4) && bytes_equal(p->saddr, ep->ipv4, 4);
	return !is_zero(ep->ipv6, 16) && bytes_equal(p->saddr, ep->ipv6, 16);
}

// nd_link_scoped: IPv6 neighbour discovery (133-137) or MLD (130-132, 143) that stays on the
// pod's link: hop limit 255 for ND and 1 for MLD (RFC 4861 section 6.1, RFC 3810 section 5),
// destination link-local or ff02::/16 (towards the pod also its own address: the host's
// unicast neighbour probes), and from the pod a source that is its own address, link-local, or
// :: for duplicate address detection and MLDv2 reports. Such packets pass without policy, as the
// link needs them; every other ICMPv6 message of these types goes through policy.
static __attribute__((noinline)) int nd_link_scoped(struct endpoint_info *ep, struct pkt *p, __u8 dir)
{
	if (p->family != FAMILY_V6 || p->proto != PROTO_ICMPV6 || p->is_frag)
		return 0;
	__u8 t = p->icmp_type;
	int nd = t >= 133 && t <= 137;
	int mld = (t >= 130 && t <= 132) || t == 143;
	if (!nd && !mld)
		return 0;
	if (p->hop_limit != (nd ? 255 : 1))
		return 0;
	const __u8 *d = p->daddr;
	int dst_ok = is_link_local(d) || (d[0] == 0xff && d[1] == 0x02);
	if (!dst_ok && dir == DIR_INGRESS)
		dst_ok = bytes_equal(d, ep->ipv6, 16);
	if (!dst_ok)
		return 0;
	if (dir == DIR_INGRESS)
		return 1;
	if (source_is_pod(ep, p) || is_link_local(p->saddr))
		return 1;
	return (t == 135 || t == 143) && is_zero(p->saddr, 16);
}

// arp_ok: ARP towards a pod always passes (the host answers for the gateway and resolves the
// pod); from a pod only with the pod's own IPv4 address as sender.
static __always_inline int arp_ok(struct endpoint_info *ep, struct pkt *p, __u8 dir)
{
	if (dir == DIR_INGRESS)
		return 1;
	return !is_zero(ep->ipv4, 4) && bytes_equal(p->saddr, ep->ipv4, 4);
}

// Related ICMP errors are at most this long (IP header included): what RFC 1812 and RFC 4443
// let an error carry, so that a "related" packet cannot be a channel for bulk data.
#define RELATED_MAX_V4 576
#define RELATED_MAX_V6 1280

// Packets the datapath wrote itself (ICMP deny responses) carry config.response_mark and pass
// the other program once.
static __always_inline __u32 response_mark(void)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&settings, &zero);
	return cfg ? cfg->response_mark : 0;
}

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

// frag_record remembers the ports of a first fragment that passed, for its later fragments
// (which carry none). Called for every first fragment that passes: by policy and as a reply.
static __attribute__((noinline)) int frag_record(struct pkt *p)
{
	if (!p->is_frag || p->later_frag)
		return 0;
	struct frag_key fk = {};
	fk.family = p->family;
	fk.proto = p->frag_proto;
	fk.id = p->frag_id;
	__builtin_memcpy(fk.saddr, p->saddr, 16);
	__builtin_memcpy(fk.daddr, p->daddr, 16);
	struct frag_value fv = {.sport = p->sport, .dport = p->dport, .proto = p->proto};
	bpf_map_update_elem(&fragments, &fk, &fv, BPF_ANY);
	return 0;
}

// ct_revoke marks a tracked flow dropped by policy (kept, not deleted: a flow that vanished
// from the map can then only have been evicted).
static __always_inline void ct_revoke(struct ct_key *k)
{
	struct ct_value *cv = bpf_map_lookup_elem(&conntrack, k);
	if (cv)
		cv->flags |= CT_REVOKED;
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

// udp_connected_reply: a UDP datagram to a pod that a socket of the pod connected to its sender
// receives (connect(2) on both addresses and ports, as resolvers and most UDP clients do) answers
// a flow the pod opened. A socket bound but not connected says nothing about who spoke first.
static __attribute__((noinline)) int udp_connected_reply(struct __sk_buff *skb, struct pkt *p)
{
	__u32 ifindex = skb->ifindex;
	__s32 *nsid = bpf_map_lookup_elem(&endpoint_nsid, &ifindex);
	if (!nsid || *nsid < 0)
		return 0;
	struct bpf_sock_tuple t = {};
	__u32 len = own_tuple(p, &t);
	struct bpf_sock *sk = bpf_sk_lookup_udp(skb, &t, len, (__u32)*nsid, 0);
	if (!sk)
		return 0;
	int ok = sk->dst_port == p->sport;
	if (p->family == FAMILY_V4)
		ok = ok && sk->dst_ip4 == t.ipv4.saddr;
	else
		ok = ok && sk->dst_ip6[0] == t.ipv6.saddr[0] && sk->dst_ip6[1] == t.ipv6.saddr[1] &&
		     sk->dst_ip6[2] == t.ipv6.saddr[2] && sk->dst_ip6[3] == t.ipv6.saddr[3];
	bpf_sk_release(sk);
	return ok;
}

// recover_reply: a packet with no conntrack entry may be a reply of a flow whose entry the
// node's LRU evicted (another pod opened many flows): a mid-stream TCP packet (ACK, no SYN), or
// (udp_reply) a UDP datagram to a pod's socket connected to its sender. Rather than drop it (it
// was about to be dropped by default deny, with no entry of its own, not even a revoked one),
// check the policy of the flow it would answer (the other direction, ports swapped) as it stands
// now; if the policy allows that flow, re-create its entry and pass the packet as its reply: the
// traffic is then what the policy allows for a flow opened the other way. how is the direction,
// with RECOVER_UDP when udp_connected_reply said yes (a BPF function takes five arguments).
// Returns 1 when it did; p is swapped back when it did not.
#define RECOVER_UDP 0x100
static __attribute__((noinline)) int recover_reply(struct endpoint_info *ep, __u32 how, __u32 peer_id, struct pkt *p,
						   __u32 rev)
{
	__u32 dir = how & 1;
	int udp_reply = (how & RECOVER_UDP) != 0;
	if (p->is_frag)
		return 0;
	if (p->proto == PROTO_TCP) {
		if (!(p->tcp_flags & 0x10) || (p->tcp_flags & 0x02))
			return 0;
	} else if (p->proto != PROTO_UDP || !udp_reply) {
		return 0;
	}
	__u8 tmp[16];
	__be16 port;
	__builtin_memcpy(tmp, p->saddr, 16);
	__builtin_memcpy(p->saddr, p->daddr, 16);
	__builtin_memcpy(p->daddr, tmp, 16);
	port = p->sport;
	p->sport = p->dport;
	p->dport = port;
	__u8 odir = dir ^ 1;
	struct policy_value best = {};
	best.rule_id = 0xffffffff;
	policy_lookup(ep, odir, peer_id, p, &best);
	__u32 enforced = ep->flags & (odir == DIR_EGRESS ? EP_ENFORCE_EGRESS : EP_ENFORCE_INGRESS);
	if (best.verdict == VERDICT_ALLOW || (best.verdict == 0 && !enforced)) {
		struct ct_key k;
		ct_fill(&k, ep->ep_id, odir, p->family, p->proto, p->saddr, p->daddr, p->sport, p->dport);
		struct ct_value nv = {.last_seen = bpf_ktime_get_ns(), .rule_id = best.verdict ? best.rule_id : 0,
				      .flags = CT_SEEN_REPLY, .policy_rev = rev};
		bpf_map_update_elem(&conntrack, &k, &nv, BPF_ANY);
		return 1;
	}
	__builtin_memcpy(tmp, p->saddr, 16);
	__builtin_memcpy(p->saddr, p->daddr, 16);
	__builtin_memcpy(p->daddr, tmp, 16);
	port = p->sport;
	p->sport = p->dport;
	p->dport = port;
	return 0;
}


// ---------------------------------------------------------------------------------------------
// The L7 redirect. bpf_sk_assign works only at tc ingress: a flow is handed to the proxy where
// its packets enter the node's stack (a pod's host veth ingress, the uplink's ingress), to the
// proxy's socket of that flow when there is one, else to the parser's listener on 127.0.0.1 or
// ::1; MARK_TO_PROXY makes the node deliver it locally.

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

// proxy_redirect hands a TCP packet to the proxy of parser l7. Returns 0, or the drop reason:
// no proxy configured, or its listener (for a new flow: a SYN) or its socket of the flow is not
// there. Fails closed: a flow an L7 rule governs never goes on unjudged.
static __attribute__((noinline)) int proxy_redirect(struct __sk_buff *skb, struct pkt *p, __u32 l7)
{
	if (p->proto != PROTO_TCP || p->is_frag)
		return REASON_DROP_NO_PROXY;
	__u32 *port = bpf_map_lookup_elem(&proxy_ports, &l7);
	if (!port || *port == 0 || *port > 65535)
		return REASON_DROP_NO_PROXY;
	int est = proxy_established(skb, p);
	if (est == PE_ASSIGNED)
		return 0;
	if (!(p->tcp_flags & 0x02) || (p->tcp_flags & 0x10)) // only a SYN opens a flow at the listener
		return REASON_DROP_PROXY_DOWN;
	int timewait = est == PE_TIMEWAIT;
	struct bpf_sock_tuple t = {};
	__u32 len = own_tuple(p, &t);
	if (p->family == FAMILY_V4) {
		t.ipv4.daddr = bpf_htonl(0x7f000001);
		t.ipv4.dport = bpf_htons((__u16)*port);
	} else {
		__builtin_memset(t.ipv6.daddr, 0, 16);
		t.ipv6.daddr[3] = bpf_htonl(1);
		t.ipv6.dport = bpf_htons((__u16)*port);
	}
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

// proxy_lookup runs in the node's socket lookups for a listener (sk_lookup): for a pod's SYN that
// tc delivered past a TIME_WAIT socket of its tuple (proxy_syns), the proxy's listener. Any
// other lookup goes on as the kernel does it.
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

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	__u32 zero = 0;
	struct pkt *p = bpf_map_lookup_elem(&scratch, &zero);
	if (!p)
		return TC_ACT_SHOT;
	__builtin_memset(p, 0, sizeof(*p));
	__u32 ifindex = skb->ifindex;
	__u32 mark = response_mark();
	if (mark && skb->mark == mark) {
		skb->mark = 0;
		return TC_ACT_OK;
	}
	struct endpoint_info *ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	int kind = parse(skb, p);
	if (!ep)
		return drop(skb, 0, p, dir, REASON_DROP_NOT_ENDPOINT, 0, 0);
	if (ep->flags & EP_FAIL_CLOSED)
		return drop(skb, ep, p, dir, REASON_DROP_FAIL_CLOSED, 0, 0);
	// A pod needs IPv4, IPv6 and ARP, untagged. Anything else could be untagged or decapsulated
	// by the kernel after this program and routed unchecked: dropped, in both directions.
	if (skb->vlan_present || kind == PARSE_OTHER)
		return drop(skb, ep, p, dir, REASON_DROP_ETHERTYPE, 0, 0);
	if (kind == PARSE_MALFORMED)
		return drop(skb, ep, p, dir, REASON_DROP_MALFORMED, 0, 0);
	if (kind == PARSE_ARP) {
		if (!arp_ok(ep, p, dir))
			return drop(skb, ep, p, dir, REASON_DROP_SPOOF, 0, 0);
		count(REASON_FORWARD_ARP, skb->len);
		return TC_ACT_OK;
	}
	int nd = nd_link_scoped(ep, p, dir);
	if (dir == DIR_EGRESS && !nd && !source_is_pod(ep, p))
		return drop(skb, ep, p, dir, REASON_DROP_SPOOF, 0, 0);
	if (nd) {
		count(REASON_FORWARD_ND, skb->len);
		return TC_ACT_OK;
	}

	const __u8 *peer_addr = dir == DIR_EGRESS ? p->daddr : p->saddr;
	__u32 peer_id = ipcache_identity(p->family, peer_addr);

	// Later fragments carry no ports: take them from the first fragment, if it was allowed.
	if (p->later_frag) {
		struct frag_key fk = {};
		fk.family = p->family;
		fk.proto = p->frag_proto;
		fk.id = p->frag_id;
		__builtin_memcpy(fk.saddr, p->saddr, 16);
		__builtin_memcpy(fk.daddr, p->daddr, 16);
		struct frag_value *fv = bpf_map_lookup_elem(&fragments, &fk);
		if (!fv)
			return drop(skb, ep, p, dir, REASON_DROP_FRAG_NO_FIRST, peer_id, 0);
		p->sport = fv->sport;
		p->dport = fv->dport;
		p->proto = fv->proto;
	}

	__u64 now = bpf_ktime_get_ns();
	struct ct_key k;
	// A reply: the flow was opened in the other direction of this endpoint.
	ct_fill(&k, ep->ep_id, dir ^ 1, p->family, p->proto, p->daddr, p->saddr, p->dport, p->sport);
	if (p->proto == PROTO_ICMP || p->proto == PROTO_ICMPV6) {
		// ICMP echo replies answer requests tracked with type 8/128 and the echo id; errors
		// are related to the flow whose header they carry.
		if (p->icmp_error) {
			if (parse_inner(skb, p) < 0)
				return drop(skb, ep, p, dir, REASON_DROP_MALFORMED, peer_id, 0);
			// Related only when it goes back to the quoted packet's source (as Linux conntrack
			// checks) and, from a pod, which is an end host and not a router, comes from the
			// quoted packet's destination; and only when small. Anything else is judged by policy.
			__u32 cap = p->family == FAMILY_V4 ? RELATED_MAX_V4 : RELATED_MAX_V6;
			int related = skb->len <= ETH_HLEN + cap && bytes_equal(p->daddr, p->inner_saddr, 16);
			if (dir == DIR_EGRESS)
				related = related && bytes_equal(p->saddr, p->inner_daddr, 16);
			ct_fill(&k, ep->ep_id, dir ^ 1, p->family, p->inner_proto, p->inner_saddr, p->inner_daddr,
				p->inner_sport, p->inner_dport);
			struct ct_value *rel = ct_live(&k, now);
			if (related && rel && !(rel->flags & CT_REVOKED)) {
				count(REASON_FORWARD_RELATED, skb->len);
				return TC_ACT_OK;
			}
		} else if (p->icmp_type == 0 || p->icmp_type == 129) {
			__be16 req = bpf_htons(p->icmp_type == 0 ? 8 : 128);
			ct_fill(&k, ep->ep_id, dir ^ 1, p->family, p->proto, p->daddr, p->saddr, p->sport, req);
			struct ct_value *cv = ct_live(&k, now);
			if (cv && !(cv->flags & CT_REVOKED)) {
				cv->last_seen = now;
				frag_record(p);
				count(REASON_FORWARD_REPLY, skb->len);
				return TC_ACT_OK;
			}
		}
	} else {
		struct ct_value *cv = ct_live(&k, now);
		if (cv && !(cv->flags & CT_REVOKED)) {
			cv->last_seen = now;
			cv->flags |= CT_SEEN_REPLY;
			if (p->tcp_flags & 0x05) // FIN or RST
				cv->flags |= CT_CLOSING;
			// A pod answering the L7 proxy's connection: back to the proxy's socket, not on
			// to the address the proxy borrowed.
			if ((cv->flags & CT_PROXY) && dir == DIR_EGRESS && proxy_established(skb, p) != PE_ASSIGNED)
				return drop(skb, ep, p, dir, REASON_DROP_PROXY_DOWN, peer_id, cv->rule_id);
			frag_record(p);
			count(REASON_FORWARD_REPLY, skb->len);
			return TC_ACT_OK;
		}
	}

	// Original direction: checked against every policy revision, so a revoked allow cuts an open
	// flow at its next packet. A flow already checked at the current revision skips the lookups.
	__u32 rev = 0;
	struct config *cfg = bpf_map_lookup_elem(&settings, &zero);
	if (cfg)
		rev = cfg->policy_rev;
	ct_fill(&k, ep->ep_id, dir, p->family, p->proto, p->saddr, p->daddr, p->sport, p->dport);
	// The L7 proxy's own packets towards a pod carry its mark (SO_MARK; a pod's marks do not
	// cross its veth).
	__u32 pmark = cfg ? cfg->proxy_mark : 0;
	int from_proxy = dir == DIR_INGRESS && pmark && skb->mark == pmark;
	int had_entry = 0;
	// An open TCP flow (not a new SYN) checked again at a new revision: the proxy's parser when
	// the proxy carries it, or that it goes past the proxy.
	__u32 prev_l7 = 0;
	int prev_direct = 0;
	if (!p->is_frag) {
		struct ct_value *fast = ct_live(&k, now);
		had_entry = fast != 0;
		if (fast && fast->policy_rev == rev && !(fast->flags & CT_REVOKED)) {
			if ((fast->flags & CT_PROXY) && !from_proxy)
				return drop(skb, ep, p, dir, REASON_DROP_PROXY_BYPASS, peer_id, fast->rule_id);
			if (fast->flags & CT_REDIRECT) {
				int why = proxy_redirect(skb, p, fast->l7);
				if (why)
					return drop(skb, ep, p, dir, why, peer_id, fast->rule_id);
			}
			fast->last_seen = now;
			if (p->tcp_flags & 0x05)
				fast->flags |= CT_CLOSING;
			count(fast->flags & CT_REDIRECT ? REASON_FORWARD_PROXY
				  : fast->rule_id ? REASON_FORWARD_POLICY : REASON_FORWARD_UNENFORCED, skb->len);
			return TC_ACT_OK;
		}
		if (fast && !(fast->flags & CT_REVOKED) && p->proto == PROTO_TCP &&
		    !((p->tcp_flags & 0x02) && !(p->tcp_flags & 0x10))) {
			if (fast->flags & CT_REDIRECT)
				prev_l7 = fast->l7;
			else
				prev_direct = 1;
		}
	}
	// From a pod to a Service frontend: its socket should have been translated. A packet that was
	// not (a raw socket) would be DNATed by kube-proxy after this program, to a backend policy
	// never saw: dropped.
	if (dir == DIR_EGRESS && cfg && (cfg->flags & CFG_SOCKET_LB) && to_service_frontend(p)) {
		ct_revoke(&k);
		return drop(skb, ep, p, dir, REASON_DROP_SERVICE_UNTRANSLATED, peer_id, 0);
	}
	// From a node address: Service traffic the host translated and masqueraded is judged as its
	// client, not as the host.
	if (dir == DIR_INGRESS && peer_id == ID_HOST && !from_proxy && !p->is_frag &&
	    (p->proto == PROTO_TCP || p->proto == PROTO_UDP)) {
		__u32 client = nat_client_identity(skb, p);
		if (client)
			peer_id = client;
	}
	struct policy_value best = {};
	best.rule_id = 0xffffffff;
	policy_lookup(ep, dir, peer_id, p, &best);
	__u32 rule = best.verdict ? best.rule_id : 0;
	__u32 enforced = ep->flags & (dir == DIR_EGRESS ? EP_ENFORCE_EGRESS : EP_ENFORCE_INGRESS);
	if (best.verdict == VERDICT_DENY) {
		ct_revoke(&k);
		return drop(skb, ep, p, dir, REASON_DROP_DENY, peer_id, rule);
	}
	// An L7 rule: the source's egress hands the flow to the proxy; the destination's ingress lets
	// through only what the proxy sends (it applied the rule).
	__u32 l7 = 0;
	if (best.verdict == VERDICT_PROXY) {
		if (dir == DIR_INGRESS && !from_proxy) {
			ct_revoke(&k);
			return drop(skb, ep, p, dir, REASON_DROP_PROXY_BYPASS, peer_id, rule);
		}
		if (dir == DIR_EGRESS)
			l7 = best.l7 ? best.l7 : L7_HTTP;
	}
	if (best.verdict == 0 && enforced) {
		// No entry at all, not even a revoked one: this may be a reply whose flow's entry the
		// LRU evicted.
		int udp_reply = !had_entry && !p->is_frag && p->proto == PROTO_UDP && dir == DIR_INGRESS &&
				udp_connected_reply(skb, p);
		if (!had_entry && !p->is_frag && recover_reply(ep, dir | (udp_reply ? RECOVER_UDP : 0), peer_id, p, rev)) {
			count(REASON_FORWARD_REPLY_RECOVERED, skb->len);
			return TC_ACT_OK;
		}
		ct_revoke(&k);
		return drop(skb, ep, p, dir, REASON_DROP_DEFAULT_DENY, peer_id, 0);
	}

	// A TCP flow to a pod of this node whose ingress has an L7 rule for it: the proxy judges it
	// here, where the packet enters the node (tc_to_pod cannot hand it over).
	if (!l7 && dir == DIR_EGRESS && p->proto == PROTO_TCP) {
		__u32 irule = 0;
		l7 = ingress_l7(local_endpoint(p->family, p->daddr), ep->identity, p, &irule);
		if (l7)
			rule = irule;
	}
	if (dir == DIR_EGRESS && p->proto == PROTO_TCP) {
		if (!l7 && prev_l7) {
			// Its L7 rules are gone but the flow is still allowed: the proxy keeps carrying it
			// (it holds both halves) and judges its requests by the policy of now.
			l7 = prev_l7;
		} else if (l7 && prev_direct) {
			// An L7 rule now governs a flow that went past the proxy: the proxy cannot take over
			// an open connection, and the rule cannot be bypassed. Cut, and said so.
			ct_revoke(&k);
			return drop(skb, ep, p, dir, REASON_DROP_PROXY_MIDFLOW, peer_id, rule);
		}
	}
	if (l7) {
		int why = proxy_redirect(skb, p, l7);
		if (why) {
			ct_revoke(&k);
			return drop(skb, ep, p, dir, why, peer_id, rule);
		}
	}

	frag_record(p);

	__u8 reason = l7 ? REASON_FORWARD_PROXY : best.verdict ? REASON_FORWARD_POLICY : REASON_FORWARD_UNENFORCED;
	__u32 ctf = (l7 ? CT_REDIRECT : 0) | (from_proxy ? CT_PROXY : 0);
	struct ct_value *cv = bpf_map_lookup_elem(&conntrack, &k);
	if (cv) {
		cv->last_seen = now;
		cv->rule_id = rule;
		cv->policy_rev = rev;
		cv->l7 = l7;
		cv->flags = (cv->flags & ~(CT_REVOKED | CT_REDIRECT | CT_PROXY)) | ctf;
		if (p->tcp_flags & 0x05)
			cv->flags |= CT_CLOSING;
	} else {
		struct ct_value nv = {.last_seen = now, .rule_id = rule, .policy_rev = rev, .flags = ctf, .l7 = l7};
		bpf_map_update_elem(&conntrack, &k, &nv, BPF_ANY);
		emit(skb, ep, p, dir, VERDICT_ALLOW, reason, peer_id, rule);
	}
	count(reason, skb->len);
	return TC_ACT_OK;
}

SEC("tc")
int tc_from_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

SEC("tc")
int tc_to_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

// tc_from_uplink (tcx ingress of the node's uplink) hands the L7 proxy the TCP flows from other
// nodes that a local pod's ingress L7 rules govern, and the replies to the proxy's own
// connections. Everything else passes untouched: policy is the endpoints' programs' business.
SEC("tc")
int tc_from_uplink(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct pkt *p = bpf_map_lookup_elem(&scratch, &zero);
	if (!p)
		return TC_ACT_OK;
	__builtin_memset(p, 0, sizeof(*p));
	if (skb->vlan_present || parse(skb, p) != PARSE_IP || p->proto != PROTO_TCP || p->is_frag)
		return TC_ACT_OK;
	struct endpoint_info *ep = local_endpoint(p->family, p->daddr);
	// Only a pod with L7 rules has proxied flows: the socket lookup is for those alone.
	if (!ep || !(ep->flags & EP_HAS_L7))
		return TC_ACT_OK;
	if (proxy_established(skb, p) == PE_ASSIGNED)
		return TC_ACT_OK;
	if (!(p->tcp_flags & 0x02) || (p->tcp_flags & 0x10))
		return TC_ACT_OK; // not a new flow: the pod's tc_to_pod judges it
	__u32 peer_id = ipcache_identity(p->family, p->saddr);
	__u32 rule = 0;
	__u32 l7 = ingress_l7(ep, peer_id, p, &rule);
	if (!l7)
		return TC_ACT_OK;
	int why = proxy_redirect(skb, p, l7);
	if (why)
		return drop(skb, ep, p, DIR_INGRESS, why, peer_id, rule);
	count(REASON_FORWARD_PROXY, skb->len);
	emit(skb, ep, p, DIR_INGRESS, VERDICT_ALLOW, REASON_FORWARD_PROXY, peer_id, rule);
	return TC_ACT_OK;
}

// ---------------------------------------------------------------------------------------------
// Service translation at the socket (cgroup sock_addr hooks on the node's cgroup root): a pod's
// connect() or sendto() to a ClusterIP is rewritten to one of the service's backends before any
// packet exists, so tc_from_pod checks egress policy against the backend pod and port, and
// kube-proxy's DNAT never sees the ClusterIP. recvmsg and getpeername translate back, so a
// resolver sees its DNS answer come from the ClusterIP it asked.

// sock_addr_get reads the destination (or, for recvmsg, the source) address of a sock_addr
// context: family FAMILY_V4 for AF_INET and for v4-mapped addresses of an AF_INET6 socket.
static __always_inline int sock_addr_get(struct bpf_sock_addr *ctx, int v6, __u8 *addr, __u8 *family, int *mapped)
{
	__builtin_memset(addr, 0, 16);
	*mapped = 0;
	if (!v6) {
		__u32 a = ctx->user_ip4;
		__builtin_memcpy(addr, &a, 4);
		*family = FAMILY_V4;
		return 0;
	}
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
	if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff)) {
		__builtin_memcpy(addr, &w3, 4);
		*family = FAMILY_V4;
		*mapped = 1;
		return 0;
	}
	__builtin_memcpy(addr, &w0, 4);
	__builtin_memcpy(addr + 4, &w1, 4);
	__builtin_memcpy(addr + 8, &w2, 4);
	__builtin_memcpy(addr + 12, &w3, 4);
	*family = FAMILY_V6;
	return 0;
}

static __always_inline void sock_addr_set(struct bpf_sock_addr *ctx, int v6, const __u8 *addr, __u8 family, int mapped,
					  __be16 port)
{
	__u32 w[4];
	__builtin_memcpy(w, addr, 16);
	if (!v6) {
		ctx->user_ip4 = w[0];
	} else if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = w[0];
	} else {
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
	}
	ctx->user_port = (__u32)port;
}

static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol == IPPROTO_TCP)
		return PROTO_TCP;
	if (ctx->protocol == IPPROTO_UDP)
		return PROTO_UDP;
	return 0;
}

// revnat_of is the reverse translations of the pod whose network namespace is netns, or the
// shared map.
static __always_inline void *revnat_of(__u64 netns)
{
	void *m = bpf_map_lookup_elem(&sock_revnat_pod, &netns);
	return m ? m : (void *)&sock_revnat;
}

// sock_xlate_fwd translates a destination that is a service frontend to one of its backends.
static __always_inline int sock_xlate_fwd(struct bpf_sock_addr *ctx, int v6, int udp_only)
{
	__u8 proto = sock_proto(ctx);
	if (!proto || (udp_only && proto != PROTO_UDP))
		return 1;
	struct svc_key sk = {};
	int mapped;
	sock_addr_get(ctx, v6, sk.addr, &sk.family, &mapped);
	sk.port = (__be16)ctx->user_port;
	sk.proto = proto;
	struct svc_value *svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc)
		return 1;
	if (svc->count == 0) {
		// No ready backend: refused at once, as kube-proxy's reject rule does.
		bpf_set_retval(-SVC_ECONNREFUSED);
		return 0;
	}
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 pick = proto == PROTO_UDP ? (__u32)(cookie ^ (cookie >> 32)) * 2654435761u : bpf_get_prandom_u32();
	struct backend_key bk = {.id = svc->id, .slot = pick % svc->count + 1};
	struct backend_value *be = bpf_map_lookup_elem(&backends, &bk);
	if (!be || be->family != sk.family) {
		// The service is being rewritten under us: refuse rather than guess.
		bpf_set_retval(-SVC_ECONNREFUSED);
		return 0;
	}
	struct revnat_key rk = {.cookie = cookie, .port = be->port, .family = be->family};
	__builtin_memcpy(rk.addr, be->addr, 16);
	struct revnat_value rv = {.port = sk.port, .id = svc->id};
	__builtin_memcpy(rv.addr, sk.addr, 16);
	__u64 netns = bpf_get_netns_cookie(ctx);
	bpf_map_update_elem(revnat_of(netns), &rk, &rv, BPF_ANY);
	struct svc_flow_key fk = {.netns = netns, .port = be->port, .proto = proto, .family = be->family};
	__builtin_memcpy(fk.addr, be->addr, 16);
	__u32 id = svc->id;
	bpf_map_update_elem(&svc_flows, &fk, &id, BPF_ANY);
	sock_addr_set(ctx, v6, be->addr, be->family, mapped, be->port);
	return 1;
}

// sock_xlate_rev shows a backend's address as the service frontend the socket asked for.
static __always_inline int sock_xlate_rev(struct bpf_sock_addr *ctx, int v6)
{
	struct revnat_key rk = {.cookie = bpf_get_socket_cookie(ctx)};
	int mapped;
	sock_addr_get(ctx, v6, rk.addr, &rk.family, &mapped);
	rk.port = (__be16)ctx->user_port;
	void *revnat = revnat_of(bpf_get_netns_cookie(ctx));
	struct revnat_value *rv = bpf_map_lookup_elem(revnat, &rk);
	if (!rv)
		return 1;
	struct svc_key sk = {.port = rv->port, .proto = sock_proto(ctx), .family = rk.family};
	__builtin_memcpy(sk.addr, rv->addr, 16);
	struct svc_value *svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc || svc->id != rv->id) {
		bpf_map_delete_elem(revnat, &rk); // the service is gone or another one now
		return 1;
	}
	sock_addr_set(ctx, v6, rv->addr, rk.family, mapped, rv->port);
	return 1;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx) { return sock_xlate_fwd(ctx, 0, 0); }

SEC("cgroup/connect6")
int sock_connect6(struct bpf_sock_addr *ctx) { return sock_xlate_fwd(ctx, 1, 0); }

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx) { return sock_xlate_fwd(ctx, 0, 1); }

SEC("cgroup/sendmsg6")
int sock_sendmsg6(struct bpf_sock_addr *ctx) { return sock_xlate_fwd(ctx, 1, 1); }

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx) { return sock_xlate_rev(ctx, 0); }

SEC("cgroup/recvmsg6")
int sock_recvmsg6(struct bpf_sock_addr *ctx) { return sock_xlate_rev(ctx, 1); }

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx) { return sock_xlate_rev(ctx, 0); }

SEC("cgroup/getpeername6")
int sock_getpeername6(struct bpf_sock_addr *ctx) { return sock_xlate_rev(ctx, 1); }
