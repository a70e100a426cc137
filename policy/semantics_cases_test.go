package policy_test

import (
	"testing"

	"github.com/netpact/netpact/policy"
)

func TestEmptyRuleSemantics(t *testing.T) {
	runSemantic(t, []semanticCase{
		{name: "cnp ingress [{}] allows nothing but enables default deny", cite: citeCiliumL3 + " (\"ingress: - {}\" is default deny)",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = default-denied",
				"prod/api -> prod/web TCP/80 = default-denied",
				"prod/web -> prod/api TCP/8080 = allowed", // egress untouched
			}},
		{name: "ccnp ingress [{}] allows nothing but enables default deny", cite: citeCiliumL3,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: deny-all-web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = default-denied",
				"prod/api -> dev/web TCP/8081 = default-denied",
				"prod/web -> prod/api TCP/8080 = allowed",
			}},
		{name: "knp ingress [{}] allows everything", cite: citeK8sSpec + " (empty from and ports match all); " + citeK8sE2E + " \"should allow ingress access on one named port\" family",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = allowed",
				"8.8.8.8 -> prod/web UDP/53 = allowed",
				"dev/client -> prod/web ICMP/8 = allowed",
			}},
		{name: "knp policyTypes Ingress without rules denies all ingress", cite: citeK8sE2E + " \"should support a 'default-deny-ingress' policy\"",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = default-denied",
				"prod/api -> prod/db TCP/5432 = default-denied",
				"prod/web -> dev/web TCP/8081 = allowed",
			}},
		{name: "knp policyTypes defaults to Ingress plus Egress when egress rules exist", cite: citeK8sSpec + " (policyTypes defaulting)",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-dns-only, namespace: dev}
spec:
  podSelector: {matchLabels: {app: client}}
  egress:
  - ports: [{port: 53, protocol: UDP}]
`, probes: []flowProbe{
				"dev/client -> kube-system/dns UDP/53 = allowed",
				"dev/client -> prod/web TCP/80 = default-denied",
				"prod/web -> dev/client TCP/80 = default-denied", // Ingress defaulted on too
			}},
	})
}

func TestSelectorListSemantics(t *testing.T) {
	runSemantic(t, []semanticCase{
		{name: "cnp empty fromEndpoints list matches nothing", cite: citeCiliumL3 + "; cilium/cilium api/v1 rule: an empty but present list selects nothing",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: empty-list, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: []
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`, probes: []flowProbe{
				"prod/api -> prod/web TCP/80 = default-denied",
				"8.8.8.8 -> prod/web TCP/80 = default-denied",
			}},
		{name: "cnp absent fromEndpoints adds no constraint", cite: citeCiliumL4 + " (toPorts alone applies to all peers)",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ports-only, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`, probes: []flowProbe{
				"prod/api -> prod/web TCP/80 = allowed",
				"dev/client -> prod/web TCP/80 = allowed",
				"8.8.8.8 -> prod/web TCP/80 = allowed",
				"node-2 -> prod/web TCP/80 = allowed",
				"prod/api -> prod/web TCP/81 = default-denied",
			}},
		{name: "ccnp empty toEndpoints list matches nothing", cite: citeCiliumL3,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: empty-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: []
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = default-denied",
			}},
		{name: "knp empty from list allows all sources", cite: citeK8sSpec + " (\"If this field is empty or missing, this rule matches all sources\")",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-empty, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: []
    ports: [{port: 5432}]
`, probes: []flowProbe{
				"dev/client -> prod/db TCP/5432 = allowed",
				"8.8.8.8 -> prod/db TCP/5432 = allowed",
				"dev/client -> prod/db TCP/5433 = default-denied",
			}},
	})
}

func TestNamespaceInjection(t *testing.T) {
	runSemantic(t, []semanticCase{
		{name: "cnp endpointSelector is limited to the policy namespace", cite: citeCiliumNS,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web, k8s:io.kubernetes.pod.namespace: dev}}
  ingress: [{}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = default-denied",
				"dev/client -> dev/web TCP/8081 = allowed",
			}},
		{name: "cnp fromEndpoints is limited to the policy namespace", cite: citeCiliumNS,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-web, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
`, probes: []flowProbe{
				"prod/web -> prod/db TCP/5432 = allowed",
				"dev/web -> prod/db TCP/5432 = default-denied",
			}},
		{name: "cnp fromEndpoints naming the pod namespace spans namespaces", cite: citeCiliumNS,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-dev, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: dev}}]
`, probes: []flowProbe{
				"dev/web -> prod/db TCP/5432 = allowed",
				"dev/client -> prod/db TCP/5432 = allowed",
				"prod/web -> prod/db TCP/5432 = default-denied",
			}},
		{name: "cnp fromEndpoints naming namespace labels spans namespaces", cite: citeCiliumNS + " (since Cilium 1.16; the Kubernetes page saying namespace labels are ignored is out of date)",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-env-dev, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints:
    - matchLabels: {io.cilium.k8s.namespace.labels.env: dev, app: web}
`, probes: []flowProbe{
				"dev/web -> prod/db TCP/5432 = allowed",
				"dev/client -> prod/db TCP/5432 = default-denied",
				"prod/web -> prod/db TCP/5432 = default-denied",
			}},
		{name: "cnp empty fromEndpoints selector selects the whole namespace", cite: citeCiliumNS,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: same-ns, namespace: prod}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
`, probes: []flowProbe{
				"prod/web -> prod/db TCP/5432 = allowed",
				"dev/client -> prod/db TCP/5432 = default-denied",
				"8.8.8.8 -> prod/web TCP/80 = default-denied",
				"node-1 -> prod/db TCP/5432 = default-denied",
			}},
		{name: "ccnp selectors without a namespace match pods of every namespace, never host or world", cite: citeCiliumNS + " (clusterwide: Exists on the namespace label)",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: web-from-any-pod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = allowed",
				"prod/api -> dev/web TCP/8081 = allowed",
				"8.8.8.8 -> prod/web TCP/80 = default-denied",
				"node-2 -> prod/web TCP/80 = default-denied",
			}},
		{name: "ccnp selector pinning a namespace", cite: citeCiliumNS,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: from-kube-system}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system}}]
`, probes: []flowProbe{
				"kube-system/dns -> prod/web TCP/80 = allowed",
				"kube-system/dns -> dev/web TCP/8081 = allowed",
				"prod/api -> prod/web TCP/80 = default-denied",
			}},
		{name: "cnp reserved selector is not namespaced", cite: citeCiliumNS + " (reserved labels keep no namespace)",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-host, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {"reserved:remote-node": ""}}]
`, probes: []flowProbe{
				"node-1 -> prod/db TCP/5432 = allowed",
				"prod/web -> prod/db TCP/5432 = default-denied",
			}},
		{name: "knp podSelector peer is limited to the policy namespace; namespaceSelector spans", cite: citeK8sE2E + " \"should enforce policy based on NamespaceSelector with MatchExpressions\"",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: peers, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [dev]}]}
      podSelector: {matchLabels: {app: client}}
`, probes: []flowProbe{
				"prod/web -> prod/db TCP/5432 = allowed",
				"dev/web -> prod/db TCP/5432 = default-denied",
				"dev/client -> prod/db TCP/5432 = allowed",
				"prod/api -> prod/db TCP/5432 = default-denied",
			}},
		{name: "knp namespace default label selects by name", cite: citeK8sE2E + " (kubernetes.io/metadata.name on every namespace)",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-kube-system, namespace: prod}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}]
`, probes: []flowProbe{
				"kube-system/dns -> prod/web TCP/80 = allowed",
				"dev/client -> prod/web TCP/80 = default-denied",
			}},
	})
}

func TestDenyAndEnforcement(t *testing.T) {
	runSemantic(t, []semanticCase{
		{name: "cnp deny beats cnp allow", cite: citeCiliumDeny,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-and-deny, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEntities: [all]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`, probes: []flowProbe{
				"prod/web -> prod/db TCP/5432 = denied",
				"prod/web -> prod/db TCP/5433 = allowed",
				"prod/api -> prod/db TCP/5432 = allowed",
			}},
		{name: "ccnp deny beats knp allow", cite: citeCiliumDeny + " (across policy kinds)",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: prod}
spec:
  podSelector: {}
  ingress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: deny-dev}
spec:
  endpointSelector: {}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: dev}}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = denied",
				"prod/api -> prod/web TCP/80 = allowed",
				"dev/web -> dev/client TCP/80 = denied",
				"prod/api -> dev/client TCP/80 = default-denied", // the deny-only CCNP enables default deny
			}},
		{name: "egress deny beats egress allow", cite: citeCiliumDeny,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress, namespace: dev}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEntities: [cluster]
  egressDeny:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: prod, app: db}}]
`, probes: []flowProbe{
				"dev/client -> prod/db TCP/5432 = denied",
				"dev/client -> prod/web TCP/80 = allowed",
				"dev/client -> 8.8.8.8 TCP/443 = default-denied",
			}},
		{name: "enableDefaultDeny false adds allows without default deny", cite: citeCiliumDefDeny,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: additive, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: "80"}]}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = allowed",
				"prod/api -> prod/web TCP/80 = allowed",
			}},
		{name: "enableDefaultDeny: any policy that asks wins", cite: citeCiliumDefDeny,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: additive, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: strict}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEntities: [host]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = default-denied",
				"prod/api -> prod/web TCP/80 = allowed",
				"dev/client -> dev/web TCP/8081 = default-denied",
			}},
		{name: "enableDefaultDeny egress false with ingress on", cite: citeCiliumDefDeny,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress-additive, namespace: dev}
spec:
  endpointSelector: {matchLabels: {app: client}}
  enableDefaultDeny: {egress: false}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = allowed",
				"dev/client -> 8.8.8.8 TCP/443 = allowed",
			}},
		{name: "mode always enforces endpoints without policies", cite: citeCiliumModes, opts: policy.Options{Mode: policy.ModeAlways},
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
`, probes: []flowProbe{
				"prod/api -> prod/web TCP/80 = default-denied", // api's egress is enforced too
				"dev/client -> dev/web TCP/8081 = default-denied",
				"node-1 -> prod/web TCP/80 = allowed",
			}},
		{name: "mode never enforces nothing, deny included", cite: citeCiliumModes, opts: policy.Options{Mode: policy.ModeNever},
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  endpointSelector: {}
  ingress: [{}]
  ingressDeny: [{fromEntities: [all]}]
`, probes: []flowProbe{
				"prod/api -> prod/web TCP/80 = allowed",
				"8.8.8.8 -> prod/db TCP/5432 = allowed",
			}},
		{name: "knp ingress and egress are both required", cite: citeK8sE2E + " \"should enforce egress policy allowing traffic to a server in a different namespace\"",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: dev}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {env: prod}}, podSelector: {matchLabels: {app: web}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = default-denied",
				"prod/api -> prod/web TCP/80 = allowed",
				"dev/client -> prod/api TCP/8080 = default-denied",
			}},
	})
}

func TestCIDRSemantics(t *testing.T) {
	runSemantic(t, []semanticCase{
		{name: "cnp CIDR rules never match pod or node addresses", cite: citeCiliumCIDR + " (\"CIDR rules do not apply to traffic where both sides are managed by Cilium\")",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromCIDR: [10.0.0.0/8, 172.16.0.0/12, 8.0.0.0/8]
`, probes: []flowProbe{
				"prod/api -> prod/web TCP/80 = default-denied",
				"node-2 -> prod/web TCP/80 = default-denied",
				"8.8.8.8 -> prod/web TCP/80 = allowed",
				"10.9.9.9 -> prod/web TCP/80 = allowed",
			}},
		{name: "cnp CIDRSet except", cite: citeCiliumCIDR,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidrset, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
`, probes: []flowProbe{
				"prod/web -> 192.0.2.10 TCP/443 = allowed",
				"prod/web -> 192.0.2.200 TCP/443 = default-denied",
				"prod/web -> 8.8.8.8 TCP/443 = default-denied",
			}},
		{name: "ccnp toCIDR 0.0.0.0/0 is the IPv4 world only", cite: citeCiliumCIDR,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: world4}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDR: [0.0.0.0/0]
`, probes: []flowProbe{
				"dev/client -> 8.8.8.8 UDP/53 = allowed",
				"dev/client6 -> 2001:db8::8 UDP/53 = default-denied",
				"dev/client -> prod/web TCP/80 = default-denied",
			}},
		{name: "knp ipBlock matches pod addresses", cite: citeK8sE2E + " \"should allow ingress access from updated pod\" / ipBlock cases expect pod IPs to match",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ipblock, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.1.0/24, except: [10.0.1.3/32]}}]
`, probes: []flowProbe{
				"prod/web -> prod/db TCP/5432 = allowed",
				"dev/client -> prod/db TCP/5432 = default-denied",
				"dev/web -> prod/db TCP/5432 = default-denied",
			}},
		{name: "knp except in one policy, cidr in another: allowed", cite: citeK8sSpec + " (rules are additive); " + citeK8sE2E + " \"should enforce except clause while egress access to server in CIDR block\"",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: with-except, namespace: dev}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other, namespace: dev}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.2.1/32}}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = allowed",
				"dev/client -> prod/db TCP/5432 = allowed",
				"dev/client -> dev/web TCP/8081 = default-denied",
			}},
	})
}

func TestL4Semantics(t *testing.T) {
	runSemantic(t, []semanticCase{
		{name: "cnp toPorts without peer allows world too", cite: citeCiliumL4,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4-only, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`, probes: []flowProbe{
				"8.8.8.8 -> prod/web TCP/80 = allowed",
				"dev/client -> prod/web TCP/80 = allowed",
				"dev/client -> prod/web UDP/80 = default-denied",
			}},
		{name: "cnp protocol ANY is TCP, UDP and SCTP, not ICMP", cite: citeCiliumL4,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: any, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "9999", protocol: ANY}]}]
`, probes: []flowProbe{
				"prod/web -> prod/db TCP/9999 = allowed",
				"prod/web -> prod/db UDP/9999 = allowed",
				"prod/web -> prod/db SCTP/9999 = allowed",
				"prod/web -> prod/db ICMP/8 = default-denied",
			}},
		{name: "cnp without L4 rule: ICMP follows the L3 allow", cite: citeCiliumL4 + " (ICMP/ICMPv6 rules)",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l3, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
`, probes: []flowProbe{
				"prod/api -> prod/web ICMP/8 = allowed",
				"prod/api6 -> prod/web6 ICMPv6/128 = allowed",
				"prod/api -> prod/web SCTP/1 = allowed",
			}},
		{name: "cnp with an L4 rule: ICMP needs icmps", cite: citeCiliumL4,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: api}}]
    icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
`, probes: []flowProbe{
				"prod/api -> prod/web TCP/80 = allowed",
				"prod/api -> prod/web ICMP/8 = allowed",
				"prod/api -> prod/web ICMP/13 = default-denied",
				"prod/api6 -> prod/web6 ICMPv6/128 = allowed",
				"prod/api6 -> prod/web6 ICMPv6/129 = default-denied",
			}},
		{name: "ccnp L4 only, no ICMP", cite: citeCiliumL4,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: tcp80}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "80"}]}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = allowed",
				"dev/client -> prod/web ICMP/8 = default-denied",
			}},
		{name: "knp ports restrict protocols; no ports allows ICMP", cite: citeK8sSpec,
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ports, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 80}]
  - from: [{namespaceSelector: {matchLabels: {env: dev}}}]
`, probes: []flowProbe{
				"prod/api -> prod/web TCP/80 = allowed",
				"prod/api -> prod/web ICMP/8 = default-denied",
				"dev/client -> prod/web ICMP/8 = allowed",
				"dev/client -> prod/web UDP/5000 = allowed",
			}},
		{name: "cnp endPort range is inclusive", cite: citeCiliumL4 + " (port ranges)",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: range, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - toPorts: [{ports: [{port: "5000", endPort: 5432, protocol: TCP}]}]
`, probes: []flowProbe{
				"prod/web -> prod/db TCP/4999 = default-denied",
				"prod/web -> prod/db TCP/5000 = allowed",
				"prod/web -> prod/db TCP/5432 = allowed",
				"prod/web -> prod/db TCP/5433 = default-denied",
			}},
		{name: "knp endPort range is inclusive", cite: citeK8sE2E + " \"should support allow-all policy\" / endPort cases; " + citeK8sSpec,
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports: [{port: 5000, endPort: 5432, protocol: TCP}]
`, probes: []flowProbe{
				"prod/web -> prod/db TCP/4999 = default-denied",
				"prod/web -> prod/db TCP/5000 = allowed",
				"prod/web -> prod/db TCP/5432 = allowed",
				"prod/web -> prod/db TCP/5433 = default-denied",
			}},
		{name: "sctp and udp allows do not allow tcp", cite: citeK8sE2E + " \"should not allow access by TCP when a policy specifies only SCTP\" / \"only UDP\"",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp-udp, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports: [{port: 9999, protocol: SCTP}, {port: 53, protocol: UDP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: udp, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`, probes: []flowProbe{
				"prod/web -> prod/db SCTP/9999 = allowed",
				"prod/web -> prod/db TCP/9999 = default-denied",
				"prod/web -> prod/db UDP/53 = allowed",
				"prod/web -> prod/db TCP/53 = default-denied",
				"prod/api -> prod/web UDP/53 = allowed",
				"prod/api -> prod/web TCP/53 = default-denied",
			}},
		{name: "named ports resolve on the destination pod", cite: citeK8sE2E + " \"should allow ingress access on one named port\" / \"should allow egress access on one named port\"",
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-ingress, namespace: prod}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: http}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: named-egress, namespace: dev}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: prod}}]
    toPorts: [{ports: [{port: http, protocol: TCP}]}]
`, probes: []flowProbe{
				"dev/client -> prod/web TCP/80 = allowed",
				"dev/client -> prod/api TCP/8080 = allowed",
				"dev/client -> prod/api TCP/80 = default-denied",
				"dev/client -> prod/web TCP/8080 = default-denied",
				"dev/client -> prod/db TCP/5432 = default-denied",
				"prod/db -> prod/web UDP/53 = default-denied",
			}},
	})
}

func TestHostAndEntities(t *testing.T) {
	runSemantic(t, []semanticCase{
		{name: "local host reaches local endpoints, remote nodes do not", cite: citeCiliumHost,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  endpointSelector: {}
  ingress: [{}]
`, probes: []flowProbe{
				"node-1 -> prod/web TCP/80 = allowed",
				"node-1-6 -> prod/web6 TCP/80 = allowed",
				"node-2 -> prod/web TCP/80 = default-denied",
				"node-2 -> prod/db TCP/5432 = allowed",
				"node-1 -> prod/db TCP/5432 = default-denied",
			}},
		{name: "EnforceHost stops the implicit host allow", cite: citeCiliumHost + " (allow-localhost=policy)", opts: policy.Options{EnforceHost: true},
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`, probes: []flowProbe{
				"node-1 -> prod/web TCP/80 = default-denied",
			}},
		{name: "toEntities world, cluster, host, remote-node", cite: citeCiliumEntities,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: world, namespace: dev}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: "443"}]}]
  - toEntities: [cluster]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  - toEntities: [host]
    toPorts: [{ports: [{port: "10250"}]}]
  - toEntities: [remote-node]
    toPorts: [{ports: [{port: "4240"}]}]
`, probes: []flowProbe{
				"dev/client -> 8.8.8.8 TCP/443 = allowed",
				"dev/client6 -> 2001:db8::8 TCP/443 = allowed",
				"dev/client -> prod/web TCP/443 = default-denied",
				"dev/client -> kube-system/dns UDP/53 = allowed",
				"dev/client -> 8.8.8.8 UDP/53 = default-denied",
				"dev/client -> node-1 TCP/10250 = allowed",
				"dev/client -> node-2 TCP/10250 = default-denied",
				"dev/client -> node-2 TCP/4240 = allowed",
				"dev/client -> node-1 TCP/4240 = default-denied",
			}},
		{name: "toEntities all, kube-apiserver, health and init", cite: citeCiliumEntities,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: entities}
spec:
  endpointSelector: {matchLabels: {app: api}}
  egress:
  - toEntities: [all]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toEntities: [kube-apiserver, health, init]
`, probes: []flowProbe{
				"prod/api -> 8.8.8.8 TCP/443 = allowed",
				"prod/api -> prod/db TCP/443 = allowed",
				"prod/api -> node-2 TCP/443 = allowed",
				"prod/api -> 8.8.8.8 TCP/80 = default-denied",
			}},
		{name: "host policy with nodeSelector", cite: "Cilium docs, Host Policies (policy/language#host-policies)",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host-fw}
spec:
  nodeSelector: {matchLabels: {zone: a}}
  ingress:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "10250", protocol: TCP}]}]
`, probes: []flowProbe{
				"prod/web -> node-1 TCP/10250 = allowed",
				"8.8.8.8 -> node-1 TCP/10250 = default-denied",
				"prod/web -> node-1 TCP/22 = default-denied",
				"8.8.8.8 -> node-2 TCP/22 = allowed",
			}},
		{name: "service account and cluster labels are selectable", cite: "Cilium docs, Kubernetes > Service Accounts and identity labels (io.cilium.k8s.policy.*)",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: sa, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {io.cilium.k8s.policy.serviceaccount: api-sa, io.cilium.k8s.policy.cluster: default}}]
`, probes: []flowProbe{
				"prod/api -> prod/db TCP/5432 = allowed",
				"prod/web -> prod/db TCP/5432 = default-denied",
			}},
	})
}

func TestL7Verdicts(t *testing.T) {
	runSemantic(t, []semanticCase{
		{name: "http rules hand the flow to the proxy", cite: "Cilium docs, Layer 7 Examples (policy/language#layer-7-examples)",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-rule, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/"}]
`, probes: []flowProbe{
				"dev/client -> prod/api TCP/8080 = l7",
				"dev/client -> prod/api TCP/9090 = default-denied",
			}},
		{name: "a plain allow of the same port wins over the proxy", cite: "Cilium docs, Layer 7 Examples: an L3/L4 allow of the port allows every request",
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-and-l4, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/"}]
  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: dev}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`, probes: []flowProbe{
				"dev/client -> prod/api TCP/8080 = allowed",
				"prod/web -> prod/api TCP/8080 = l7",
			}},
	})
}
