//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// netpact's datapath: one program per direction on the host side of each pod's veth.
// tc_from_pod (tcx ingress of the host veth) sees what the pod sends: the pod's egress.
// tc_to_pod (tcx egress of the host veth) sees what the pod receives: the pod's ingress.
//
// Every packet in a flow's original direction is checked against the endpoint's policy, so
// revoking an allow cuts open connections; replies and related ICMP errors pass by conntrack.

#include "lib/common.h"
#include "lib/config.h"
#include "lib/conntrack.h"
#include "lib/drop.h"
#include "lib/endpoints.h"
#include "lib/events.h"
#include "lib/ipcache.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/proxy.h"
#include "lib/spoof.h"

char __license[] SEC("license") = "Dual BSD/GPL";

// Unused values that make bpf2go emit Go mirrors of the enums and of the event type.
const enum endpoint_flag *unused_endpoint_flag __attribute__((unused));
const enum l7_parser *unused_l7_parser __attribute__((unused));
const enum reason *unused_reason __attribute__((unused));
const struct flow_event *unused_flow_event __attribute__((unused));

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
