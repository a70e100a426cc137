package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"

	"gopkg.in/yaml.v3"
)

// ClusterFile is the cluster description `netpact predict` reads: a cluster plus addresses
// outside it to probe. See docs/cluster-file.md.
type ClusterFile struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
	Cluster    `json:",inline"`
	External   []ExternalHost `json:"external,omitempty"`
	// Notices are what the file says that the engine ignores, as Cilium would.
	Notices []Notice `json:"-"`
}

// ExternalHost is an address outside the cluster, used as a probe source and destination.
type ExternalHost struct {
	Name string     `json:"name"`
	IP   netip.Addr `json:"ip"`
	// Names are DNS names that resolve to IP: toFQDNs rules selecting one allow the host once a
	// pod resolves it through an allowed DNS rule (State.DecideResolved).
	Names []string    `json:"names,omitempty"`
	Ports []NamedPort `json:"ports,omitempty"`
}

// ClusterFileKind is the kind of a cluster description.
const ClusterFileKind = "Cluster"

// LoadClusterFile reads a cluster description strictly: unknown fields and wrong types are
// errors with file, line and column.
func LoadClusterFile(name string, data []byte) (*ClusterFile, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := yamlErrorLine(err)
		return nil, ErrorList{{File: name, Line: line, Column: 1, Message: msg}}
	}
	if len(doc.Content) == 0 {
		return nil, ErrorList{{File: name, Line: 1, Column: 1, Message: "empty cluster file"}}
	}
	if line, col, err := aliasBudget(&doc); err != nil {
		return nil, ErrorList{{File: name, Line: line, Column: col, Message: err.Error()}}
	}
	w := &walker{index: docIndex{}}
	w.walk(doc.Content[0], reflect.TypeFor[ClusterFile](), "")
	var errs ErrorList
	for _, is := range w.issues {
		errs = append(errs, &Error{File: name, Line: is.pos.line, Column: is.pos.col, Field: is.path, Message: is.msg})
	}
	if len(errs) > 0 {
		return nil, errs
	}
	v, err := nodeValue(&doc, 0)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	var cf ClusterFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cf); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if cf.Kind != "" && cf.Kind != ClusterFileKind {
		at := w.index.lookup("kind")
		return nil, ErrorList{{File: name, Line: at.line, Column: at.col, Field: "kind", Message: fmt.Sprintf("kind %q is not a cluster description; use kind: Cluster", cf.Kind)}}
	}
	// A port without a protocol is TCP, as Kubernetes defaults a container port's.
	for i := range cf.Endpoints {
		defaultTCP(cf.Endpoints[i].Ports)
	}
	for i := range cf.External {
		defaultTCP(cf.External[i].Ports)
	}
	if err := cf.Cluster.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := cf.addressPods(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cf.Notices = reservedLabelNotices(name, &cf.Cluster, w.index)
	return &cf, nil
}

// ReservedLabelNotices names each pod label the engine drops from the pod's identity, for a
// cluster read from source without lines (an API server): the notices a cluster file with the same
// pods gets.
func ReservedLabelNotices(source string, c *Cluster) []Notice {
	return reservedLabelNotices(source, c, nil)
}

// reservedLabelNotices names each pod label the engine drops from the pod's identity. Kubernetes
// accepts such a label, so it is not an error, but a policy will not see it.
func reservedLabelNotices(file string, c *Cluster, at docIndex) []Notice {
	var out []Notice
	for i, ep := range c.Endpoints {
		for _, k := range slices.Sorted(maps.Keys(ep.Labels)) {
			if !reservedPodLabel(k) {
				continue
			}
			out = append(out, Notice{File: file, Line: at.lookup(fmt.Sprintf("pods[%d].labels.%s", i, k)).line,
				Message: fmt.Sprintf("pod %s: label %q is ignored for policy: Cilium derives it from the namespace and pod spec, not from pod labels", ep.Key(), k)})
		}
	}
	return out
}

func defaultTCP(ports []NamedPort) {
	for i := range ports {
		if ports[i].Protocol == ProtoAny {
			ports[i].Protocol = ProtoTCP
		}
	}
}

// Ranges the addresses of pods that list none are taken from, skipping every address the file
// uses. Which ones a pod gets changes nothing for a policy that does not name them: a CIDR rule
// never selects a pod, and an ipBlock selects one only by its address (which a scenario's
// policy names with {{ ip "ns/pod" }}, docs/scenarios.md).
var (
	podAddressesV4 = netip.MustParsePrefix("100.64.0.0/10")
	podAddressesV6 = netip.MustParsePrefix("fd6e:7061:6374::/64")
)

// addressPods gives each pod that lists no address one of each family, so that predict can
// probe it: a cluster file need not copy pod IPs.
func (cf *ClusterFile) addressPods() error {
	taken := make([]netip.Addr, 0, len(cf.External))
	for _, ex := range cf.External {
		taken = append(taken, ex.IP)
	}
	return cf.Cluster.AddressPods(taken...)
}

// AddressPods gives each pod that lists no address an IPv4 address from 100.64.0.0/10 and an
// IPv6 address from fd6e:7061:6374::/64, the first ones free of the cluster's nodes, its pods
// and taken: the addresses a cluster file's pods get (docs/cluster-file.md), for anything else
// that describes pods without running them.
func (c *Cluster) AddressPods(taken ...netip.Addr) error {
	used := map[netip.Addr]bool{}
	for _, ip := range taken {
		used[ip] = true
	}
	for _, n := range c.Nodes {
		for _, ip := range n.IPs {
			used[ip] = true
		}
	}
	for _, ep := range c.Endpoints {
		for _, ip := range ep.IPs {
			used[ip] = true
		}
	}
	next := []netip.Addr{podAddressesV4.Addr(), podAddressesV6.Addr()}
	for i := range c.Endpoints {
		if len(c.Endpoints[i].IPs) > 0 {
			continue
		}
		for f, prefix := range []netip.Prefix{podAddressesV4, podAddressesV6} {
			for next[f] = next[f].Next(); used[next[f]]; next[f] = next[f].Next() {
			}
			if !prefix.Contains(next[f]) {
				return fmt.Errorf("more pods without addresses than %s holds", prefix)
			}
			c.Endpoints[i].IPs = append(c.Endpoints[i].IPs, next[f])
			used[next[f]] = true
		}
	}
	return nil
}
