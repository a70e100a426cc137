// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Who a peer is: the ipcache (address prefix -> identity), and the client behind the host's
// NAT, read from the kernel's conntrack.

#pragma once

#include "common.h"
#include "parse.h"

struct ipcache_key {
	__u32 prefixlen;
	__u32 family;
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

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

// peer_identity is the identity of a packet's other end: its destination for egress (what a pod
// sends), its source for ingress. Looked up only where a packet needs it, past conntrack.
static __attribute__((noinline)) __u32 peer_identity(struct pkt *p, __u32 dir)
{
	return ipcache_identity(p->family, dir == DIR_EGRESS ? p->daddr : p->saddr);
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
