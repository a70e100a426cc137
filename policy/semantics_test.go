package policy_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

// fixture is the cluster every semantic table runs against.
//
//	node-1 172.18.0.2            node-2 172.18.0.3
//	prod/web    10.0.1.1  app=web      http 80/TCP, dns 53/UDP
//	prod/api    10.0.1.2  app=api      http 8080/TCP, metrics 9090/TCP
//	prod/db     10.0.2.1  app=db       pg 5432/TCP, repl 9999/SCTP       (node-2)
//	dev/web     10.0.2.2  app=web      http 8081/TCP                     (node-2)
//	dev/client  10.0.1.3  app=client
//	kube-system/dns 10.0.1.53 k8s-app=kube-dns   dns 53/UDP, dns-tcp 53/TCP
//	world: 8.8.8.8, 192.0.2.10, 2001:db8::8
func fixture() *policy.Cluster {
	a := netip.MustParseAddr
	return &policy.Cluster{
		Nodes: []policy.Node{
			{Name: "node-1", IPs: []netip.Addr{a("172.18.0.2"), a("fc00::2")}, Labels: map[string]string{"role": "worker", "zone": "a"}},
			{Name: "node-2", IPs: []netip.Addr{a("172.18.0.3")}, Labels: map[string]string{"role": "worker", "zone": "b"}},
		},
		Namespaces: []policy.Namespace{
			{Name: "prod", Labels: map[string]string{"env": "prod"}},
			{Name: "dev", Labels: map[string]string{"env": "dev"}},
			{Name: "kube-system"},
		},
		Endpoints: []policy.Endpoint{
			{Namespace: "prod", Name: "web", Labels: map[string]string{"app": "web"}, Node: "node-1",
				IPs:   []netip.Addr{a("10.0.1.1"), a("fd00::1:1")},
				Ports: []policy.NamedPort{{Name: "http", Port: 80, Protocol: policy.ProtoTCP}, {Name: "dns", Port: 53, Protocol: policy.ProtoUDP}}},
			{Namespace: "prod", Name: "api", Labels: map[string]string{"app": "api"}, Node: "node-1", ServiceAccount: "api-sa",
				IPs:   []netip.Addr{a("10.0.1.2"), a("fd00::1:2")},
				Ports: []policy.NamedPort{{Name: "http", Port: 8080, Protocol: policy.ProtoTCP}, {Name: "metrics", Port: 9090, Protocol: policy.ProtoTCP}}},
			{Namespace: "prod", Name: "db", Labels: map[string]string{"app": "db"}, Node: "node-2",
				IPs:   []netip.Addr{a("10.0.2.1")},
				Ports: []policy.NamedPort{{Name: "pg", Port: 5432, Protocol: policy.ProtoTCP}, {Name: "repl", Port: 9999, Protocol: policy.ProtoSCTP}}},
			{Namespace: "dev", Name: "web", Labels: map[string]string{"app": "web"}, Node: "node-2",
				IPs:   []netip.Addr{a("10.0.2.2")},
				Ports: []policy.NamedPort{{Name: "http", Port: 8081, Protocol: policy.ProtoTCP}}},
			{Namespace: "dev", Name: "client", Labels: map[string]string{"app": "client"}, Node: "node-1",
				IPs: []netip.Addr{a("10.0.1.3"), a("fd00::1:3")}},
			{Namespace: "kube-system", Name: "dns", Labels: map[string]string{"k8s-app": "kube-dns"}, Node: "node-1",
				IPs:   []netip.Addr{a("10.0.1.53")},
				Ports: []policy.NamedPort{{Name: "dns", Port: 53, Protocol: policy.ProtoUDP}, {Name: "dns-tcp", Port: 53, Protocol: policy.ProtoTCP}}},
		},
	}
}

var fixtureAddrs = map[string]string{
	"prod/web": "10.0.1.1", "prod/web6": "fd00::1:1", "prod/api": "10.0.1.2", "prod/api6": "fd00::1:2",
	"prod/db": "10.0.2.1", "dev/web": "10.0.2.2", "dev/client": "10.0.1.3", "dev/client6": "fd00::1:3",
	"kube-system/dns": "10.0.1.53", "node-1": "172.18.0.2", "node-1-6": "fc00::2", "node-2": "172.18.0.3",
}

// addrOf resolves a probe endpoint: "namespace/name" of a pod in the cluster (its first
// address), a name in fixtureAddrs, or a literal address.
func addrOf(t *testing.T, c *policy.Cluster, name string) netip.Addr {
	t.Helper()
	for _, ep := range c.Endpoints {
		if ep.Key().String() == name && len(ep.IPs) > 0 {
			return ep.IPs[0]
		}
	}
	if s, ok := fixtureAddrs[name]; ok {
		return netip.MustParseAddr(s)
	}
	ip, err := netip.ParseAddr(name)
	if err != nil {
		t.Fatalf("unknown flowProbe endpoint %q", name)
	}
	return ip
}

// flowProbe is "FROM -> TO PROTO/PORT = OUTCOME"; OUTCOME is allowed, default-denied, denied or l7.
type flowProbe string

type semanticCase struct {
	name string
	// cite names the document or upstream test the expectation follows.
	cite     string
	policies string
	opts     policy.Options
	// cluster replaces fixture() for a case that needs its own pods.
	cluster func() *policy.Cluster
	probes  []flowProbe
}

func runSemantic(t *testing.T, cases []semanticCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.cite == "" {
				t.Fatal("every semantic case must cite its source")
			}
			b, err := policy.LoadBytes(tc.name+".yaml", []byte(tc.policies), policy.LoadOptions{})
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			c := fixture()
			if tc.cluster != nil {
				c = tc.cluster()
			}
			st, err := policy.Compile(c, b, tc.opts)
			if err != nil {
				t.Fatalf("compile: %v", err)
			}
			for _, p := range tc.probes {
				var from, to, pp, want string
				if _, err := fmt.Sscanf(strings.ReplaceAll(string(p), "->", " "), "%s %s %s = %s", &from, &to, &pp, &want); err != nil {
					t.Fatalf("bad flowProbe %q: %v", p, err)
				}
				protoName, portStr, _ := strings.Cut(pp, "/")
				proto, err := policy.ParseProto(protoName)
				if err != nil {
					t.Fatalf("bad flowProbe %q: %v", p, err)
				}
				var port uint16
				fmt.Sscan(portStr, &port)
				d := st.Decide(addrOf(t, c, from), addrOf(t, c, to), proto, port)
				if string(d.Outcome) != want {
					t.Errorf("%s: got %s (%s) [cite: %s]", p, d.Outcome, d.Reason(), tc.cite)
				}
			}
		})
	}
}

const (
	citeCiliumL3       = "Cilium docs, Layer 3 Examples (policy/language): ingress/egress semantics and default deny"
	citeCiliumDeny     = "Cilium docs, Deny Policies (policy/language#deny-policies): deny takes precedence over allow"
	citeCiliumModes    = "Cilium docs, Policy Enforcement Modes (policy/intro#policy-enforcement-modes)"
	citeCiliumNS       = "cilium/cilium pkg/k8s/apis/cilium.io/utils/utils.go getEndpointSelector: namespace injection"
	citeCiliumCIDR     = "Cilium docs, IP/CIDR based (policy/language#ip-cidr-based): CIDR rules apply to non-cluster addresses"
	citeCiliumL4       = "Cilium docs, Layer 4 Examples (policy/language#layer-4-examples): toPorts, ANY, ICMP"
	citeCiliumEntities = "Cilium docs, Entities Based (policy/language#entities-based)"
	citeCiliumDefDeny  = "Cilium docs, enableDefaultDeny (policy/language#default-deny)"
	citeCiliumHost     = "Cilium docs, allow-localhost: the local host may reach local endpoints under Kubernetes"
	citeK8sSpec        = "Kubernetes NetworkPolicy spec (k8s.io/api/networking/v1 field docs)"
	citeK8sE2E         = "kubernetes test/e2e/network/netpol/network_policy.go"
)
