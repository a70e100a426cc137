package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// MarkToProxy and MarkToProxyMask are bpf/lib/proxy.h's MARK_TO_PROXY: the datapath marks what it
// hands to the proxy, and the routing rule below delivers it locally.
const (
	MarkToProxy     = 0x200
	MarkToProxyMask = 0xf00
)

// Routes is the policy routing that delivers what the datapath assigned to the proxy's sockets
// locally: a rule (fwmark MarkToProxy/MarkToProxyMask, both families) to a table that holds
// local 0.0.0.0/0 and ::/0 on lo, as Cilium's table 2004 does.
type Routes struct {
	Table, Priority int
}

func (r Routes) objects() ([]*netlink.Rule, []*netlink.Route, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, nil, fmt.Errorf("find lo: %w", err)
	}
	var rules []*netlink.Rule
	var routes []*netlink.Route
	fams := []int{unix.AF_INET, unix.AF_INET6}
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		fams = fams[:1] // IPv6 is off on this node
	}
	for _, fam := range fams {
		rule := netlink.NewRule()
		rule.Family, rule.Table, rule.Priority = fam, r.Table, r.Priority
		rule.Mark, rule.Mask = MarkToProxy, ptr(uint32(MarkToProxyMask))
		rules = append(rules, rule)
		dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if fam == unix.AF_INET6 {
			dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		routes = append(routes, &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: dst, Table: r.Table, Type: unix.RTN_LOCAL,
			Scope: netlink.SCOPE_HOST, Family: fam})
	}
	return rules, routes, nil
}

func ptr[T any](v T) *T { return &v }

// Ensure adds the rule and routes that are missing.
func (r Routes) Ensure() error {
	rules, routes, err := r.objects()
	if err != nil {
		return err
	}
	for _, rt := range routes {
		if err := netlink.RouteReplace(rt); err != nil {
			return fmt.Errorf("add the proxy's local route to table %d: %w", r.Table, err)
		}
	}
	for _, rule := range rules {
		if err := netlink.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add the proxy's routing rule (fwmark %#x/%#x lookup %d): %w", MarkToProxy, MarkToProxyMask, r.Table, err)
		}
	}
	return nil
}

// Remove deletes the rule and routes (those already gone are fine).
func (r Routes) Remove() error {
	rules, routes, err := r.objects()
	if err != nil {
		return err
	}
	var errs []error
	for _, rule := range rules {
		if err := netlink.RuleDel(rule); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete the proxy's routing rule: %w", err))
		}
	}
	for _, rt := range routes {
		if err := netlink.RouteDel(rt); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete the proxy's local route: %w", err))
		}
	}
	return errors.Join(errs...)
}
