package observe

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// hubbleTestFlow is the flow of Hubble's printer tests
// (hubble/pkg/printer/printer_test.go), whose expected lines are re-typed
// below.
func hubbleTestFlow() *Flow {
	return &Flow{
		Time:        TimestampOf(time.Unix(1234, 567800000)),
		Type:        L3L4,
		NodeName:    "k8s1",
		Verdict:     Dropped,
		IP:          &IP{Source: "1.1.1.1", Destination: "2.2.2.2"},
		Source:      &Endpoint{Identity: 4},
		Destination: &Endpoint{Identity: 12345},
		L4:          &Layer4{TCP: &TCP{SourcePort: 31793, DestinationPort: 8080}},
		EventType:   &CiliumEventType{Type: MessageTypeDrop, SubType: 133},
		Summary:     "TCP Flags: SYN",
		IsReply:     Bool(false),
	}
}

func hubbleTestLost(node string, span bool) *GetFlowsResponse {
	r := &GetFlowsResponse{
		Time:       TimestampOf(time.Unix(1234, 567800000)),
		NodeName:   node,
		LostEvents: &LostEvent{Source: HubbleRingBuffer, NumEventsLost: 1, CPU: Int32(5)},
	}
	if span {
		r.LostEvents.First = TimestampOf(time.Unix(1230, 567800000))
		r.LostEvents.Last = TimestampOf(time.Unix(1238, 567800000))
	}
	return r
}

func printOne(t *testing.T, opts PrinterOptions, rs ...*GetFlowsResponse) string {
	t.Helper()
	var buf bytes.Buffer
	p, err := NewPrinter(&buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if err := p.WriteResponse(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestPrinterHubbleGolden(t *testing.T) {

	reply := hubbleTestFlow()
	reply.IsReply = Bool(true)
	unknown := hubbleTestFlow()
	unknown.IsReply = nil

	policyDenied := hubbleTestFlow()
	policyDenied.EventType = &CiliumEventType{Type: MessageTypePolicyVerdict}
	policyDenied.IsReply = nil
	policyDenied.TrafficDirection = Egress
	policyDenied.EgressDeniedBy = []*Policy{{Name: "my-policy", Namespace: "my-policy-namespace", Kind: "CiliumNetworkPolicy"}}

	policyAllowed := hubbleTestFlow()
	policyAllowed.EventType = &CiliumEventType{Type: MessageTypePolicyVerdict}
	policyAllowed.Verdict = Forwarded
	policyAllowed.IsReply = nil
	policyAllowed.TrafficDirection = Ingress
	policyAllowed.IngressAllowedBy = []*Policy{
		{Name: "my-policy", Namespace: "my-policy-namespace", Kind: "CiliumNetworkPolicy"},
		{Name: "my-policy-2", Kind: "CiliumClusterwideNetworkPolicy"},
	}
	policyAllowed.PolicyMatchType = PolicyMatchL3Only

	policyAudited := hubbleTestFlow()
	policyAudited.EventType = &CiliumEventType{Type: MessageTypePolicyVerdict}
	policyAudited.Verdict = Audit
	policyAudited.IsReply = nil
	policyAudited.TrafficDirection = Egress
	policyAudited.EgressDeniedBy = []*Policy{{Name: "my-policy", Namespace: "my-policy-namespace", Kind: "CiliumNetworkPolicy"}}

	flow := func(f *Flow) *GetFlowsResponse { return &GetFlowsResponse{Flow: f} }
	tests := []struct {
		name string
		opts PrinterOptions
		in   *GetFlowsResponse
		want string
	}{
		{"tabular", PrinterOptions{Output: OutputTable}, flow(hubbleTestFlow()),
			"TIMESTAMP             SOURCE          DESTINATION    TYPE            VERDICT   SUMMARY\n" +
				"Jan  1 00:20:34.567   1.1.1.1:31793   2.2.2.2:8080   Policy denied   DROPPED   TCP Flags: SYN"},
		{"tabular-with-node", PrinterOptions{Output: OutputTable, NodeName: true}, flow(hubbleTestFlow()),
			"TIMESTAMP             NODE   SOURCE          DESTINATION    TYPE            VERDICT   SUMMARY\n" +
				"Jan  1 00:20:34.567   k8s1   1.1.1.1:31793   2.2.2.2:8080   Policy denied   DROPPED   TCP Flags: SYN"},
		{"compact", PrinterOptions{}, flow(hubbleTestFlow()),
			"Jan  1 00:20:34.567: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) Policy denied DROPPED (TCP Flags: SYN)"},
		{"compact-with-node", PrinterOptions{NodeName: true}, flow(hubbleTestFlow()),
			"Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) -> 2.2.2.2:8080 (ID:12345) Policy denied DROPPED (TCP Flags: SYN)"},
		{"compact-reply", PrinterOptions{NodeName: true}, flow(reply),
			"Jan  1 00:20:34.567 [k8s1]: 2.2.2.2:8080 (ID:12345) <- 1.1.1.1:31793 (health) Policy denied DROPPED (TCP Flags: SYN)"},
		{"compact-policy-verdict-denied", PrinterOptions{NodeName: true}, flow(policyDenied),
			"Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) policy-verdict:none EGRESS DENIED (TCP Flags: SYN)"},
		{"compact-policy-verdict-denied-with-policy-name", PrinterOptions{NodeName: true, PolicyNames: true}, flow(policyDenied),
			"Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) policy-verdict:none EGRESS DENIED BY my-policy (CiliumNetworkPolicy) (TCP Flags: SYN)"},
		{"compact-policy-verdict-allowed-with-policy-name", PrinterOptions{NodeName: true, PolicyNames: true}, flow(policyAllowed),
			"Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) policy-verdict:L3-Only INGRESS ALLOWED BY my-policy (CiliumNetworkPolicy), my-policy-2 (CiliumClusterwideNetworkPolicy) (TCP Flags: SYN)"},
		{"compact-policy-verdict-audited-with-policy-name", PrinterOptions{NodeName: true, PolicyNames: true}, flow(policyAudited),
			"Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) policy-verdict:none EGRESS AUDITED BY my-policy (CiliumNetworkPolicy) (TCP Flags: SYN)"},
		{"compact-direction-unknown", PrinterOptions{NodeName: true}, flow(unknown),
			"Jan  1 00:20:34.567 [k8s1]: 1.1.1.1:31793 (health) <> 2.2.2.2:8080 (ID:12345) Policy denied DROPPED (TCP Flags: SYN)"},
		{"jsonpb", PrinterOptions{Output: OutputJSON}, flow(hubbleTestFlow()),
			`{"flow":{"time":"1970-01-01T00:20:34.567800Z","verdict":"DROPPED","IP":{"source":"1.1.1.1","destination":"2.2.2.2"},"l4":{"TCP":{"source_port":31793,"destination_port":8080}},"source":{"identity":4},"destination":{"identity":12345},"Type":"L3_L4","node_name":"k8s1","event_type":{"type":1,"sub_type":133},"is_reply":false,"Summary":"TCP Flags: SYN"}}`},
		{"dict", PrinterOptions{Output: OutputDict}, flow(hubbleTestFlow()),
			"  TIMESTAMP: Jan  1 00:20:34.567\n     SOURCE: 1.1.1.1:31793\nDESTINATION: 2.2.2.2:8080\n       TYPE: Policy denied\n    VERDICT: DROPPED\n    SUMMARY: TCP Flags: SYN"},
		{"dict-with-node", PrinterOptions{Output: OutputDict, NodeName: true}, flow(hubbleTestFlow()),
			"  TIMESTAMP: Jan  1 00:20:34.567\n       NODE: k8s1\n     SOURCE: 1.1.1.1:31793\nDESTINATION: 2.2.2.2:8080\n       TYPE: Policy denied\n    VERDICT: DROPPED\n    SUMMARY: TCP Flags: SYN"},
		{"dict-with-policy-name", PrinterOptions{Output: OutputDict, PolicyNames: true}, flow(policyDenied),
			"  TIMESTAMP: Jan  1 00:20:34.567\n     SOURCE: 1.1.1.1:31793\nDESTINATION: 2.2.2.2:8080\n       TYPE: policy-verdict:none EGRESS\n    VERDICT: DENIED BY my-policy (CiliumNetworkPolicy)\n    SUMMARY: TCP Flags: SYN"},

		// Lost events (TestPrinter_WriteLostEventsResponse).
		{"lost-tabular", PrinterOptions{Output: OutputTable}, hubbleTestLost("", false),
			"TIMESTAMP             SOURCE               DESTINATION   TYPE          VERDICT   SUMMARY\n" +
				"Jan  1 00:20:34.567   HUBBLE_RING_BUFFER   -             EVENTS LOST   -         CPU(5) - 1"},
		{"lost-compact", PrinterOptions{}, hubbleTestLost("", false),
			"Jan  1 00:20:34.567 EVENTS LOST: HUBBLE_RING_BUFFER CPU(5) 1"},
		{"lost-json", PrinterOptions{Output: OutputJSON}, hubbleTestLost("", false),
			`{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"1","cpu":5},"time":"1970-01-01T00:20:34.567800Z"}`},
		{"lost-dict", PrinterOptions{Output: OutputDict}, hubbleTestLost("", false),
			"  TIMESTAMP: Jan  1 00:20:34.567\n     SOURCE: HUBBLE_RING_BUFFER\n       TYPE: EVENTS LOST\n    VERDICT: -\n    SUMMARY: CPU(5) - 1"},
		{"lost-tabular-with-node", PrinterOptions{Output: OutputTable, NodeName: true}, hubbleTestLost("node-name", false),
			"TIMESTAMP             NODE        SOURCE               DESTINATION   TYPE          VERDICT   SUMMARY\n" +
				"Jan  1 00:20:34.567   node-name   HUBBLE_RING_BUFFER   -             EVENTS LOST   -         CPU(5) - 1"},
		{"lost-compact-with-node", PrinterOptions{NodeName: true}, hubbleTestLost("node-name", false),
			"Jan  1 00:20:34.567 EVENTS LOST: HUBBLE_RING_BUFFER CPU(5) 1"},
		{"lost-dict-with-node", PrinterOptions{Output: OutputDict, NodeName: true}, hubbleTestLost("node-name", false),
			"  TIMESTAMP: Jan  1 00:20:34.567\n       NODE: node-name\n     SOURCE: HUBBLE_RING_BUFFER\n       TYPE: EVENTS LOST\n    VERDICT: -\n    SUMMARY: CPU(5) - 1"},
		{"lost-tabular-with-timestamps", PrinterOptions{Output: OutputTable}, hubbleTestLost("", true),
			"TIMESTAMP             SOURCE               DESTINATION   TYPE          VERDICT   SUMMARY\n" +
				"Jan  1 00:20:34.567   HUBBLE_RING_BUFFER   -             EVENTS LOST   -         CPU(5) - 1 (first: Jan  1 00:20:30.567, last: Jan  1 00:20:38.567)"},
		{"lost-compact-with-timestamps", PrinterOptions{}, hubbleTestLost("", true),
			"Jan  1 00:20:34.567 EVENTS LOST: HUBBLE_RING_BUFFER CPU(5) 1 (first: Jan  1 00:20:30.567, last: Jan  1 00:20:38.567)"},
		{"lost-dict-with-timestamps", PrinterOptions{Output: OutputDict}, hubbleTestLost("", true),
			"  TIMESTAMP: Jan  1 00:20:34.567\n     SOURCE: HUBBLE_RING_BUFFER\n       TYPE: EVENTS LOST\n    VERDICT: -\n    SUMMARY: CPU(5) - 1 (first: Jan  1 00:20:30.567, last: Jan  1 00:20:38.567)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := printOne(t, tt.opts, tt.in)
			if strings.TrimSpace(got) != strings.TrimSpace(tt.want) {
				t.Errorf("\n got %q\nwant %q", strings.TrimSpace(got), strings.TrimSpace(tt.want))
			}
		})
	}
}

func TestPrinterRealDNSLine(t *testing.T) {
	f := &Flow{
		Time:        TimestampOf(time.Date(2020, 6, 24, 23, 22, 50, 538000000, time.UTC)),
		Verdict:     Forwarded,
		IP:          &IP{Source: "10.0.0.7", Destination: "169.254.20.10", IPVersion: IPv4},
		L4:          &Layer4{UDP: &UDP{SourcePort: 53895, DestinationPort: 53}},
		Source:      &Endpoint{Identity: 2012, Namespace: "default", PodName: "tiefighter"},
		Destination: &Endpoint{Identity: 1},
		Type:        L7,
		L7: &Layer7{Type: L7Request, DNS: &DNS{
			Query: "deathstar.default.svc.cluster.local.", ObservationSource: "proxy", Qtypes: []string{"A"},
		}},
		EventType: &CiliumEventType{Type: MessageTypeAccessLog},
		IsReply:   Bool(false),
	}
	got := printOne(t, PrinterOptions{}, &GetFlowsResponse{Flow: f})
	want := "Jun 24 23:22:50.538: default/tiefighter:53895 (ID:2012) -> 169.254.20.10:53 (host) dns-request proxy FORWARDED (DNS Query deathstar.default.svc.cluster.local. A)\n"
	if got != want {
		t.Errorf("\n got %q\nwant %q", got, want)
	}
	// --numeric prints the address.
	got = printOne(t, PrinterOptions{Numeric: true}, &GetFlowsResponse{Flow: f})
	if !strings.Contains(got, ": 10.0.0.7:53895 (ID:2012) -> ") {
		t.Errorf("numeric: %q", got)
	}
}

func TestHostnames(t *testing.T) {
	p, _ := NewPrinter(&bytes.Buffer{}, PrinterOptions{})
	num, _ := NewPrinter(&bytes.Buffer{}, PrinterOptions{Numeric: true})
	// From Hubble's TestHostname.
	for _, c := range []struct {
		p                  *Printer
		ip                 string
		port               uint32
		ns, pod, svc, want string
		names              []string
	}{
		{p, "", 0, "default", "pod", "", "default/pod", nil},
		{p, "", 0, "default", "pod", "service", "default/pod", nil},
		{p, "", 0, "default", "", "service", "default/service", nil},
		{p, "", 0, "", "", "", "a,b", []string{"a", "b"}},
		{num, "1.1.1.1", 80, "default", "pod", "", "1.1.1.1:80", nil},
		{num, "1.1.1.1", 80, "default", "pod", "service", "1.1.1.1:80", nil},
		{num, "1.1.1.1", 0, "default", "pod", "", "1.1.1.1", nil},
		{p, "2001:db8::1", 443, "", "", "", "[2001:db8::1]:443", nil},
		{p, "2001:db8::1", 0, "", "", "", "2001:db8::1", nil},
	} {
		if got := c.p.hostname(c.ip, c.port, c.ns, c.pod, c.svc, c.names); got != c.want {
			t.Errorf("hostname(%q, %d, %q, %q, %q, %v) = %q, want %q", c.ip, c.port, c.ns, c.pod, c.svc, c.names, got, c.want)
		}
	}
	// From Hubble's Test_getHostNames: services, DNS names, Ethernet.
	src, dst := p.hostNames(&Flow{
		IP:                 &IP{Source: "1.1.1.1", Destination: "2.2.2.2"},
		L4:                 &Layer4{UDP: &UDP{SourcePort: 55555, DestinationPort: 53}},
		SourceService:      &Service{Name: "xwing", Namespace: "default"},
		DestinationService: &Service{Name: "tiefighter", Namespace: "deathstar"},
	})
	if src != "default/xwing:55555" || dst != "deathstar/tiefighter:53" {
		t.Errorf("services: %q %q", src, dst)
	}
	src, dst = p.hostNames(&Flow{
		IP:               &IP{Source: "1.1.1.1", Destination: "2.2.2.2"},
		L4:               &Layer4{TCP: &TCP{SourcePort: 54321, DestinationPort: 65432}},
		SourceNames:      []string{"a"},
		DestinationNames: []string{"b"},
	})
	if src != "a:54321" || dst != "b:65432" {
		t.Errorf("names: %q %q", src, dst)
	}
	src, dst = p.hostNames(&Flow{Ethernet: &Ethernet{Source: "00:01:02:03:04:05", Destination: "06:07:08:09:0a:0b"}})
	if src != "00:01:02:03:04:05" || dst != "06:07:08:09:0a:0b" {
		t.Errorf("ethernet: %q %q", src, dst)
	}
}

func TestFlowTypeText(t *testing.T) {
	// From Hubble's Test_getFlowType.
	for _, c := range []struct {
		f    *Flow
		want string
	}{
		{&Flow{L7: &Layer7{Type: L7Request}, EventType: &CiliumEventType{Type: MessageTypeAccessLog}}, "l7-request"},
		{&Flow{L7: &Layer7{Type: L7Response, HTTP: &HTTP{}}}, "http-response"},
		{&Flow{L7: &Layer7{Type: L7Request, DNS: &DNS{ObservationSource: "proxy"}}}, "dns-request proxy"},
		{&Flow{L7: &Layer7{Type: L7Request, Kafka: &Kafka{}}}, "kafka-request"},
		{&Flow{EventType: &CiliumEventType{Type: MessageTypeTrace, SubType: TraceToHost}}, "to-host"},
		{&Flow{EventType: &CiliumEventType{Type: MessageTypeTrace, SubType: TraceToLxc}}, "to-endpoint"},
		{&Flow{Verdict: Forwarded, EventType: &CiliumEventType{Type: MessageTypePolicyVerdict}, PolicyMatchType: PolicyMatchL3L4, TrafficDirection: Ingress}, "policy-verdict:L3-L4 INGRESS"},
		{&Flow{Verdict: Dropped, EventType: &CiliumEventType{Type: MessageTypePolicyVerdict}, DropReason: 153, TrafficDirection: Ingress}, "policy-verdict:none INGRESS"},
		{&Flow{EventType: &CiliumEventType{Type: MessageTypeDrop, SubType: 181}}, "Policy denied by denylist"},
		{&Flow{EventType: &CiliumEventType{Type: MessageTypeTrace, SubType: 123}}, "123"},
		{nil, "UNKNOWN"},
		{&Flow{}, "UNKNOWN"},
	} {
		if got := FlowTypeText(c.f); got != c.want {
			t.Errorf("FlowTypeText(%+v) = %q, want %q", c.f, got, c.want)
		}
	}
}

func TestPrinterNetpactPolicies(t *testing.T) {
	f := hubbleTestFlow()
	f.Source = &Endpoint{Identity: 1001, Namespace: "ns", PodName: "client"}
	f.Destination = &Endpoint{Identity: 1002, Namespace: "ns", PodName: "server"}
	f.TrafficDirection = Ingress
	f.IngressDeniedBy = []*Policy{{
		Name: "deny-all", Namespace: "ns", Kind: "NetworkPolicy", Rule: "default deny",
		Source: &PolicySource{Repository: "git@example.com:pol.git", Path: "policies/ns.yaml", Line: 3, Column: 1, GitRevision: "4e3edc5"},
	}}
	r := &GetFlowsResponse{Flow: f}
	want := "Jan  1 00:20:34.567: ns/client:31793 (ID:1001) -> ns/server:8080 (ID:1002) Policy denied DROPPED" +
		" BY ns/deny-all (NetworkPolicy) default deny at policies/ns.yaml:3:1 @ 4e3edc5 in git@example.com:pol.git (TCP Flags: SYN)\n"
	if got := printOne(t, PrinterOptions{PolicyNames: true}, r); got != want {
		t.Errorf("\n got %q\nwant %q", got, want)
	}
	// Without PolicyNames the line is Hubble's.
	want = "Jan  1 00:20:34.567: ns/client:31793 (ID:1001) -> ns/server:8080 (ID:1002) Policy denied DROPPED (TCP Flags: SYN)\n"
	if got := printOne(t, PrinterOptions{}, r); got != want {
		t.Errorf("\n got %q\nwant %q", got, want)
	}
	// A flow of no known direction names the policies of both, egress first.
	g := hubbleTestFlow()
	g.Verdict = Forwarded
	g.EventType = &CiliumEventType{Type: MessageTypeTrace, SubType: TraceToLxc}
	g.EgressAllowedBy = []*Policy{{Name: "out", Namespace: "a", Kind: "NetworkPolicy", Rule: "egress[0]"}}
	g.IngressAllowedBy = []*Policy{{Name: "in", Namespace: "b", Kind: "NetworkPolicy", Rule: "ingress[1]"}}
	got := printOne(t, PrinterOptions{PolicyNames: true}, &GetFlowsResponse{Flow: g})
	if !strings.Contains(got, " to-endpoint FORWARDED BY a/out (NetworkPolicy) egress[0], b/in (NetworkPolicy) ingress[1] (") {
		t.Errorf("both directions: %q", got)
	}
}

func TestPrinterLostWithoutCPU(t *testing.T) {
	r := &GetFlowsResponse{
		Time:       TimestampOf(time.Unix(1234, 567800000)),
		LostEvents: &LostEvent{Source: RateLimited, NumEventsLost: 12},
	}
	if got := printOne(t, PrinterOptions{}, r); got != "Jan  1 00:20:34.567 EVENTS LOST: RATE_LIMITED 12\n" {
		t.Errorf("got %q", got)
	}
}

func TestPrinterTableHeaderOnce(t *testing.T) {
	got := printOne(t, PrinterOptions{Output: OutputTable}, &GetFlowsResponse{Flow: hubbleTestFlow()}, &GetFlowsResponse{Flow: hubbleTestFlow()})
	if n := strings.Count(got, "TIMESTAMP"); n != 1 {
		t.Errorf("%d headers in %q", n, got)
	}
	if n := strings.Count(got, "\n"); n != 3 {
		t.Errorf("%d lines in %q", n, got)
	}
	if _, err := NewPrinter(&bytes.Buffer{}, PrinterOptions{Output: "yaml"}); err == nil {
		t.Error("unknown output accepted")
	}
}

func TestSummarize(t *testing.T) {
	for _, c := range []struct {
		f    *Flow
		want string
	}{
		{&Flow{L4: &Layer4{TCP: &TCP{Flags: &TCPFlags{SYN: true, ACK: true}}}}, "TCP Flags: SYN, ACK"},
		{&Flow{L4: &Layer4{TCP: &TCP{Flags: &TCPFlags{FIN: true, ACK: true, PSH: true}}}}, "TCP Flags: ACK, FIN, PSH"},
		{&Flow{L4: &Layer4{UDP: &UDP{}}}, "UDP"},
		{&Flow{L4: &Layer4{ICMPv4: &ICMPv4{Type: 8}}}, "ICMPv4 EchoRequest"},
		{&Flow{L4: &Layer4{ICMPv4: &ICMPv4{Type: 3, Code: 3}}}, "ICMPv4 DestinationUnreachable(Port)"},
		{&Flow{L4: &Layer4{ICMPv6: &ICMPv6{Type: 129}}}, "ICMPv6 EchoReply"},
		{&Flow{L7: &Layer7{Type: L7Request, HTTP: &HTTP{Protocol: "HTTP/1.1", Method: "GET", URL: "http://svc/path"}}}, "HTTP/1.1 GET http://svc/path"},
		{&Flow{L7: &Layer7{Type: L7Response, LatencyNs: 12_500_000, HTTP: &HTTP{Code: 200, Protocol: "HTTP/1.1", Method: "GET", URL: "http://svc/path"}}}, "HTTP/1.1 200 12ms (GET http://svc/path)"},
		{&Flow{L7: &Layer7{Type: L7Request, DNS: &DNS{Query: "name.", Qtypes: []string{"A"}}}}, "DNS Query name. A"},
		{&Flow{L7: &Layer7{Type: L7Response, DNS: &DNS{Query: "name.", Qtypes: []string{"A"}, IPs: []string{"1.2.3.4"}, TTL: 30, ObservationSource: "proxy"}}}, `DNS Answer "1.2.3.4" TTL: 30 (Proxy name. A)`},
		{&Flow{L7: &Layer7{Type: L7Response, DNS: &DNS{Query: "x.", Qtypes: []string{"AAAA"}, Rcode: 3}}}, "DNS Answer RCode: Non-Existent Domain TTL: 0 (Query x. AAAA)"},
	} {
		if got := Summarize(c.f); got != c.want {
			t.Errorf("Summarize = %q, want %q", got, c.want)
		}
	}
}
