//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Service translation at the socket (cgroup sock_addr hooks on the node's cgroup root): a pod's
// connect() or sendto() to a ClusterIP is rewritten to one of the service's backends before any
// packet exists, so tc_from_pod checks egress policy against the backend pod and port, and
// kube-proxy's DNAT never sees the ClusterIP. recvmsg and getpeername translate back, so a
// resolver sees its DNS answer come from the ClusterIP it asked.

#include "lib/common.h"
#include "lib/services.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define SVC_ECONNREFUSED 111

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
