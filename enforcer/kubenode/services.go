package kubenode

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/policy"
)

// serviceFrontends is the translation table the informers' Services and EndpointSlices make:
// every ClusterIP (each family of a dual-stack Service) and TCP or UDP port, with the ready
// endpoints' addresses on the port's target. Headless and ExternalName Services are not
// translated; NodePorts, load-balancer and external IPs stay kube-proxy's. Endpoints that are
// not ready, or terminating, take no new connections; internalTrafficPolicy Local keeps the
// endpoints on this node.
func serviceFrontends(node string, svcs []*corev1.Service, slices_ []*discoveryv1.EndpointSlice) []datapath.Service {
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range slices_ {
		name := s.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			continue
		}
		bySvc[s.Namespace+"/"+name] = append(bySvc[s.Namespace+"/"+name], s)
	}
	var out []datapath.Service
	for _, svc := range svcs {
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		key := svc.Namespace + "/" + svc.Name
		local := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			ips = []string{svc.Spec.ClusterIP}
		}
		for _, ipStr := range ips {
			vip, err := netip.ParseAddr(ipStr)
			if err != nil { // "None" (headless) or garbage: nothing to translate
				continue
			}
			vip = vip.Unmap()
			for _, sp := range svc.Spec.Ports {
				proto := policy.ProtoTCP
				switch sp.Protocol {
				case corev1.ProtocolUDP:
					proto = policy.ProtoUDP
				case corev1.ProtocolTCP, "":
				default:
					continue // SCTP: not translated (kube-proxy keeps it)
				}
				if sp.Port <= 0 || sp.Port > 65535 {
					continue
				}
				fe := datapath.Service{Name: key, Frontend: netip.AddrPortFrom(vip, uint16(sp.Port)), Proto: proto}
				fe.Backends = backendsOf(bySvc[key], sp, vip.Is4(), local, node)
				out = append(out, fe)
			}
		}
	}
	return out
}

// backendsOf are the ready endpoints' addresses of one Service port and family, sorted.
func backendsOf(eps []*discoveryv1.EndpointSlice, sp corev1.ServicePort, v4, local bool, node string) []netip.AddrPort {
	want := discoveryv1.AddressTypeIPv6
	if v4 {
		want = discoveryv1.AddressTypeIPv4
	}
	seen := map[netip.AddrPort]bool{}
	var out []netip.AddrPort
	for _, s := range eps {
		if s.AddressType != want {
			continue
		}
		var port int32
		for _, p := range s.Ports {
			pname, pproto := "", corev1.ProtocolTCP
			if p.Name != nil {
				pname = *p.Name
			}
			if p.Protocol != nil {
				pproto = *p.Protocol
			}
			sproto := sp.Protocol
			if sproto == "" {
				sproto = corev1.ProtocolTCP
			}
			if pname == sp.Name && pproto == sproto && p.Port != nil {
				port = *p.Port
			}
		}
		if port <= 0 || port > 65535 {
			continue
		}
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if ep.Conditions.Terminating != nil && *ep.Conditions.Terminating {
				continue
			}
			if local && (ep.NodeName == nil || *ep.NodeName != node) {
				continue
			}
			for _, a := range ep.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil || addr.Unmap().Is4() != v4 {
					continue
				}
				ap := netip.AddrPortFrom(addr.Unmap(), uint16(port))
				if !seen[ap] {
					seen[ap] = true
					out = append(out, ap)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return out
}

// serviceKey sorts frontends for a stable comparison.
func serviceKey(s datapath.Service) string {
	return s.Frontend.String() + "/" + strings.ToLower(s.Proto.String())
}

// syncServices hands the Services and EndpointSlices to the datapath when they changed.
func (e *Enforcement) syncServices() error {
	var newest newestVersion
	var svcs []*corev1.Service
	for _, o := range e.svcs.GetStore().List() {
		if s, ok := o.(*corev1.Service); ok {
			svcs = append(svcs, s)
			newest.see(s.ResourceVersion)
		}
	}
	var eps []*discoveryv1.EndpointSlice
	for _, o := range e.slices.GetStore().List() {
		if s, ok := o.(*discoveryv1.EndpointSlice); ok {
			eps = append(eps, s)
			newest.see(s.ResourceVersion)
		}
	}
	fes := serviceFrontends(e.cfg.NodeName, svcs, eps)
	slices.SortFunc(fes, func(a, b datapath.Service) int { return strings.Compare(serviceKey(a), serviceKey(b)) })
	b, _ := json.Marshal(fes)
	sum := sha256.Sum256(b)
	e.mu.Lock()
	same := sum == e.servicesSum
	if same {
		e.servicesObserved = int64(newest)
	}
	e.mu.Unlock()
	if same {
		return nil
	}
	if err := e.cfg.Enforcer.SetServices(fes); err != nil {
		return fmt.Errorf("services: %w", err)
	}
	e.mu.Lock()
	e.servicesSum, e.servicesObserved = sum, int64(newest)
	e.mu.Unlock()
	return nil
}
