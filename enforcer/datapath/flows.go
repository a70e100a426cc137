package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

// Reason is why the datapath forwarded or dropped a packet; it indexes the counters.
type Reason uint8

// Reasons: bpf/lib/events.h's enum reason, through the constants bpf2go generates from it.
const (
	ReasonForwardPolicy     = Reason(bpf.TcReasonREASON_FORWARD_POLICY)
	ReasonForwardReply      = Reason(bpf.TcReasonREASON_FORWARD_REPLY)
	ReasonForwardRelated    = Reason(bpf.TcReasonREASON_FORWARD_RELATED)
	ReasonForwardUnenforced = Reason(bpf.TcReasonREASON_FORWARD_UNENFORCED)
	ReasonForwardARP        = Reason(bpf.TcReasonREASON_FORWARD_ARP)
	ReasonForwardND         = Reason(bpf.TcReasonREASON_FORWARD_ND)
	ReasonDropDeny          = Reason(bpf.TcReasonREASON_DROP_DENY)
	ReasonDropDefaultDeny   = Reason(bpf.TcReasonREASON_DROP_DEFAULT_DENY)
	ReasonDropSpoof         = Reason(bpf.TcReasonREASON_DROP_SPOOF)
	ReasonDropNotEndpoint   = Reason(bpf.TcReasonREASON_DROP_NOT_ENDPOINT)
	ReasonDropMalformed     = Reason(bpf.TcReasonREASON_DROP_MALFORMED)
	ReasonDropFragNoFirst   = Reason(bpf.TcReasonREASON_DROP_FRAG_NO_FIRST)
	ReasonDropNoProxy       = Reason(bpf.TcReasonREASON_DROP_NO_PROXY)
	ReasonDropEthertype     = Reason(bpf.TcReasonREASON_DROP_ETHERTYPE)
	ReasonDropFailClosed    = Reason(bpf.TcReasonREASON_DROP_FAIL_CLOSED)
	ReasonForwardRecovered  = Reason(bpf.TcReasonREASON_FORWARD_REPLY_RECOVERED)
	ReasonDropUntranslated  = Reason(bpf.TcReasonREASON_DROP_SERVICE_UNTRANSLATED)
	ReasonForwardProxy      = Reason(bpf.TcReasonREASON_FORWARD_PROXY)
	ReasonDropProxyDown     = Reason(bpf.TcReasonREASON_DROP_PROXY_DOWN)
	ReasonDropProxyBypass   = Reason(bpf.TcReasonREASON_DROP_PROXY_BYPASS)
	ReasonDropProxyMidflow  = Reason(bpf.TcReasonREASON_DROP_PROXY_MIDFLOW)
	ReasonDropProxyGone     = Reason(bpf.TcReasonREASON_DROP_PROXY_SOCKET_GONE)
	ReasonAuditDeny         = Reason(bpf.TcReasonREASON_AUDIT_DENY)
	ReasonAuditDefaultDeny  = Reason(bpf.TcReasonREASON_AUDIT_DEFAULT_DENY)
	reasonMax               = Reason(bpf.TcReasonREASON_MAX)
)

// reasonNames names every reason, indexed by it (TestReasonNames checks that none is missing).
var reasonNames = [reasonMax]string{
	ReasonForwardPolicy:     "forwarded: allowed by policy",
	ReasonForwardReply:      "forwarded: reply",
	ReasonForwardRelated:    "forwarded: related ICMP",
	ReasonForwardUnenforced: "forwarded: not enforced",
	ReasonForwardARP:        "forwarded: ARP",
	ReasonForwardND:         "forwarded: link-scoped neighbour discovery",
	ReasonDropDeny:          "dropped: denied by rule",
	ReasonDropDefaultDeny:   "dropped: default deny, no rule",
	ReasonDropSpoof:         "dropped: spoofed source",
	ReasonDropNotEndpoint:   "dropped: not an endpoint",
	ReasonDropMalformed:     "dropped: malformed",
	ReasonDropFragNoFirst:   "dropped: fragment without first fragment",
	ReasonDropNoProxy:       "dropped: an L7 rule applies and no L7 proxy for it runs on this node",
	ReasonDropEthertype:     "dropped: tagged frame or not IPv4, IPv6 or ARP",
	ReasonDropFailClosed:    "dropped: endpoint closed (not programmed)",
	ReasonForwardRecovered:  "forwarded: reply of an evicted flow, policy checked again",
	ReasonDropUntranslated:  "dropped: to a Service address its socket did not translate",
	ReasonForwardProxy:      "forwarded: to the L7 proxy",
	ReasonDropProxyDown:     "dropped: an L7 rule applies and the L7 proxy's listener is not up",
	ReasonDropProxyBypass:   "dropped: an L7 rule applies and the packet did not come through the L7 proxy",
	ReasonDropProxyMidflow:  "dropped: an L7 rule now applies to a connection opened before it, which did not go through the L7 proxy",
	ReasonDropProxyGone:     "dropped: an answer to the L7 proxy's query whose socket is gone (closed or timed out), which the pod must not get unseen",
	ReasonAuditDeny:         "audited: a deny rule of a policy in audit mode matched; passed",
	ReasonAuditDefaultDeny:  "audited: default deny of policies in audit mode, no rule allows it; passed",
}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason %d", uint8(r))
}

// Dropped reports whether the reason is a drop.
func (r Reason) Dropped() bool {
	return r >= ReasonDropDeny && r != ReasonForwardRecovered && r != ReasonForwardProxy && !r.Audited()
}

// Audited reports whether the reason is a pass that a policy in audit mode would have dropped.
func (r Reason) Audited() bool { return r == ReasonAuditDeny || r == ReasonAuditDefaultDeny }

// Flow is a flow event: a new flow the policy allowed, or a dropped packet.
type Flow struct {
	Time        time.Duration // since boot (CLOCK_MONOTONIC)
	Ifindex     int
	EndpointID  uint32
	Direction   policy.Direction
	Reason      Reason
	Proto       policy.Proto
	Src, Dst    netip.Addr
	SrcPort     uint16
	DstPort     uint16
	SrcIdentity policy.ID
	DstIdentity policy.ID
	Rule        policy.RuleID
	// Service is the Service frontend id a pod's socket was translated from (egress; 0: none):
	// Datapath.ServiceName names it.
	Service uint32
	// L7 is set on an L7 event: a request the L7 proxy judged (Reason ReasonForwardProxy).
	L7 *L7Flow
	// TCPFlags are the packet's TCP flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG
	// 0x20, ECE 0x40, CWR 0x80); 0 when it is not TCP.
	TCPFlags uint8
}

// L7Flow is what the L7 proxy saw of one request, on the same stream as the datapath's events.
type L7Flow struct {
	Protocol string // HTTP/1.1, HTTP/2
	Method   string
	Path     string // as judged (normalised), with the query
	Host     string
	Status   int // the response's (403 when denied; 0 when the destination gave none)
	Denied   bool
	// HTTPRule is the index of the HTTP rule that allowed it within the deciding entry (-1: no
	// rule, or no L7 rule applies); Why says why it was denied (by the rules, or by the proxy:
	// a protocol switch it does not carry).
	HTTPRule int
	Why      string
	Latency  time.Duration
	// HeaderActions are the mismatch actions applied ("LOG X-Token", "REPLACE X-Team").
	HeaderActions []string
	// DNS is a DNS query the DNS proxy judged (Protocol "DNS"); nil for HTTP.
	DNS *DNSFlow
	// Kafka is a Kafka request the Kafka proxy judged (Protocol "Kafka"); HTTPRule is then the
	// index of the kafka rule that allowed it.
	Kafka *KafkaFlow
}

// KafkaFlow is a Kafka request: its API key (by name, "produce"), version, correlation ID and
// topics, and the error code the proxy answered it with (29 when denied; 0 when forwarded).
type KafkaFlow struct {
	APIKey        string
	APIVersion    int16
	CorrelationID int32
	Topics        []string
	ErrorCode     int16
}

// DNSFlow is a DNS query and what the pod got back: the query name (lower case, trailing dot)
// and type, the rcode ("NOERROR", "REFUSED", "SERVFAIL"; "" when no answer was sent), the
// addresses the answer gave and its TTL. HTTPRule is then the index of the DNS rule that allowed
// it.
type DNSFlow struct {
	Query string
	Type  string
	RCode string
	IPs   []netip.Addr
	TTL   time.Duration
}

// Dropped reports whether the flow event is a drop: a dropped packet, or a denied request.
func (f Flow) Dropped() bool {
	if f.L7 != nil {
		return f.L7.Denied
	}
	return f.Reason.Dropped()
}

// Verdict is the event's verdict as Hubble writes it: FORWARDED, DROPPED or AUDIT.
func (f Flow) Verdict() string {
	if f.Dropped() {
		return "DROPPED"
	}
	if f.L7 == nil && f.Reason.Audited() {
		return "AUDIT"
	}
	return "FORWARDED"
}

// L7String is an L7 event's request in Hubble's compact form: "http-request DROPPED (HTTP/1.1
// GET http://host/path) 403".
func (f Flow) L7String() string {
	if f.L7 == nil {
		return ""
	}
	if d := f.L7.DNS; d != nil {
		// Hubble's forms: the query, or the answer with the query it answers.
		if len(d.IPs) == 0 {
			return fmt.Sprintf("dns-request %s (DNS Query %s %s) %s", f.Verdict(), d.Query, d.Type, d.RCode)
		}
		ips := make([]string, len(d.IPs))
		for i, ip := range d.IPs {
			ips[i] = ip.String()
		}
		return fmt.Sprintf("dns-response %s (DNS Answer %q TTL: %d (Proxy %s %s)) %s", f.Verdict(), strings.Join(ips, ","),
			int(d.TTL.Seconds()), d.Query, d.Type, d.RCode)
	}
	if k := f.L7.Kafka; k != nil {
		// Hubble's form: the request, and the proxy's error code when it answered it.
		s := fmt.Sprintf("kafka-request %s (Kafka request %s correlation id %d topic '%s')", f.Verdict(), k.APIKey, k.CorrelationID,
			strings.Join(k.Topics, ","))
		if k.ErrorCode != 0 {
			s += fmt.Sprintf(" return code %d", k.ErrorCode)
		}
		return s
	}
	return fmt.Sprintf("http-request %s (%s %s http://%s%s) %d", f.Verdict(), f.L7.Protocol, f.L7.Method, f.L7.Host, f.L7.Path, f.L7.Status)
}

func (f Flow) String() string {
	if f.L7 != nil {
		return fmt.Sprintf("%s %s:%d (id %d) -> %s:%d (id %d) %s rule %d", f.Direction, f.Src, f.SrcPort, f.SrcIdentity,
			f.Dst, f.DstPort, f.DstIdentity, f.L7String(), f.Rule)
	}
	return fmt.Sprintf("%s %s %s:%d (id %d) -> %s:%d (id %d) %s rule %d", f.Direction, f.Proto, f.Src, f.SrcPort, f.SrcIdentity,
		f.Dst, f.DstPort, f.DstIdentity, f.Reason, f.Rule)
}

func eventAddr(fam uint8, b [16]uint8) netip.Addr {
	if fam == familyV4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

func flowFromEvent(e *bpf.TcFlowEvent) Flow {
	dir := policy.Ingress
	if e.Direction == dirEgress {
		dir = policy.Egress
	}
	return Flow{
		Time: time.Duration(e.Timestamp), Ifindex: int(e.Ifindex), EndpointID: e.EpId, Direction: dir,
		Reason: Reason(e.Reason), Proto: policy.Proto(e.Proto),
		Src: eventAddr(e.Family, e.Saddr), Dst: eventAddr(e.Family, e.Daddr),
		SrcPort: htons(e.Sport), DstPort: htons(e.Dport),
		SrcIdentity: policy.ID(e.SrcIdentity), DstIdentity: policy.ID(e.DstIdentity), Rule: policy.RuleID(e.RuleId),
		Service: e.Service, TCPFlags: e.TcpFlags,
	}
}

// FlowReader reads flow events: the datapath's from the ring buffer, and the L7 proxy's that
// Datapath.PublishL7 adds to the same stream.
type FlowReader struct {
	rd *ringbuf.Reader
	l7 <-chan Flow
	// undecodable counts records taken off the ring buffer that were not a flow event (Read
	// returned an error for each, which the node's readers skip); l7Lost is the datapath's count
	// of L7 events PublishL7 dropped while this reader fell behind.
	undecodable atomic.Uint64
	l7Lost      *atomic.Uint64
}

// Flows opens a reader on the flow event ring buffer (one reader per datapath: the L7 events
// go to it).
func (d *Datapath) Flows() (*FlowReader, error) {
	rd, err := ringbuf.NewReader(d.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("open flow events: %w", err)
	}
	return &FlowReader{rd: rd, l7: d.l7Events(), l7Lost: &d.l7Lost}, nil
}

// l7Poll bounds how long an L7 event waits while the reader blocks on the ring buffer.
const l7Poll = 50 * time.Millisecond

// Read blocks until a flow event arrives, the deadline passes (os.ErrDeadlineExceeded, within a
// millisecond after it) or the reader is closed (ringbuf.ErrClosed). A record that is not a flow event is an error, and
// counted in Lost.
func (r *FlowReader) Read(deadline time.Time) (Flow, error) {
	var rec ringbuf.Record
	for {
		select {
		case f := <-r.l7:
			return f, nil
		default:
		}
		wait := time.Now().Add(l7Poll)
		last := !deadline.IsZero() && deadline.Before(wait)
		if last {
			// The ring buffer's poller waits whole milliseconds, rounded down: under a
			// millisecond before the deadline it would not wait at all, and this loop would
			// poll without sleeping until the deadline (up to 1 ms of CPU time every hub poll).
			// Rounded up instead, the read returns within a millisecond after the deadline.
			wait = deadline.Add(time.Millisecond - 1)
		}
		r.rd.SetDeadline(wait)
		err := r.rd.ReadInto(&rec)
		if err == nil {
			break
		}
		// The ring buffer reader can report a deadline of an earlier call once it has drained
		// (it keeps the poller's timeout until the ring is empty): before the caller's deadline
		// that is no timeout, and returning it would leave events unread.
		if errors.Is(err, os.ErrDeadlineExceeded) && (!last || time.Now().Before(deadline)) {
			continue
		}
		return Flow{}, err
	}
	var e bpf.TcFlowEvent
	if err := decodeFlowEvent(rec.RawSample, &e); err != nil {
		r.undecodable.Add(1)
		return Flow{}, err
	}
	return flowFromEvent(&e), nil
}

// Pending is how many bytes of flow events, and L7 events, wait to be read: 0 once every event
// produced before the call was read (by this reader).
func (r *FlowReader) Pending() int { return r.rd.AvailableBytes() + len(r.l7) }

// Lost counts the events this reader lost after the datapath wrote them: ring buffer records
// that were not a flow event, and L7 events dropped because the reader did not keep up. The
// events the datapath had no room for in the ring buffer are Datapath.EventsLost.
func (r *FlowReader) Lost() uint64 { return r.undecodable.Load() + r.l7Lost.Load() }

// Close stops the reader.
func (r *FlowReader) Close() error { return r.rd.Close() }

// ErrClosed is returned by Read after Close.
var ErrClosed = ringbuf.ErrClosed

// flowEventSize is the size of struct flow_event, the only record the programs write.
var flowEventSize = binary.Size(bpf.TcFlowEvent{})

// decodeFlowEvent decodes a ring buffer record field by field: binary.Read's reflection took
// 590 ns and 2 allocations an event on the benchmark machine, this 15 ns and none, where a whole
// read costs about 1 µs at high rates. A record of another size (a program of another version
// still attached during an upgrade) is refused rather than read in part.
func decodeFlowEvent(b []byte, e *bpf.TcFlowEvent) error {
	if len(b) != flowEventSize {
		return fmt.Errorf("decode flow event: %d bytes, want %d", len(b), flowEventSize)
	}
	le := binary.LittleEndian
	e.Timestamp = le.Uint64(b[0:])
	e.Ifindex = le.Uint32(b[8:])
	e.EpId = le.Uint32(b[12:])
	e.SrcIdentity = le.Uint32(b[16:])
	e.DstIdentity = le.Uint32(b[20:])
	e.RuleId = le.Uint32(b[24:])
	e.Direction, e.Verdict, e.Reason, e.Proto, e.Family = b[28], b[29], b[30], b[31], b[32]
	e.TcpFlags = b[33]
	copy(e.Pad[:], b[34:36])
	copy(e.Saddr[:], b[36:52])
	copy(e.Daddr[:], b[52:68])
	e.Sport = le.Uint16(b[68:])
	e.Dport = le.Uint16(b[70:])
	e.Service = le.Uint32(b[72:])
	e.Pad2 = le.Uint32(b[76:])
	return nil
}

// Counter is packets and bytes for one reason, summed over CPUs.
type Counter struct{ Packets, Bytes uint64 }

// Counters returns the per-reason counters summed over CPUs.
func (d *Datapath) Counters() (map[Reason]Counter, error) {
	out := map[Reason]Counter{}
	for r := Reason(0); r < reasonMax; r++ {
		var per []bpf.TcCounter
		if err := d.objs.Counters.Lookup(uint32(r), &per); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", r, err)
		}
		var c Counter
		for _, p := range per {
			c.Packets += p.Packets
			c.Bytes += p.Bytes
		}
		out[r] = c
	}
	return out, nil
}

// EventsLimited are the flow events the rate limit held back, by endpoint id (0: packets of no
// endpoint): each endpoint has its own bucket per CPU, so one pod's flood holds back its own.
func (d *Datapath) EventsLimited() (map[uint32]uint64, error) {
	out := map[uint32]uint64{}
	var id uint32
	var per []bpf.TcRatelimit
	it := d.objs.EventRatelimit.Iterate()
	for it.Next(&id, &per) {
		var n uint64
		for _, p := range per {
			n += p.Limited
		}
		if n > 0 {
			out[id] = n
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read event_ratelimit: %w", err)
	}
	return out, nil
}

// EventsLost are the flow events the datapath had no room for in the events ring buffer (the
// reader fell behind), by CPU: lost, but counted. The rate limit's are EventsLimited.
func (d *Datapath) EventsLost() (map[int]uint64, error) {
	var per []uint64
	if err := d.objs.EventsLost.Lookup(uint32(0), &per); err != nil {
		return nil, fmt.Errorf("read events_lost: %w", err)
	}
	out := make(map[int]uint64, len(per))
	for cpu, n := range per {
		out[cpu] = n
	}
	return out, nil
}

// MapFill is how full a map is: entries now, and the most it holds.
type MapFill struct{ Entries, Max int }

// Fill counts the entries of the maps that fill with traffic and policy (conntrack, fragments,
// ipcache, endpoints, policy, prefix_policy, services, backends, sock_revnat).
func (d *Datapath) Fill() (map[string]MapFill, error) {
	out := map[string]MapFill{}
	for name, m := range map[string]*ebpf.Map{"conntrack": d.objs.Conntrack, "fragments": d.objs.Fragments,
		"ipcache": d.objs.Ipcache, "endpoints": d.objs.Endpoints, "policy": d.objs.Policy, "prefix_policy": d.objs.PrefixPolicy,
		"services": d.objs.Services, "backends": d.objs.sock.Backends, "sock_revnat": d.objs.sock.SockRevnat} {
		n := 0
		var key, val []byte
		it := m.Iterate()
		for it.Next(&key, &val) {
			n++
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("count %s entries: %w", name, err)
		}
		out[name] = MapFill{Entries: n, Max: int(m.MaxEntries())}
	}
	return out, nil
}
