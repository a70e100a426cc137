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

// What the stages of handle() learned about a packet, for the stages after them.
struct tc_state {
	struct pkt *p;
	struct endpoint_info *ep;
	struct config *cfg; // the node's settings, 0 when the map has none
	__u64 now;
	__u32 peer_id; // the identity of the other end (peer_identity): looked up past conntrack
	__u32 rev;     // the policy revision the flow is checked against
	__u32 rule;    // the rule that decided, 0 when none did
	__u32 l7;      // the parser whose proxy the flow goes to, 0 when it goes past the proxy
	// An open TCP flow (not a new SYN) checked again at a new revision: the proxy's parser when
	// the proxy carries it, or that it goes past the proxy.
	__u32 prev_l7;
	int prev_direct;
	int from_proxy; // the L7 proxy's own packet towards a pod
	int had_entry;  // the flow had a conntrack entry in its original direction, revoked or not
	struct ct_value *ct; // that entry (not looked up for a fragment), for forward() to update
	__u8 dir;
	__u8 verdict; // the verdict of the policy entry, 0 when none matched
	__u8 audit;   // REASON_AUDIT_*: a policy in audit mode would have dropped the flow, 0 when none
	__u32 audit_rule; // the audit-mode deny rule that matched, 0 for an audited default deny
};

// A stage returns STAGE_NEXT when the stages after it decide the packet, else the program's
// return value (a TC_ACT_ or a redirect's: never negative).
#define STAGE_NEXT -2

// stage_parse: the packet, parsed, comes from or goes to an endpoint that is programmed, is of a
// kind a pod needs and, from a pod, carries the pod's own address. ARP and link-scoped neighbour
// discovery pass here. Learns the node's settings, and a later fragment's ports.
static __always_inline int stage_parse(struct __sk_buff *skb, struct tc_state *s)
{
	__u8 dir = s->dir;
	__u32 zero = 0;
	struct pkt *p = bpf_map_lookup_elem(&scratch, &zero);
	if (!p)
		return TC_ACT_SHOT;
	__builtin_memset(p, 0, sizeof(*p));
	s->p = p;
	__u32 ifindex = skb->ifindex;
	struct config *cfg = bpf_map_lookup_elem(&settings, &zero);
	s->cfg = cfg;
	if (cfg)
		s->rev = cfg->policy_rev;
	__u32 mark = cfg ? cfg->response_mark : 0;
	if (mark && skb->mark == mark) {
		skb->mark = 0;
		return TC_ACT_OK;
	}
	struct endpoint_info *ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	int kind = parse(skb, p);
	if (!ep)
		return drop(skb, 0, p, dir, REASON_DROP_NOT_ENDPOINT, 0, 0);
	s->ep = ep;
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
	int nd = p->proto == PROTO_ICMPV6 && nd_link_scoped(ep, p, dir);
	if (dir == DIR_EGRESS && !nd && !source_is_pod(ep, p))
		return drop(skb, ep, p, dir, REASON_DROP_SPOOF, 0, 0);
	if (nd) {
		count(REASON_FORWARD_ND, skb->len);
		return TC_ACT_OK;
	}

	// Later fragments carry no ports: take them from the first fragment, if it was allowed.
	if (p->later_frag && !frag_restore(p))
		return drop(skb, ep, p, dir, REASON_DROP_FRAG_NO_FIRST, peer_identity(p, dir), 0);
	return STAGE_NEXT;
}

// proxy_reply judges a reply of a flow the L7 proxy is part of (flags: its conntrack entry's).
// A pod answering the proxy's own connection or query goes back to the proxy's socket, not on to
// the pod whose address the proxy borrowed; with that socket gone it is dropped, so that the pod
// never gets an answer the proxy did not see (a DNS answer it would learn names from). A datagram
// to a pod answering a flow the proxy carries must be the proxy's (its mark) for the same reason.
// Returns 0 or the drop reason.
static __always_inline int proxy_reply(struct __sk_buff *skb, struct tc_state *s, __u32 flags)
{
	struct pkt *p = s->p;
	if ((flags & CT_PROXY) && s->dir == DIR_EGRESS) {
		if (p->proto == PROTO_UDP)
			return proxy_answer_udp(skb, p) == PE_ASSIGNED ? 0 : REASON_DROP_PROXY_SOCKET_GONE;
		return proxy_established(skb, p) == PE_ASSIGNED ? 0 : REASON_DROP_PROXY_DOWN;
	}
	if ((flags & CT_REDIRECT) && s->dir == DIR_INGRESS && p->proto == PROTO_UDP && !s->from_proxy)
		return REASON_DROP_PROXY_BYPASS;
	return 0;
}

// stage_conntrack: replies and related ICMP errors of tracked flows pass, and so does a flow in
// its original direction that was checked at the current policy revision (to the proxy, when it
// goes there). Leaves k the key of the flow in its original direction.
static __always_inline int stage_conntrack(struct __sk_buff *skb, struct tc_state *s, struct ct_key *k)
{
	struct endpoint_info *ep = s->ep;
	struct pkt *p = s->p;
	__u8 dir = s->dir;
	__u64 now = ct_now();
	s->now = now;
	struct config *cfg = s->cfg;
	// The L7 proxy's own packets towards a pod carry its mark (SO_MARK; a pod's marks do not
	// cross its veth).
	__u32 pmark = cfg ? cfg->proxy_mark : 0;
	s->from_proxy = dir == DIR_INGRESS && pmark && skb->mark == pmark;
	// A reply: the flow was opened in the other direction of this endpoint.
	ct_fill(k, ep->ep_id, dir ^ 1, p->family, p->proto, p->daddr, p->saddr, p->dport, p->sport);
	if (p->proto == PROTO_ICMP || p->proto == PROTO_ICMPV6) {
		// ICMP echo replies answer requests tracked with type 8/128 and the echo id; errors
		// are related to the flow whose header they carry.
		if (p->icmp_error) {
			if (parse_inner(skb, p) < 0)
				return drop(skb, ep, p, dir, REASON_DROP_MALFORMED, peer_identity(p, dir), 0);
			// Related only when it goes back to the quoted packet's source (as Linux conntrack
			// checks) and, from a pod, which is an end host and not a router, comes from the
			// quoted packet's destination; and only when small. Anything else is judged by policy.
			__u32 cap = p->family == FAMILY_V4 ? RELATED_MAX_V4 : RELATED_MAX_V6;
			int related = skb->len <= ETH_HLEN + cap && bytes_equal(p->daddr, p->inner_saddr, 16);
			if (dir == DIR_EGRESS)
				related = related && bytes_equal(p->saddr, p->inner_daddr, 16);
			ct_fill(k, ep->ep_id, dir ^ 1, p->family, p->inner_proto, p->inner_saddr, p->inner_daddr,
				p->inner_sport, p->inner_dport);
			struct ct_value *rel = ct_live(k, now);
			if (related && rel && !(rel->flags & CT_REVOKED)) {
				count(REASON_FORWARD_RELATED, skb->len);
				return TC_ACT_OK;
			}
		} else if (p->icmp_type == 0 || p->icmp_type == 129) {
			__be16 req = bpf_htons(p->icmp_type == 0 ? 8 : 128);
			ct_fill(k, ep->ep_id, dir ^ 1, p->family, p->proto, p->daddr, p->saddr, p->sport, req);
			struct ct_value *cv = ct_live(k, now);
			if (cv && !(cv->flags & CT_REVOKED)) {
				ct_touch(cv, now);
				frag_record(p);
				count(REASON_FORWARD_REPLY, skb->len);
				return TC_ACT_OK;
			}
		}
	} else {
		struct ct_value *cv = ct_live(k, now);
		if (cv && !(cv->flags & CT_REVOKED)) {
			ct_touch(cv, now);
			if (!(cv->flags & CT_SEEN_REPLY))
				cv->flags |= CT_SEEN_REPLY;
			if (p->tcp_flags & 0x05) // FIN or RST
				cv->flags |= CT_CLOSING;
			int why = proxy_reply(skb, s, cv->flags);
			if (why)
				return drop(skb, ep, p, dir, why, peer_identity(p, dir), cv->rule_id);
			frag_record(p);
			count(REASON_FORWARD_REPLY, skb->len);
			return TC_ACT_OK;
		}
	}

	// Original direction: checked against every policy revision, so a revoked allow cuts an open
	// flow at its next packet. A flow already checked at the current revision skips the lookups.
	ct_fill(k, ep->ep_id, dir, p->family, p->proto, p->saddr, p->daddr, p->sport, p->dport);
	if (p->is_frag)
		return STAGE_NEXT;
	struct ct_value *fast = ct_live(k, now);
	s->had_entry = fast != 0;
	s->ct = fast;
	if (fast && fast->policy_rev == s->rev && !(fast->flags & CT_REVOKED)) {
		if ((fast->flags & CT_PROXY) && !s->from_proxy)
			return drop(skb, ep, p, dir, REASON_DROP_PROXY_BYPASS, peer_identity(p, dir), fast->rule_id);
		if (fast->flags & CT_REDIRECT) {
			int why = proxy_redirect(skb, p, fast->l7);
			if (why)
				return drop(skb, ep, p, dir, why, peer_identity(p, dir), fast->rule_id);
		}
		ct_touch(fast, now);
		if (p->tcp_flags & 0x05)
			fast->flags |= CT_CLOSING;
		count(fast->flags & CT_REDIRECT ? REASON_FORWARD_PROXY
			  : fast->rule_id ? REASON_FORWARD_POLICY : REASON_FORWARD_UNENFORCED, skb->len);
		return TC_ACT_OK;
	}
	if (fast && !(fast->flags & CT_REVOKED) && p->proto == PROTO_TCP &&
	    !((p->tcp_flags & 0x02) && !(p->tcp_flags & 0x10))) {
		if (fast->flags & CT_REDIRECT)
			s->prev_l7 = fast->l7;
		else
			s->prev_direct = 1;
	}
	return STAGE_NEXT;
}

// stage_policy: the endpoint's policy for the flow as it stands now. A deny, no entry where the
// direction is enforced (unless the packet answers a flow whose conntrack entry was evicted), or
// an L7 rule's flow that did not come through the proxy is dropped; else the entry's verdict,
// rule and parser go on.
static __always_inline int stage_policy(struct __sk_buff *skb, struct tc_state *s, struct ct_key *k)
{
	struct endpoint_info *ep = s->ep;
	struct pkt *p = s->p;
	__u8 dir = s->dir;
	// From a pod to a Service frontend: its socket should have been translated. A packet that was
	// not (a raw socket) would be DNATed by kube-proxy after this program, to a backend policy
	// never saw: dropped.
	if (dir == DIR_EGRESS && s->cfg && (s->cfg->flags & CFG_SOCKET_LB) && to_service_frontend(p)) {
		ct_revoke(k);
		return drop(skb, ep, p, dir, REASON_DROP_SERVICE_UNTRANSLATED, s->peer_id, 0);
	}
	// From a node address: Service traffic the host translated and masqueraded is judged as its
	// client, not as the host.
	if (dir == DIR_INGRESS && s->peer_id == ID_HOST && !s->from_proxy && !p->is_frag &&
	    (p->proto == PROTO_TCP || p->proto == PROTO_UDP)) {
		__u32 client = nat_client_identity(skb, p);
		if (client)
			s->peer_id = client;
	}
	__u32 peer_id = s->peer_id;
	struct policy_value best = {};
	best.rule_id = 0xffffffff;
	policy_lookup(ep, dir, peer_id, p, &best);
	__u32 rule = best.verdict ? best.rule_id : 0;
	__u32 enforced = ep->flags & (dir == DIR_EGRESS ? EP_ENFORCE_EGRESS : EP_ENFORCE_INGRESS);
	if (best.verdict == VERDICT_DENY) {
		ct_revoke(k);
		return drop(skb, ep, p, dir, REASON_DROP_DENY, peer_id, rule);
	}
	// An L7 rule: the source's egress hands the flow to the proxy; the destination's ingress lets
	// through only what the proxy sends (it applied the rule).
	if (best.verdict == VERDICT_PROXY) {
		if (dir == DIR_INGRESS && !s->from_proxy) {
			ct_revoke(k);
			return drop(skb, ep, p, dir, REASON_DROP_PROXY_BYPASS, peer_id, rule);
		}
		if (dir == DIR_EGRESS)
			s->l7 = best.l7 ? best.l7 : L7_HTTP;
	}
	if (best.verdict == 0 && enforced && (ep->flags & (dir == DIR_EGRESS ? EP_AUDIT_EGRESS : EP_AUDIT_INGRESS))) {
		// Only policies in audit mode enforce default deny here: passed, and reported.
		s->audit = REASON_AUDIT_DEFAULT_DENY;
		enforced = 0;
	}
	if (best.verdict == 0 && enforced) {
		// No entry at all, not even a revoked one: this may be a reply whose flow's entry the
		// LRU evicted.
		int udp_reply = !s->had_entry && !p->is_frag && p->proto == PROTO_UDP && dir == DIR_INGRESS &&
				udp_connected_reply(skb, p);
		if (!s->had_entry && !p->is_frag &&
		    recover_reply(ep, dir | (udp_reply ? RECOVER_UDP : 0), peer_id, p, s->rev)) {
			count(REASON_FORWARD_REPLY_RECOVERED, skb->len);
			return TC_ACT_OK;
		}
		ct_revoke(k);
		return drop(skb, ep, p, dir, REASON_DROP_DEFAULT_DENY, peer_id, 0);
	}
	s->verdict = best.verdict;
	s->rule = rule;
	if (ep->flags & EP_HAS_AUDIT) {
		// The traffic passes: a deny rule of a policy in audit mode that matches it is reported.
		struct policy_value audit = {};
		audit.rule_id = 0xffffffff;
		policy_lookup(ep, dir | DIR_AUDIT, peer_id, p, &audit);
		if (audit.verdict) {
			s->audit = REASON_AUDIT_DENY;
			s->audit_rule = audit.rule_id;
		}
	}
	return STAGE_NEXT;
}

// stage_proxy: a flow an L7 rule governs goes to the node's proxy, where it enters the node: the
// source's egress rule, or the ingress rule of a destination pod on this node. A flow that went
// past the proxy is cut when a rule now governs it; one the proxy carries stays with it.
static __always_inline int stage_proxy(struct __sk_buff *skb, struct tc_state *s, struct ct_key *k)
{
	struct endpoint_info *ep = s->ep;
	struct pkt *p = s->p;
	__u8 dir = s->dir;
	// A TCP flow to a pod of this node whose ingress has an L7 rule for it: the proxy judges it
	// here, where the packet enters the node (tc_to_pod cannot hand it over).
	if (!s->l7 && dir == DIR_EGRESS && p->proto == PROTO_TCP) {
		__u32 irule = 0;
		s->l7 = ingress_l7(local_endpoint(p->family, p->daddr), ep->identity, p, &irule);
		if (s->l7)
			s->rule = irule;
	}
	if (dir == DIR_EGRESS && p->proto == PROTO_TCP) {
		if (!s->l7 && s->prev_l7) {
			// Its L7 rules are gone but the flow is still allowed: the proxy keeps carrying it
			// (it holds both halves) and judges its requests by the policy of now.
			s->l7 = s->prev_l7;
		} else if (s->l7 && s->prev_direct) {
			// An L7 rule now governs a flow that went past the proxy: the proxy cannot take over
			// an open connection, and the rule cannot be bypassed. Cut, and said so.
			ct_revoke(k);
			return drop(skb, ep, p, dir, REASON_DROP_PROXY_MIDFLOW, s->peer_id, s->rule);
		}
	}
	if (s->l7) {
		int why = proxy_redirect(skb, p, s->l7);
		if (why) {
			ct_revoke(k);
			return drop(skb, ep, p, dir, why, s->peer_id, s->rule);
		}
	}
	return STAGE_NEXT;
}

// forward passes a packet the stages let through in its flow's original direction: the flow's
// conntrack entry records the revision, rule and proxy it was checked with, and a new flow is
// reported.
static __always_inline int forward(struct __sk_buff *skb, struct tc_state *s, struct ct_key *k)
{
	struct pkt *p = s->p;
	frag_record(p);

	// A flow handed to a proxy is the proxy's to judge and report: an audit-mode deny that also
	// matches it is not reported here (the engine's Decide does the same).
	if (s->l7 || s->verdict == VERDICT_PROXY)
		s->audit = 0;
	__u8 reason = s->l7 ? REASON_FORWARD_PROXY : s->verdict ? REASON_FORWARD_POLICY : REASON_FORWARD_UNENFORCED;
	if (s->audit)
		reason = s->audit;
	__u32 ctf = (s->l7 ? CT_REDIRECT : 0) | (s->from_proxy ? CT_PROXY : 0);
	// stage_conntrack looked the entry up already, except for a fragment.
	struct ct_value *cv = p->is_frag ? bpf_map_lookup_elem(&conntrack, k) : s->ct;
	if (cv) {
		cv->last_seen = s->now;
		cv->rule_id = s->rule;
		cv->policy_rev = s->rev;
		cv->l7 = s->l7;
		cv->flags = (cv->flags & ~(CT_REVOKED | CT_REDIRECT | CT_PROXY)) | ctf;
		if (p->tcp_flags & 0x05)
			cv->flags |= CT_CLOSING;
	} else {
		struct ct_value nv = {.last_seen = s->now, .rule_id = s->rule, .policy_rev = s->rev, .flags = ctf, .l7 = s->l7};
		bpf_map_update_elem(&conntrack, k, &nv, BPF_ANY);
		if (s->audit)
			emit(skb, s->ep, p, s->dir, VERDICT_AUDIT, reason, s->peer_id, s->audit_rule);
		else
			emit(skb, s->ep, p, s->dir, VERDICT_ALLOW, reason, s->peer_id, s->rule);
	}
	count(reason, skb->len);
	return TC_ACT_OK;
}

// handle judges a packet on a pod's host veth in stages, each of which may decide it.
static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct tc_state s = {.dir = dir};
	struct ct_key k;
	int ret = stage_parse(skb, &s);
	if (ret != STAGE_NEXT)
		return ret;
	ret = stage_conntrack(skb, &s, &k);
	if (ret != STAGE_NEXT)
		return ret;
	// Only now: a reply, and a flow checked at the current revision (which every ipcache change
	// bumps), passed on conntrack alone.
	s.peer_id = peer_identity(s.p, dir);
	ret = stage_policy(skb, &s, &k);
	if (ret != STAGE_NEXT)
		return ret;
	ret = stage_proxy(skb, &s, &k);
	if (ret != STAGE_NEXT)
		return ret;
	return forward(skb, &s, &k);
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

// uplink_udp: a datagram from another node that answers the L7 proxy's upstream query (sent from
// a pod's address) goes to the proxy's socket of its tuple; with that socket gone (closed, timed
// out), an answer to a pod's flow the proxy carries is dropped here, so that the pod never gets
// an answer the proxy did not see. Everything else goes on to the pod's tc_to_pod.
static __always_inline int uplink_udp(struct __sk_buff *skb, struct pkt *p)
{
	// A later fragment of an answer takes the ports of its first, which the lines below recorded.
	if (p->later_frag && !frag_restore(p))
		return TC_ACT_OK;
	struct endpoint_info *ep = local_endpoint(p->family, p->daddr);
	// Only a pod with L7 rules has proxied flows: the lookups are for those alone.
	if (!ep || !(ep->flags & EP_HAS_L7))
		return TC_ACT_OK;
	if (proxy_answer_udp(skb, p) == PE_ASSIGNED) {
		frag_record(p);
		return TC_ACT_OK;
	}
	if (!udp_redirected(ep, p))
		return TC_ACT_OK;
	frag_record(p);
	return drop(skb, ep, p, DIR_INGRESS, REASON_DROP_PROXY_SOCKET_GONE, ipcache_identity(p->family, p->saddr), 0);
}

// tc_from_uplink (tcx ingress of the node's uplink) hands the L7 proxy the TCP flows from other
// nodes that a local pod's ingress L7 rules govern, and the replies to the proxy's own
// connections and queries. Everything else passes untouched: policy is the endpoints' programs'
// business.
SEC("tc")
int tc_from_uplink(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct pkt *p = bpf_map_lookup_elem(&scratch, &zero);
	if (!p)
		return TC_ACT_OK;
	__builtin_memset(p, 0, sizeof(*p));
	if (skb->vlan_present || parse(skb, p) != PARSE_IP)
		return TC_ACT_OK;
	if (p->proto == PROTO_UDP)
		return uplink_udp(skb, p);
	if (p->proto != PROTO_TCP || p->is_frag)
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
