package observe

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// The types below mirror the messages of Cilium's api/v1/flow/flow.proto and
// api/v1/observer/observer.proto as protojson prints them with UseProtoNames:
// proto field names as keys, enums as their value NAMES, 64-bit integers as
// strings, and fields at their zero value left out. Enums are typed strings
// whose zero value "" stands for the proto's value 0 (protojson leaves it
// out); their String method prints the proto name of value 0 for it, as
// Hubble's printer does.
//
// Struct fields are declared in flow.proto's declaration order, which is the
// order protojson prints keys in.

// GetFlowsResponse is one record of a flow stream: a flow or a lost-events
// notice, with the node it was observed on and its time.
type GetFlowsResponse struct {
	Flow       *Flow      `json:"flow,omitempty"`
	LostEvents *LostEvent `json:"lost_events,omitempty"`
	NodeName   string     `json:"node_name,omitempty"`
	Time       *Timestamp `json:"time,omitempty"`
}

// Flow is one observed packet, connection event or L7 record.
type Flow struct {
	Time    *Timestamp `json:"time,omitempty"`
	UUID    string     `json:"uuid,omitempty"`
	Verdict Verdict    `json:"verdict,omitempty"`
	// DropReason is deprecated in flow.proto in favour of DropReasonDesc, but
	// Hubble still fills it, so it is kept for output parity.
	DropReason       uint32    `json:"drop_reason,omitempty"`
	Ethernet         *Ethernet `json:"ethernet,omitempty"`
	IP               *IP       `json:"IP,omitempty"`
	L4               *Layer4   `json:"l4,omitempty"`
	Source           *Endpoint `json:"source,omitempty"`
	Destination      *Endpoint `json:"destination,omitempty"`
	Type             FlowType  `json:"Type,omitempty"`
	NodeName         string    `json:"node_name,omitempty"`
	SourceNames      []string  `json:"source_names,omitempty"`
	DestinationNames []string  `json:"destination_names,omitempty"`
	L7               *Layer7   `json:"l7,omitempty"`
	// EventType is the monitor message type the flow came from (see the
	// MessageType constants); it decides how printers name the flow.
	EventType          *CiliumEventType `json:"event_type,omitempty"`
	SourceService      *Service         `json:"source_service,omitempty"`
	DestinationService *Service         `json:"destination_service,omitempty"`
	TrafficDirection   TrafficDirection `json:"traffic_direction,omitempty"`
	// PolicyMatchType is only meaningful on policy-verdict events (see the
	// PolicyMatch constants).
	PolicyMatchType       uint32                `json:"policy_match_type,omitempty"`
	TraceObservationPoint TraceObservationPoint `json:"trace_observation_point,omitempty"`
	DropReasonDesc        DropReason            `json:"drop_reason_desc,omitempty"`
	// IsReply is a pointer because protobuf's BoolValue tells "not a reply"
	// (false) from "unknown" (absent), and the printers show the two apart.
	IsReply   *bool  `json:"is_reply,omitempty"`
	ProxyPort uint32 `json:"proxy_port,omitempty"`

	EgressAllowedBy  []*Policy `json:"egress_allowed_by,omitempty"`
	IngressAllowedBy []*Policy `json:"ingress_allowed_by,omitempty"`
	EgressDeniedBy   []*Policy `json:"egress_denied_by,omitempty"`
	IngressDeniedBy  []*Policy `json:"ingress_denied_by,omitempty"`

	// Summary is deprecated in flow.proto but it is what Hubble prints in
	// the last column; see Summarize for a flow that has none.
	Summary string `json:"Summary,omitempty"`
}

// Ethernet is the L2 header of a flow.
type Ethernet struct {
	Source      string `json:"source,omitempty"`
	Destination string `json:"destination,omitempty"`
}

// IP is the L3 header of a flow.
type IP struct {
	Source      string    `json:"source,omitempty"`
	Destination string    `json:"destination,omitempty"`
	IPVersion   IPVersion `json:"ipVersion,omitempty"`
	Encrypted   bool      `json:"encrypted,omitempty"`
}

// Layer4 holds one of the L4 protocols (a oneof in flow.proto).
type Layer4 struct {
	TCP    *TCP    `json:"TCP,omitempty"`
	UDP    *UDP    `json:"UDP,omitempty"`
	ICMPv4 *ICMPv4 `json:"ICMPv4,omitempty"`
	ICMPv6 *ICMPv6 `json:"ICMPv6,omitempty"`
	SCTP   *SCTP   `json:"SCTP,omitempty"`
}

// TCP is a TCP header.
type TCP struct {
	SourcePort      uint32    `json:"source_port,omitempty"`
	DestinationPort uint32    `json:"destination_port,omitempty"`
	Flags           *TCPFlags `json:"flags,omitempty"`
}

// TCPFlags are the flags of a TCP header, in flow.proto's order.
type TCPFlags struct {
	FIN bool `json:"FIN,omitempty"`
	SYN bool `json:"SYN,omitempty"`
	RST bool `json:"RST,omitempty"`
	PSH bool `json:"PSH,omitempty"`
	ACK bool `json:"ACK,omitempty"`
	URG bool `json:"URG,omitempty"`
	ECE bool `json:"ECE,omitempty"`
	CWR bool `json:"CWR,omitempty"`
	NS  bool `json:"NS,omitempty"`
}

// UDP is a UDP header.
type UDP struct {
	SourcePort      uint32 `json:"source_port,omitempty"`
	DestinationPort uint32 `json:"destination_port,omitempty"`
}

// SCTP is an SCTP header.
type SCTP struct {
	SourcePort      uint32 `json:"source_port,omitempty"`
	DestinationPort uint32 `json:"destination_port,omitempty"`
}

// ICMPv4 is an ICMPv4 header.
type ICMPv4 struct {
	Type uint32 `json:"type,omitempty"`
	Code uint32 `json:"code,omitempty"`
}

// ICMPv6 is an ICMPv6 header.
type ICMPv6 struct {
	Type uint32 `json:"type,omitempty"`
	Code uint32 `json:"code,omitempty"`
}

// Endpoint is one end of a flow.
type Endpoint struct {
	ID          uint32      `json:"ID,omitempty"`
	Identity    uint32      `json:"identity,omitempty"`
	ClusterName string      `json:"cluster_name,omitempty"`
	Namespace   string      `json:"namespace,omitempty"`
	Labels      []string    `json:"labels,omitempty"`
	PodName     string      `json:"pod_name,omitempty"`
	Workloads   []*Workload `json:"workloads,omitempty"`
}

// Workload is the controller owning a pod.
type Workload struct {
	Name string `json:"name,omitempty"`
	Kind string `json:"kind,omitempty"`
}

// Service names the Kubernetes Service of a flow's end.
type Service struct {
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// CiliumEventType is the monitor message type (and subtype) a flow came from.
type CiliumEventType struct {
	Type    int32 `json:"type,omitempty"`
	SubType int32 `json:"sub_type,omitempty"`
}

// Monitor message types (Cilium's pkg/monitor/api MessageType*), the values of
// CiliumEventType.Type.
const (
	MessageTypeDrop          = 1
	MessageTypeDebug         = 2
	MessageTypeCapture       = 3
	MessageTypeTrace         = 4
	MessageTypePolicyVerdict = 5
	MessageTypeTraceSock     = 7
	MessageTypeAccessLog     = 129
	MessageTypeAgent         = 130
)

// Trace observation points (Cilium's pkg/monitor/api Trace*), the values of
// CiliumEventType.SubType on trace events.
const (
	TraceToLxc = iota
	TraceToProxy
	TraceToHost
	TraceToStack
	TraceToOverlay
	TraceFromLxc
	TraceFromProxy
	TraceFromHost
	TraceFromStack
	TraceFromOverlay
	TraceFromNetwork
	TraceToNetwork
)

// Policy match types of policy-verdict events (Cilium's pkg/monitor/api
// PolicyMatch*), the values of Flow.PolicyMatchType.
const (
	PolicyMatchNone      = 0
	PolicyMatchL3Only    = 1
	PolicyMatchL3L4      = 2
	PolicyMatchL4Only    = 3
	PolicyMatchAll       = 4
	PolicyMatchL3Proto   = 5
	PolicyMatchProtoOnly = 6
)

// Layer7 is an L7 record (from the DNS or HTTP proxy).
type Layer7 struct {
	Type L7FlowType `json:"type,omitempty"`
	// LatencyNs is a uint64 in flow.proto, so protojson prints it as a string.
	LatencyNs uint64 `json:"latency_ns,omitempty,string"`
	DNS       *DNS   `json:"dns,omitempty"`
	HTTP      *HTTP  `json:"http,omitempty"`
	Kafka     *Kafka `json:"kafka,omitempty"`
}

// DNS is a DNS query or answer.
type DNS struct {
	Query             string   `json:"query,omitempty"`
	IPs               []string `json:"ips,omitempty"`
	TTL               uint32   `json:"ttl,omitempty"`
	CNAMEs            []string `json:"cnames,omitempty"`
	ObservationSource string   `json:"observation_source,omitempty"`
	Rcode             uint32   `json:"rcode,omitempty"`
	Qtypes            []string `json:"qtypes,omitempty"`
	Rrtypes           []string `json:"rrtypes,omitempty"`
}

// HTTP is an HTTP request or response.
type HTTP struct {
	Code     uint32        `json:"code,omitempty"`
	Method   string        `json:"method,omitempty"`
	URL      string        `json:"url,omitempty"`
	Protocol string        `json:"protocol,omitempty"`
	Headers  []*HTTPHeader `json:"headers,omitempty"`
}

// HTTPHeader is one HTTP header line.
type HTTPHeader struct {
	Key   string `json:"key,omitempty"`
	Value string `json:"value,omitempty"`
}

// Kafka is a Kafka request or response.
type Kafka struct {
	ErrorCode     int32  `json:"error_code,omitempty"`
	APIVersion    int32  `json:"api_version,omitempty"`
	APIKey        string `json:"api_key,omitempty"`
	CorrelationID int32  `json:"correlation_id,omitempty"`
	Topic         string `json:"topic,omitempty"`
}

// Policy names a policy that allowed or denied a flow. Name, Namespace,
// Labels, Revision and Kind are Hubble's. Rule, Direction and Source are a
// netpact extension (Hubble's Policy has no such fields, and Hubble clients
// ignore them): they point at the rule of the policy that decided, and at the
// file it was loaded from.
type Policy struct {
	Name      string   `json:"name,omitempty"`
	Namespace string   `json:"namespace,omitempty"`
	Labels    []string `json:"labels,omitempty"`
	// Revision is a uint64 in flow.proto, so protojson prints it as a string.
	Revision uint64 `json:"revision,omitempty,string"`
	Kind     string `json:"kind,omitempty"`

	// Rule is the rule of the policy that decided, e.g. "ingress[0]" or
	// "default deny". netpact extension.
	Rule string `json:"rule,omitempty"`
	// Direction is the direction the rule is for. netpact extension.
	Direction TrafficDirection `json:"direction,omitempty"`
	// Source is where the policy was read from. netpact extension.
	Source *PolicySource `json:"source,omitempty"`
}

// PolicySource locates a policy in the repository it was deployed from.
// netpact extension: Hubble has no such message.
type PolicySource struct {
	Repository  string `json:"repository,omitempty"`
	Path        string `json:"path,omitempty"`
	Line        int    `json:"line,omitempty"`
	Column      int    `json:"column,omitempty"`
	GitRevision string `json:"git_revision,omitempty"`
}

// LostEvent tells a reader that events were lost before it could see them.
type LostEvent struct {
	Source LostEventSource `json:"source,omitempty"`
	// NumEventsLost is a uint64 in observer.proto: protojson prints a string.
	NumEventsLost uint64 `json:"num_events_lost,omitempty,string"`
	// CPU is an Int32Value wrapper in observer.proto, which protojson prints
	// as a bare number; nil when the loss is not per CPU.
	CPU *int32 `json:"cpu,omitempty"`
	// First and Last bound the time of the lost events when known.
	First *Timestamp `json:"first,omitempty"`
	Last  *Timestamp `json:"last,omitempty"`
}

// Verdict is flow.proto's Verdict enum.
type Verdict string

// Verdicts.
const (
	VerdictUnknown Verdict = ""
	Forwarded      Verdict = "FORWARDED"
	Dropped        Verdict = "DROPPED"
	Error          Verdict = "ERROR"
	Audit          Verdict = "AUDIT"
	Redirected     Verdict = "REDIRECTED"
	Traced         Verdict = "TRACED"
	Translated     Verdict = "TRANSLATED"
)

var verdictNames = []Verdict{Forwarded, Dropped, Error, Audit, Redirected, Traced, Translated}

func (v Verdict) String() string {
	if v == "" {
		return "VERDICT_UNKNOWN"
	}
	return string(v)
}

// FlowType is flow.proto's FlowType enum.
type FlowType string

// Flow types.
const (
	FlowTypeUnknown FlowType = ""
	L3L4            FlowType = "L3_L4"
	L7              FlowType = "L7"
	Sock            FlowType = "SOCK"
)

func (t FlowType) String() string {
	if t == "" {
		return "UNKNOWN_TYPE"
	}
	return string(t)
}

// IPVersion is flow.proto's IPVersion enum.
type IPVersion string

// IP versions.
const (
	IPNotUsed IPVersion = ""
	IPv4      IPVersion = "IPv4"
	IPv6      IPVersion = "IPv6"
)

func (v IPVersion) String() string {
	if v == "" {
		return "IP_NOT_USED"
	}
	return string(v)
}

// TrafficDirection is flow.proto's TrafficDirection enum.
type TrafficDirection string

// Traffic directions.
const (
	TrafficDirectionUnknown TrafficDirection = ""
	Ingress                 TrafficDirection = "INGRESS"
	Egress                  TrafficDirection = "EGRESS"
)

func (d TrafficDirection) String() string {
	if d == "" {
		return "TRAFFIC_DIRECTION_UNKNOWN"
	}
	return string(d)
}

// L7FlowType is flow.proto's L7FlowType enum.
type L7FlowType string

// L7 flow types.
const (
	L7TypeUnknown L7FlowType = ""
	L7Request     L7FlowType = "REQUEST"
	L7Response    L7FlowType = "RESPONSE"
	L7Sample      L7FlowType = "SAMPLE"
)

func (t L7FlowType) String() string {
	if t == "" {
		return "UNKNOWN_L7_TYPE"
	}
	return string(t)
}

// TraceObservationPoint is flow.proto's TraceObservationPoint enum.
type TraceObservationPoint string

// Trace observation points, as flow.proto names them.
const (
	UnknownPoint TraceObservationPoint = ""
	ToProxy      TraceObservationPoint = "TO_PROXY"
	ToHost       TraceObservationPoint = "TO_HOST"
	ToStack      TraceObservationPoint = "TO_STACK"
	ToOverlay    TraceObservationPoint = "TO_OVERLAY"
	ToEndpoint   TraceObservationPoint = "TO_ENDPOINT"
	FromEndpoint TraceObservationPoint = "FROM_ENDPOINT"
	FromProxy    TraceObservationPoint = "FROM_PROXY"
	FromHost     TraceObservationPoint = "FROM_HOST"
	FromStack    TraceObservationPoint = "FROM_STACK"
	FromOverlay  TraceObservationPoint = "FROM_OVERLAY"
	FromNetwork  TraceObservationPoint = "FROM_NETWORK"
	ToNetwork    TraceObservationPoint = "TO_NETWORK"
)

func (p TraceObservationPoint) String() string {
	if p == "" {
		return "UNKNOWN_POINT"
	}
	return string(p)
}

// LostEventSource is observer.proto's LostEventSource enum, plus RateLimited.
type LostEventSource string

// Lost event sources.
const (
	LostEventSourceUnknown LostEventSource = ""
	PerfEventRingBuffer    LostEventSource = "PERF_EVENT_RING_BUFFER"
	ObserverEventsQueue    LostEventSource = "OBSERVER_EVENTS_QUEUE"
	HubbleRingBuffer       LostEventSource = "HUBBLE_RING_BUFFER"
	// RateLimited counts events a per-pod rate limit held back. netpact
	// extension: Hubble's LostEventSource has no such value, so a Hubble
	// client decoding it with protojson rejects the record unless it
	// discards unknown values.
	RateLimited LostEventSource = "RATE_LIMITED"
)

func (s LostEventSource) String() string {
	if s == "" {
		return "UNKNOWN_LOST_EVENT_SOURCE"
	}
	return string(s)
}

// DropReason is flow.proto's DropReason enum; Code gives its number.
type DropReason string

// The drop reasons netpact's datapath can produce, and a few more that
// Hubble users meet often.
const (
	DropReasonUnknown         DropReason = ""
	InvalidSourceIP           DropReason = "INVALID_SOURCE_IP"
	PolicyDenied              DropReason = "POLICY_DENIED"
	InvalidPacketDropped      DropReason = "INVALID_PACKET_DROPPED"
	CTTruncatedOrInvalidHdr   DropReason = "CT_TRUNCATED_OR_INVALID_HEADER"
	CTUnknownL4Protocol       DropReason = "CT_UNKNOWN_L4_PROTOCOL"
	UnsupportedL3Protocol     DropReason = "UNSUPPORTED_L3_PROTOCOL"
	MissedTailCall            DropReason = "MISSED_TAIL_CALL"
	UnknownL4Protocol         DropReason = "UNKNOWN_L4_PROTOCOL"
	UnknownICMPv4Code         DropReason = "UNKNOWN_ICMPV4_CODE"
	UnknownICMPv4Type         DropReason = "UNKNOWN_ICMPV4_TYPE"
	UnknownICMPv6Code         DropReason = "UNKNOWN_ICMPV6_CODE"
	UnknownICMPv6Type         DropReason = "UNKNOWN_ICMPV6_TYPE"
	UnknownL3TargetAddress    DropReason = "UNKNOWN_L3_TARGET_ADDRESS"
	StaleOrUnroutableIP       DropReason = "STALE_OR_UNROUTABLE_IP"
	CTMapInsertionFailed      DropReason = "CT_MAP_INSERTION_FAILED"
	ServiceBackendNotFound    DropReason = "SERVICE_BACKEND_NOT_FOUND"
	UnsupportedL2Protocol     DropReason = "UNSUPPORTED_L2_PROTOCOL"
	FIBLookupFailed           DropReason = "FIB_LOOKUP_FAILED"
	InvalidIdentity           DropReason = "INVALID_IDENTITY"
	UnknownSender             DropReason = "UNKNOWN_SENDER"
	ForbiddenICMPv6Message    DropReason = "FORBIDDEN_ICMPV6_MESSAGE"
	PolicyDeny                DropReason = "POLICY_DENY"
	AuthRequired              DropReason = "AUTH_REQUIRED"
	TTLExceeded               DropReason = "TTL_EXCEEDED"
	NoNodeID                  DropReason = "NO_NODE_ID"
	DropHostNotReady          DropReason = "DROP_HOST_NOT_READY"
	DropEPNotReady            DropReason = "DROP_EP_NOT_READY"
	ProxyRedirectNotSupported DropReason = "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL"
)

// dropReasons lists, per drop reason code, flow.proto's enum name and the
// text Cilium's pkg/monitor/api/drop.go gives it (which Hubble prints as the
// type of drop events). An empty text means drop.go has none for the code.
var dropReasons = map[uint32]struct {
	name DropReason
	text string
}{
	132: {InvalidSourceIP, "Invalid source ip"},
	133: {PolicyDenied, "Policy denied"},
	134: {InvalidPacketDropped, "Invalid packet"},
	135: {CTTruncatedOrInvalidHdr, "CT: Truncated or invalid header"},
	137: {CTUnknownL4Protocol, "CT: Unknown L4 protocol"},
	139: {UnsupportedL3Protocol, "Unsupported L3 protocol"},
	140: {MissedTailCall, "Missed tail call"},
	142: {UnknownL4Protocol, "Unknown L4 protocol"},
	143: {UnknownICMPv4Code, "Unknown ICMPv4 code"},
	144: {UnknownICMPv4Type, "Unknown ICMPv4 type"},
	145: {UnknownICMPv6Code, "Unknown ICMPv6 code"},
	146: {UnknownICMPv6Type, "Unknown ICMPv6 type"},
	150: {UnknownL3TargetAddress, "Unknown L3 target address"},
	151: {StaleOrUnroutableIP, "Stale or unroutable IP"},
	155: {CTMapInsertionFailed, "CT: Map insertion failed"},
	158: {ServiceBackendNotFound, "Service backend not found"},
	166: {UnsupportedL2Protocol, "Unsupported L2 protocol"},
	169: {FIBLookupFailed, "FIB lookup failed"},
	171: {InvalidIdentity, "Invalid identity"},
	172: {UnknownSender, "Unknown sender"},
	176: {ForbiddenICMPv6Message, "Forbidden ICMPv6 message"},
	180: {ProxyRedirectNotSupported, "Proxy redirection not supported for protocol"},
	181: {PolicyDeny, "Policy denied by denylist"},
	189: {AuthRequired, "Authentication required"},
	196: {TTLExceeded, "TTL exceeded"},
	197: {NoNodeID, "No node ID found"},
	202: {DropHostNotReady, "Host datapath not ready"},
	203: {DropEPNotReady, ""},
}

var dropReasonCodes = func() map[DropReason]uint32 {
	m := make(map[DropReason]uint32, len(dropReasons))
	for code, r := range dropReasons {
		m[r.name] = code
	}
	return m
}()

// Code is the drop reason's number in flow.proto (0 when not known here).
func (r DropReason) Code() uint32 { return dropReasonCodes[r] }

func (r DropReason) String() string {
	if r == "" {
		return "DROP_REASON_UNKNOWN"
	}
	return string(r)
}

// DropReasonFromCode returns the enum value of a drop reason code; a code
// this package does not list gives DropReasonUnknown.
func DropReasonFromCode(code uint32) DropReason { return dropReasons[code].name }

// DropReasonText is the text Cilium's monitor gives a drop reason code, which
// Hubble prints as the type of a drop event: "Policy denied" for 133. A code
// without a text prints as Cilium prints it then: "<code>, 0" (the 0 is
// Cilium's extended error, which flows do not carry).
func DropReasonText(code uint32) string {
	if r, ok := dropReasons[code]; ok && r.text != "" {
		return r.text
	}
	return strconv.FormatUint(uint64(code), 10) + ", 0"
}

// Timestamp is a google.protobuf.Timestamp: in JSON an RFC 3339 time in UTC
// with 0, 3, 6 or 9 fractional digits, as protojson prints it.
type Timestamp struct {
	time.Time
}

// TimestampOf wraps t.
func TimestampOf(t time.Time) *Timestamp { return &Timestamp{Time: t} }

// MarshalJSON prints the timestamp as protojson does.
func (t Timestamp) MarshalJSON() ([]byte, error) {
	u := t.UTC()
	layout := "2006-01-02T15:04:05"
	switch ns := u.Nanosecond(); {
	case ns == 0:
	case ns%1e6 == 0:
		layout += ".000"
	case ns%1e3 == 0:
		layout += ".000000"
	default:
		layout += ".000000000"
	}
	return []byte(`"` + u.Format(layout) + `Z"`), nil
}

// UnmarshalJSON reads any RFC 3339 time.
func (t *Timestamp) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("timestamp: %w", err)
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return fmt.Errorf("timestamp: %w", err)
	}
	t.Time = v
	return nil
}

// Bool returns a pointer to b, for Flow.IsReply.
func Bool(b bool) *bool { return &b }

// Int32 returns a pointer to i, for LostEvent.CPU.
func Int32(i int32) *int32 { return &i }
