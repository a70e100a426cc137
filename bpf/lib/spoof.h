// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Anti-spoofing: what a pod may send as itself, and the link-local traffic that passes
// without policy.

#pragma once

#include "common.h"
#include "endpoints.h"
#include "parse.h"

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
