package localnode

// External hosts: network namespaces outside the cluster that the node's pods reach through the
// node's routing, as a cluster's pods reach the Internet through theirs. An external host is no
// endpoint: the enforcer does not know it, no program is attached to its veth, and the engine
// sees its addresses as world. Its addresses are the caller's choice and the same in every run
// (a scenario can name them in a toCIDR rule), so runs on one host must not share a route to
// them: each run routes them in a table of its own, and a routing rule per pod of the run sends
// that pod's packets to it. Replies go back through the main table, as to any pod.

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/enforcer/podnet"
)

// externalTable is run id's routing table for its external hosts (the proxy's are 2100+id).
func externalTable(id int) int { return 2300 + id }

// externalRulePriority puts the rules after the proxy's (9: a packet marked for the proxy goes
// to the proxy) and before the main table's (32766).
const externalRulePriority = 10

// AddExternal makes the i-th external host of the run, named name: namespace np<id>-x<i> on host
// veth np<id>x<i>, with addresses v4 and v6 routed in the run's table, and waits until its
// network carries traffic. Every pod of the node, added before or after, reaches it.
func (n *Node) AddExternal(name string, i int, v4, v6 netip.Addr) (*podnet.Pod, error) {
	if _, ok := n.externals[name]; ok {
		return nil, fmt.Errorf("add external %s: added twice", name)
	}
	if err := notLocal(v4, v6); err != nil {
		return nil, fmt.Errorf("add external %s: %w", name, err)
	}
	p, err := podnet.CreateRouted(name, fmt.Sprintf("np%d-x%d", n.id, i), fmt.Sprintf("np%dx%d", n.id, i), v4, v6,
		externalTable(n.id))
	if err != nil {
		return nil, fmt.Errorf("add external %s: %w", name, err)
	}
	n.externals[name] = p
	if err := p.WaitReady(podAddrs(p), podnet.ReadyTimeout); err != nil {
		return nil, fmt.Errorf("add external %s: %w", name, err)
	}
	if len(n.externals) == 1 {
		for _, pod := range n.pods {
			if err := n.routeToExternals(pod); err != nil {
				return nil, err
			}
		}
	}
	return p, nil
}

// External returns the external host name, or nil.
func (n *Node) External(name string) *podnet.Pod { return n.externals[name] }

func podAddrs(p *podnet.Pod) []netip.Addr {
	var out []netip.Addr
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// notLocal fails when an address is one of this host's own: the kernel's local table, which
// comes before every rule, would deliver packets to it here.
func notLocal(addrs ...netip.Addr) error {
	have, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list this host's addresses: %w", err)
	}
	for _, h := range have {
		ha, ok := netip.AddrFromSlice(h.IP)
		for _, a := range addrs {
			if ok && a.IsValid() && ha.Unmap() == a.Unmap() {
				return fmt.Errorf("address %s is this host's own (on interface %d): choose external addresses this host does not use", a, h.LinkIndex)
			}
		}
	}
	return nil
}

// externalRules are the routing rules that send a pod's packets to the run's external table:
// one per address of the pod. A packet to anything else finds no route there and goes on to the
// main table.
func (n *Node) externalRules(p *podnet.Pod) []*netlink.Rule {
	var rules []*netlink.Rule
	for _, a := range podAddrs(p) {
		r := netlink.NewRule()
		r.Family, r.Table, r.Priority, r.Src = unix.AF_INET, externalTable(n.id), externalRulePriority, podnet.HostPrefix(a)
		if a.Is6() {
			r.Family = unix.AF_INET6
		}
		rules = append(rules, r)
	}
	return rules
}

// routeToExternals lets a pod reach the run's external hosts.
func (n *Node) routeToExternals(p *podnet.Pod) error {
	for _, r := range n.externalRules(p) {
		if err := netlink.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("route pod %s to the external hosts (from %s lookup %d): %w", p.Name, r.Src, r.Table, err)
		}
	}
	return nil
}

// unrouteFromExternals removes a pod's rules (those already gone are fine).
func (n *Node) unrouteFromExternals(p *podnet.Pod) error {
	var errs []error
	for _, r := range n.externalRules(p) {
		if err := netlink.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("remove the external hosts' rule of pod %s: %w", p.Name, err))
		}
	}
	return errors.Join(errs...)
}

// removeExternalRules deletes run id's rules to its external hosts' table (their namespaces, and
// with them their veths and routes, go with the run's namespaces).
func removeExternalRules(id int) error {
	rules, err := netlink.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list routing rules: %w", err)
	}
	var errs []error
	for _, r := range rules {
		if r.Table == externalTable(id) {
			if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("remove routing rule %s: %w", r, err))
			}
		}
	}
	return errors.Join(errs...)
}

// stopExternals deletes the node's external hosts and their rules.
func (n *Node) stopExternals() error {
	var errs []error
	for _, p := range n.externals {
		errs = append(errs, p.Delete())
	}
	n.externals = map[string]*podnet.Pod{}
	if n.releaseID != nil {
		errs = append(errs, removeExternalRules(n.id))
	}
	return errors.Join(errs...)
}
