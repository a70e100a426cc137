// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// What every object of the datapath uses: the kernel's headers, the constants of directions,
// families, protocols and verdicts, the enums the Go side mirrors, and byte comparisons.

#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

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
	EP_HAS_AUDIT = 64,        // some entry is a deny rule of a policy in audit mode (DIR_AUDIT keys)
	EP_AUDIT_INGRESS = 128,   // ingress default deny is audited: only audit-mode policies enforce it
	EP_AUDIT_EGRESS = 256,    // egress default deny is audited
};

#define VERDICT_ALLOW 1
#define VERDICT_DENY 2
#define VERDICT_PROXY 3
// VERDICT_AUDIT is a flow event's verdict only: traffic a policy in audit mode would drop, passed.
#define VERDICT_AUDIT 4

// DIR_AUDIT marks the policy keys of the deny rules of policies in audit mode: their own key
// space in the same maps (direction | DIR_AUDIT), looked up only for endpoints with EP_HAS_AUDIT.
#define DIR_AUDIT 2

// L7 parsers (policy_value.l7, ct_value.l7): which of the node's proxies a redirect goes to.
enum l7_parser {
	L7_NONE = 0,
	L7_HTTP = 1,
	L7_KAFKA = 2,
	L7_DNS = 3,
	L7_MAX = 4,
};

#define NS_PER_SEC 1000000000ULL

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
