package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

// Parser is an L7 parser: which of the node's proxies a flow an L7 rule governs goes to
// (bpf/lib/common.h's enum l7_parser).
type Parser uint32

const (
	ParserHTTP  = Parser(bpf.TcL7ParserL7HTTP)
	ParserKafka = Parser(bpf.TcL7ParserL7KAFKA)
	ParserDNS   = Parser(bpf.TcL7ParserL7DNS)
)

func (p Parser) String() string {
	switch p {
	case ParserHTTP:
		return "http"
	case ParserKafka:
		return "kafka"
	case ParserDNS:
		return "dns"
	}
	return fmt.Sprintf("parser %d", uint32(p))
}

// ParserOf is the parser of an entry's L7 rules (policy.L7Policy.Parser): Kafka rules go to the
// Kafka proxy (none runs yet: such flows are dropped as having no proxy), DNS rules to the DNS
// proxy (UDP and TCP), every other rule set to HTTP (TCP only: a datagram of an HTTP entry is
// dropped as having no proxy).
func ParserOf(l *policy.L7Policy) Parser {
	switch l.Parser() {
	case policy.ParserKafka:
		return ParserKafka
	case policy.ParserDNS:
		return ParserDNS
	}
	return ParserHTTP
}

// SetProxyPort names the port a parser's proxy listens on (127.0.0.1 and ::1 of the node, with
// IP_TRANSPARENT; the DNS proxy on UDP and TCP, with IP_RECVORIGDSTADDR on UDP, as the datagrams
// it is handed keep their destination); 0 says no proxy runs, and flows for it are dropped ("no
// L7 proxy").
func (d *Datapath) SetProxyPort(p Parser, port uint16) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.objs.ProxyPorts.Put(uint32(p), uint32(port)); err != nil {
		return fmt.Errorf("write the %s proxy's port: %w", p, err)
	}
	return nil
}

// SetProxyListeners gives the node's listener lookups parser p's listeners (the proxy's, on
// 127.0.0.1 and ::1): a pod's SYN to the proxy that meets a TIME_WAIT socket of the node with its
// tuple is delivered to the node's stack rather than to the listener (the TIME_WAIT socket would
// keep its handshake from completing), and the kernel's TIME_WAIT processing then looks up a
// listener for the pod's destination: proxy_lookup, attached to this process's network namespace
// (the node's) on the first call, answers with these. A closed listener leaves the map by itself;
// such a SYN is then dropped. Each parser has its own slots: call it once per parser whose proxy
// takes TCP (the DNS proxy's TCP listeners too).
func (d *Datapath) SetProxyListeners(p Parser, lns []net.Listener) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.attachLookup(); err != nil {
		return err
	}
	for _, ln := range lns {
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			return fmt.Errorf("hand the %s proxy's listener %s to the lookup: not a TCP listener", p, ln.Addr())
		}
		slot := uint32(p) * 2
		if tl.Addr().(*net.TCPAddr).IP.To4() == nil {
			slot++
		}
		rc, err := tl.SyscallConn()
		if err != nil {
			return fmt.Errorf("hand the %s proxy's listener %s to the lookup: %w", p, ln.Addr(), err)
		}
		var uerr error
		if err := rc.Control(func(fd uintptr) { uerr = d.objs.lookup.ProxyListeners.Update(slot, uint64(fd), ebpf.UpdateAny) }); err != nil {
			return fmt.Errorf("hand the %s proxy's listener %s to the lookup: %w", p, ln.Addr(), err)
		}
		if uerr != nil {
			return fmt.Errorf("hand the %s proxy's listener %s to the lookup: %w", p, ln.Addr(), uerr)
		}
	}
	return nil
}

// attachLookup loads proxy_lookup and attaches it to this process's network namespace, once.
// The link is this process's: it goes with it, as the listeners do.
func (d *Datapath) attachLookup() error {
	if d.lookupLink != nil {
		return nil
	}
	spec, err := bpf.LoadLookup()
	if err != nil {
		return fmt.Errorf("load the proxy's listener lookup: %w", err)
	}
	// endpoint_addrs is pinned; the SYNs tc delivered past a TIME_WAIT socket are not (an entry
	// lives two seconds, a pod's share is made by this process), so the lookup is given tc's maps.
	// proxy_listeners is the lookup's own and stays unpinned: it holds this process's listeners.
	var names bpf.LookupMapSpecs
	if err := spec.Assign(&names); err != nil {
		return fmt.Errorf("load the proxy's listener lookup: %w", err)
	}
	var o bpf.LookupObjects
	if err := spec.LoadAndAssign(&o, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.opts.PinPath},
		MapReplacements: map[string]*ebpf.Map{names.ProxySyns.Name: d.objs.ProxySyns, names.ProxySynsPod.Name: d.objs.ProxySynsPod}}); err != nil {
		return fmt.Errorf("load the proxy's listener lookup (sk_lookup, kernel >= 5.9): %w", err)
	}
	ns, err := os.Open("/proc/self/ns/net")
	if err != nil {
		o.Close()
		return fmt.Errorf("attach the proxy's listener lookup: %w", err)
	}
	defer ns.Close()
	l, err := link.AttachNetNs(int(ns.Fd()), o.ProxyLookup)
	if err != nil {
		o.Close()
		return fmt.Errorf("attach the proxy's listener lookup to this network namespace: %w", err)
	}
	d.objs.lookup, d.lookupLink = o, l
	return nil
}

func (d *Datapath) closeLookup() {
	if d.lookupLink != nil {
		d.lookupLink.Close()
		d.lookupLink = nil
	}
}

// ProxyMark is the SO_MARK the L7 proxy's upstream sockets carry: a pod's ingress lets through
// the proxy's packets on an entry with L7 rules (the proxy applied them), and those of no one else.
func (d *Datapath) ProxyMark() uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.ProxyMark
}

// l7Buffer is how many L7 events wait for the flow reader; more are dropped and counted, as
// the ring buffer drops (and events_lost counts) datapath events it has no room for.
const l7Buffer = 4096

func (d *Datapath) l7Events() chan Flow {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.l7 == nil {
		d.l7 = make(chan Flow, l7Buffer)
	}
	return d.l7
}

// PublishL7 adds an L7 proxy's event to the flow stream Flows reads.
func (d *Datapath) PublishL7(f Flow) {
	ch := d.l7Events()
	select {
	case ch <- f:
	default:
		// Counted, so that the flow reader's Lost says so.
		d.l7Lost.Add(1)
	}
}

// AttachUplink attaches tc_from_uplink to the ingress of the interface that carries traffic from
// other nodes (tcx only), pinned like the endpoints' links: flows from other nodes that a local
// pod's ingress L7 rules govern go to the proxy there, as do replies to the proxy's connections.
func (d *Datapath) AttachUplink(ifname string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("attach uplink %s: %w", ifname, err)
	}
	name := pinName(ifc.Index, suffixUplink)
	if _, ok := d.attach.links[name]; ok {
		return nil
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: d.objs.TcFromUplink, Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
	if err != nil {
		return fmt.Errorf("attach tcx uplink to %s (ingress L7 rules for traffic from other nodes need tcx): %w", ifname, err)
	}
	if err := l.Pin(filepath.Join(d.attach.pinDir, name)); err != nil {
		l.Close()
		return fmt.Errorf("pin tcx uplink link of %s: %w", ifname, err)
	}
	d.attach.links[name] = l
	return nil
}

// addrKeys are the endpoint_addrs keys of an endpoint entry's addresses.
func addrKeys(info bpf.TcEndpointInfo) []bpf.TcEndpointAddrKey {
	var out []bpf.TcEndpointAddrKey
	if info.Ipv4 != [4]uint8{} {
		out = append(out, bpf.TcEndpointAddrKey{Family: familyV4, Addr: addr16(netip.AddrFrom4(info.Ipv4))})
	}
	if info.Ipv6 != [16]uint8{} {
		out = append(out, bpf.TcEndpointAddrKey{Family: familyV6, Addr: info.Ipv6})
	}
	return out
}

// writeAddrs makes endpoint_addrs (address -> host veth) hold the addresses of the entry about to
// be written for ifindex, and no longer those of the entry it replaces. The old addresses come
// from the endpoint entries (adopted from the pins after a restart), so nothing is kept twice.
// The new ones are written every time: a map that an upgrade just created fills at the first sync.
func (d *Datapath) writeAddrs(ifindex int, info bpf.TcEndpointInfo) error {
	want := addrKeys(info)
	for _, k := range want {
		if err := d.objs.EndpointAddrs.Put(k, uint32(ifindex)); err != nil {
			return fmt.Errorf("write endpoint address: %w", err)
		}
	}
	old, ok := d.endpointInfo[ifindex]
	if !ok {
		return nil
	}
	for _, k := range addrKeys(old) {
		if !slices.Contains(want, k) {
			if err := d.deleteAddr(ifindex, k); err != nil {
				return err
			}
		}
	}
	return nil
}

// deleteAddr deletes an address of ifindex from endpoint_addrs, unless another endpoint has
// taken it since.
func (d *Datapath) deleteAddr(ifindex int, k bpf.TcEndpointAddrKey) error {
	var owner uint32
	if err := d.objs.EndpointAddrs.Lookup(k, &owner); err == nil && owner != uint32(ifindex) {
		return nil
	}
	if err := d.objs.EndpointAddrs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint address: %w", err)
	}
	return nil
}

// forgetAddrs deletes an endpoint's addresses from endpoint_addrs (call before its entry leaves
// endpointInfo).
func (d *Datapath) forgetAddrs(ifindex int) error {
	var errs []error
	for _, k := range addrKeys(d.endpointInfo[ifindex]) {
		errs = append(errs, d.deleteAddr(ifindex, k))
	}
	return errors.Join(errs...)
}
