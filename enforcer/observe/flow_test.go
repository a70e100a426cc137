package observe

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// realDropped is a flow printed by `hubble observe -o json` against Cilium
// 1.18 (identifiers shortened).
const realDropped = `{"flow":{"time":"2025-01-01T00:00:00.000000000Z","uuid":"x","verdict":"DROPPED","drop_reason":133,"IP":{"source":"10.244.3.30","destination":"1.1.1.1","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":48748,"destination_port":80,"flags":{"SYN":true}}},"source":{"ID":1238,"identity":24009,"cluster_name":"default","namespace":"cilium-test-5","labels":["k8s:io.kubernetes.pod.namespace=cilium-test-5","k8s:kind=client"],"pod_name":"client-abc","workloads":[{"name":"client","kind":"Deployment"}]},"destination":{"identity":9,"labels":["reserved:world-ipv4"]},"Type":"L3_L4","node_name":"kind-worker2","destination_names":["one.one.one.one"],"event_type":{"type":5},"traffic_direction":"EGRESS","drop_reason_desc":"POLICY_DENIED","Summary":"TCP Flags: SYN"},"node_name":"kind-worker2","time":"2025-01-01T00:00:00.000000000Z"}`

func realDroppedFlow() *GetFlowsResponse {
	ts := TimestampOf(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	return &GetFlowsResponse{
		Flow: &Flow{
			Time:       ts,
			UUID:       "x",
			Verdict:    Dropped,
			DropReason: PolicyDenied.Code(),
			IP:         &IP{Source: "10.244.3.30", Destination: "1.1.1.1", IPVersion: IPv4},
			L4:         &Layer4{TCP: &TCP{SourcePort: 48748, DestinationPort: 80, Flags: &TCPFlags{SYN: true}}},
			Source: &Endpoint{
				ID: 1238, Identity: 24009, ClusterName: "default", Namespace: "cilium-test-5",
				Labels:    []string{"k8s:io.kubernetes.pod.namespace=cilium-test-5", "k8s:kind=client"},
				PodName:   "client-abc",
				Workloads: []*Workload{{Name: "client", Kind: "Deployment"}},
			},
			Destination:      &Endpoint{Identity: 9, Labels: []string{"reserved:world-ipv4"}},
			Type:             L3L4,
			NodeName:         "kind-worker2",
			DestinationNames: []string{"one.one.one.one"},
			EventType:        &CiliumEventType{Type: MessageTypePolicyVerdict},
			TrafficDirection: Egress,
			DropReasonDesc:   PolicyDenied,
			Summary:          "TCP Flags: SYN",
		},
		NodeName: "kind-worker2",
		Time:     ts,
	}
}

func TestMarshalMatchesHubble(t *testing.T) {
	got, err := json.Marshal(realDroppedFlow())
	if err != nil {
		t.Fatal(err)
	}
	// protojson prints a whole second without fractional digits; the rest
	// of the line is byte for byte Hubble's.
	want := strings.ReplaceAll(realDropped, "00:00:00.000000000Z", "00:00:00Z")
	if string(got) != want {
		t.Errorf("marshal:\n got %s\nwant %s", got, want)
	}
}

func TestMarshalGoldenHubble(t *testing.T) {
	// Expected strings from Hubble's hubble/pkg/printer/printer_test.go.
	tests := []struct {
		name string
		in   any
		want string
	}{{
		name: "jsonpb flow",
		in:   &GetFlowsResponse{Flow: hubbleTestFlow()},
		want: `{"flow":{"time":"1970-01-01T00:20:34.567800Z","verdict":"DROPPED","IP":{"source":"1.1.1.1","destination":"2.2.2.2"},"l4":{"TCP":{"source_port":31793,"destination_port":8080}},"source":{"identity":4},"destination":{"identity":12345},"Type":"L3_L4","node_name":"k8s1","event_type":{"type":1,"sub_type":133},"is_reply":false,"Summary":"TCP Flags: SYN"}}`,
	}, {
		name: "lost events",
		in:   hubbleTestLost("node-name", false),
		want: `{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"1","cpu":5},"node_name":"node-name","time":"1970-01-01T00:20:34.567800Z"}`,
	}, {
		name: "lost events with timestamps",
		in:   hubbleTestLost("", true),
		want: `{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"1","cpu":5,"first":"1970-01-01T00:20:30.567800Z","last":"1970-01-01T00:20:38.567800Z"},"time":"1970-01-01T00:20:34.567800Z"}`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := json.Marshal(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestMarshalStringsAndOmissions(t *testing.T) {
	f := &Flow{
		L7: &Layer7{Type: L7Response, LatencyNs: 1500000, HTTP: &HTTP{Code: 200, Method: "GET"}},
		EgressDeniedBy: []*Policy{{
			Name: "deny", Namespace: "ns", Revision: 7, Kind: "NetworkPolicy",
			Rule: "default deny", Direction: Egress,
			Source: &PolicySource{Path: "p.yaml", Line: 3, Column: 1},
		}},
		IsReply: Bool(false),
	}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"l7":{"type":"RESPONSE","latency_ns":"1500000","http":{"code":200,"method":"GET"}},"is_reply":false,` +
		`"egress_denied_by":[{"name":"deny","namespace":"ns","revision":"7","kind":"NetworkPolicy","rule":"default deny","direction":"EGRESS","source":{"path":"p.yaml","line":3,"column":1}}]}`
	if string(b) != want {
		t.Errorf("\n got %s\nwant %s", b, want)
	}
	// Zero values, enums at value 0 included, are left out as protojson does.
	b, err = json.Marshal(&Flow{Verdict: VerdictUnknown, IP: &IP{}, L7: &Layer7{}})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"IP":{},"l7":{}}` {
		t.Errorf("zero values: got %s", b)
	}
}

func TestUnmarshalRealLineRoundTrip(t *testing.T) {
	var r GetFlowsResponse
	if err := json.Unmarshal([]byte(realDropped), &r); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&r, realDroppedFlow()) {
		t.Fatalf("decoded flow differs:\n got %+v\nwant %+v", r.Flow, realDroppedFlow().Flow)
	}
	if r.Flow.DropReasonDesc.Code() != r.Flow.DropReason {
		t.Errorf("drop reason code %d, desc %s", r.Flow.DropReason, r.Flow.DropReasonDesc)
	}
	out, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	// Every key and value of the original survives, times compared as times.
	var a, b map[string]any
	if err := json.Unmarshal([]byte(realDropped), &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &b); err != nil {
		t.Fatal(err)
	}
	normalizeTimes(a)
	normalizeTimes(b)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("round trip lost data:\n in  %v\n out %v", a, b)
	}
}

func normalizeTimes(m map[string]any) {
	for k, v := range m {
		switch v := v.(type) {
		case map[string]any:
			normalizeTimes(v)
		case string:
			if k == "time" {
				if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
					m[k] = t.UTC().Format(time.RFC3339Nano)
				}
			}
		}
	}
}

func TestTimestampDigits(t *testing.T) {
	for ns, want := range map[int]string{
		0:         `"2025-01-01T00:00:00Z"`,
		5e8:       `"2025-01-01T00:00:00.500Z"`,
		567800000: `"2025-01-01T00:00:00.567800Z"`,
		1:         `"2025-01-01T00:00:00.000000001Z"`,
	} {
		b, _ := json.Marshal(TimestampOf(time.Date(2025, 1, 1, 0, 0, 0, ns, time.FixedZone("x", 3600)).Add(time.Hour)))
		if string(b) != want {
			t.Errorf("%d ns: got %s, want %s", ns, b, want)
		}
	}
}

func TestDropReasons(t *testing.T) {
	if PolicyDenied.Code() != 133 || PolicyDeny.Code() != 181 {
		t.Errorf("codes: %d %d", PolicyDenied.Code(), PolicyDeny.Code())
	}
	if DropReasonFromCode(181) != PolicyDeny || DropReasonFromCode(1) != DropReasonUnknown {
		t.Error("DropReasonFromCode")
	}
	for code, want := range map[uint32]string{133: "Policy denied", 181: "Policy denied by denylist", 250: "250, 0"} {
		if got := DropReasonText(code); got != want {
			t.Errorf("DropReasonText(%d) = %q, want %q", code, got, want)
		}
	}
	if DropReasonUnknown.String() != "DROP_REASON_UNKNOWN" || VerdictUnknown.String() != "VERDICT_UNKNOWN" {
		t.Error("zero enum names")
	}
}

func TestMain(m *testing.M) {
	// Printers format times in the local zone, as Hubble's do; the expected
	// lines (Hubble's among them) are in UTC. Set once, before any test
	// goroutine reads it.
	time.Local = time.UTC
	os.Exit(m.Run())
}
