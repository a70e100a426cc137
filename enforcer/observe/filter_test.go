package observe

import (
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

func filterTestFlows() map[string]*Flow {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	return map[string]*Flow{
		"tcp-drop": {
			Time: TimestampOf(t0), Verdict: Dropped, NodeName: "kind-worker",
			Source:      &Endpoint{Namespace: "app", PodName: "client-7d9f"},
			Destination: &Endpoint{Namespace: "db", PodName: "postgres-0"},
			L4:          &Layer4{TCP: &TCP{SourcePort: 40000, DestinationPort: 5432}},
			EventType:   &CiliumEventType{Type: MessageTypeDrop, SubType: 133},
		},
		"dns": {
			Time: TimestampOf(t0.Add(time.Minute)), Verdict: Forwarded, NodeName: "kind-worker2",
			Source:      &Endpoint{Namespace: "app", PodName: "client-7d9f"},
			Destination: &Endpoint{Namespace: "kube-system", PodName: "coredns-1"},
			L4:          &Layer4{UDP: &UDP{SourcePort: 33333, DestinationPort: 53}},
			L7:          &Layer7{Type: L7Request, DNS: &DNS{Query: "db."}},
			EventType:   &CiliumEventType{Type: MessageTypeAccessLog},
		},
		"icmp-trace": {
			Time: TimestampOf(t0.Add(2 * time.Minute)), Verdict: Forwarded, NodeName: "kind-worker",
			Source:      &Endpoint{Namespace: "db", PodName: "postgres-0"},
			Destination: &Endpoint{Identity: 2},
			L4:          &Layer4{ICMPv6: &ICMPv6{Type: 128}},
			EventType:   &CiliumEventType{Type: MessageTypeTrace, SubType: TraceToStack},
		},
		"policy-verdict": {
			Time: TimestampOf(t0.Add(3 * time.Minute)), Verdict: Audit, NodeName: "kind-worker",
			Source:      &Endpoint{Namespace: "app", PodName: "web-1"},
			Destination: &Endpoint{Namespace: "app", PodName: "api-2"},
			L4:          &Layer4{TCP: &TCP{SourcePort: 41000, DestinationPort: 8080}},
			EventType:   &CiliumEventType{Type: MessageTypePolicyVerdict},
		},
	}
}

func TestFilterMatch(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		f    Filter
		want []string
	}{
		{"empty", Filter{}, []string{"dns", "icmp-trace", "policy-verdict", "tcp-drop"}},
		{"verdict", Filter{Verdicts: []string{"DROPPED", "audit"}}, []string{"policy-verdict", "tcp-drop"}},
		{"pod prefix either side", Filter{Pods: []string{"postgres"}}, []string{"icmp-trace", "tcp-drop"}},
		{"pod with namespace", Filter{Pods: []string{"kube-system/core"}}, []string{"dns"}},
		{"pod wrong namespace", Filter{Pods: []string{"app/postgres"}}, nil},
		{"namespace only pod selector", Filter{Pods: []string{"db/"}}, []string{"icmp-trace", "tcp-drop"}},
		{"from-pod", Filter{FromPods: []string{"app/client"}}, []string{"dns", "tcp-drop"}},
		{"to-pod", Filter{ToPods: []string{"app/"}}, []string{"policy-verdict"}},
		{"namespace either side", Filter{Namespaces: []string{"kube-system", "db"}}, []string{"dns", "icmp-trace", "tcp-drop"}},
		{"port either side", Filter{Ports: []uint16{53, 41000}}, []string{"dns", "policy-verdict"}},
		{"protocol tcp", Filter{Protocols: []string{"tcp"}}, []string{"policy-verdict", "tcp-drop"}},
		{"protocol icmp covers v6", Filter{Protocols: []string{"icmp"}}, []string{"icmp-trace"}},
		{"protocol icmpv4", Filter{Protocols: []string{"icmpv4"}}, nil},
		{"protocol dns", Filter{Protocols: []string{"dns"}}, []string{"dns"}},
		{"type drop", Filter{Types: []string{"drop"}}, []string{"tcp-drop"}},
		{"type l7", Filter{Types: []string{"l7"}}, []string{"dns"}},
		{"type dns", Filter{Types: []string{"dns"}}, []string{"dns"}},
		{"type http", Filter{Types: []string{"http"}}, nil},
		{"type policy-verdict or trace", Filter{Types: []string{"policy-verdict", "trace"}}, []string{"icmp-trace", "policy-verdict"}},
		{"type trace subtype", Filter{Types: []string{"trace:to-stack"}}, []string{"icmp-trace"}},
		{"type trace other subtype", Filter{Types: []string{"trace:to-endpoint"}}, nil},
		{"type drop code", Filter{Types: []string{"drop:133"}}, []string{"tcp-drop"}},
		{"since", Filter{Since: t0.Add(90 * time.Second)}, []string{"icmp-trace", "policy-verdict"}},
		{"until", Filter{Until: t0.Add(time.Minute)}, []string{"dns", "tcp-drop"}},
		{"node pattern", Filter{Nodes: []string{"kind-worker2", "nope*"}}, []string{"dns"}},
		{"flags AND", Filter{Verdicts: []string{"FORWARDED"}, Namespaces: []string{"db"}}, []string{"icmp-trace"}},
		{"flags AND none", Filter{Verdicts: []string{"DROPPED"}, Protocols: []string{"udp"}}, nil},
	}
	flows := filterTestFlows()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.f.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			var got []string
			for _, name := range []string{"dns", "icmp-trace", "policy-verdict", "tcp-drop"} {
				if tt.f.Match(flows[name]) {
					got = append(got, name)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("matched %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFilterQueryRoundTrip(t *testing.T) {
	f := Filter{
		Verdicts: []string{"DROPPED", "FORWARDED"}, Pods: []string{"app/client"}, Namespaces: []string{"db"},
		FromPods: []string{"a"}, ToPods: []string{"b/c"}, Ports: []uint16{53, 80}, Protocols: []string{"tcp", "dns"},
		Types: []string{"trace:to-endpoint", "drop"}, Since: time.Date(2025, 1, 1, 0, 0, 0, 5, time.UTC),
		Until: time.Date(2025, 1, 2, 0, 0, 0, 0, time.UTC), Nodes: []string{"kind-*"}, Last: 20, Follow: true,
	}
	got, err := ParseFilterQuery(f.Query())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, f) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, f)
	}
	if q := (Filter{}).Query(); len(q) != 0 {
		t.Errorf("empty filter query %v", q)
	}
}

func TestParseFilterQueryErrors(t *testing.T) {
	for _, c := range []struct{ query, param string }{
		{"verdict=MAYBE", "verdict"},
		{"port=0", "port"},
		{"port=70000", "port"},
		{"protocol=gre", "protocol"},
		{"type=bogus", "type"},
		{"type=trace:nowhere", "type"},
		{"type=dns:1", "type"},
		{"since=yesterday", "since"},
		{"until=2025-01-01T00:00:00Z&until=2025-01-02T00:00:00Z", "until"},
		{"last=-1", "last"},
		{"follow=yes", "follow"},
		{"pod=a/b/c", "pod"},
		{"node=[", "node"},
		{"colour=red", "colour"},
		{"ip=not-an-ip", "ip"},
		{"from-ip=10.0.0.1%00", "from-ip"},
		{strings.Repeat("pod=a&", MaxFilterValues+1), "pod"},
	} {
		q, _ := url.ParseQuery(c.query)
		_, err := ParseFilterQuery(q)
		if err == nil || !strings.Contains(err.Error(), `"`+c.param+`"`) {
			t.Errorf("%s: error %v does not name %q", c.query, err, c.param)
		}
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"5m":                        now.Add(-5 * time.Minute),
		"1h30m":                     now.Add(-90 * time.Minute),
		"2024-12-31T23:00:00Z":      time.Date(2024, 12, 31, 23, 0, 0, 0, time.UTC),
		"2024-12-31T23:00:00.5Z":    time.Date(2024, 12, 31, 23, 0, 0, 5e8, time.UTC),
		"2025-01-01T13:00:00+01:00": time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC),
	} {
		got, err := ParseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-5m", "yesterday", "2025-01-01"} {
		if _, err := ParseTime(in, now); err == nil {
			t.Errorf("ParseTime(%q) accepted", in)
		}
	}
}

func TestMatchResponseLostEvents(t *testing.T) {
	le := &GetFlowsResponse{
		LostEvents: &LostEvent{Source: HubbleRingBuffer, NumEventsLost: 3},
		Time:       TimestampOf(time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)),
		NodeName:   "kind-worker",
	}
	if !(Filter{Verdicts: []string{"DROPPED"}, Pods: []string{"x"}}).MatchResponse(le) {
		t.Error("flow conditions hid a loss")
	}
	if (Filter{Since: time.Date(2025, 1, 2, 0, 0, 0, 0, time.UTC)}).MatchResponse(le) {
		t.Error("a loss before since matched")
	}
	if (Filter{Nodes: []string{"other"}}).MatchResponse(le) {
		t.Error("a loss of another node matched")
	}
	// A flow without its own node name takes the response's.
	r := &GetFlowsResponse{Flow: &Flow{}, NodeName: "kind-worker"}
	if !(Filter{Nodes: []string{"kind-*"}}).MatchResponse(r) {
		t.Error("response node name ignored")
	}
}
