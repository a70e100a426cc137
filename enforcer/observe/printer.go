package observe

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Output formats of a Printer, named as hubble observe's -o values.
const (
	OutputCompact = "compact"
	OutputJSON    = "json"
	OutputTable   = "table"
	OutputDict    = "dict"
)

// DefaultTimeFormat is Hubble's default timestamp layout (time.StampMilli).
const DefaultTimeFormat = time.StampMilli

// PrinterOptions configure a Printer.
type PrinterOptions struct {
	// Output is one of the Output constants; "" means compact. "jsonpb" is
	// accepted as a synonym of json, as hubble observe accepts it.
	Output string
	// NodeName prints the node name (--print-node-name).
	NodeName bool
	// TimeFormat is a Go time layout; "" means DefaultTimeFormat.
	TimeFormat string
	// Numeric prints addresses instead of pod, service and DNS names
	// (--numeric).
	Numeric bool
	// PolicyNames appends the policies that decided after the verdict
	// (--print-policy-names). The netpact CLI turns it on by default; with it
	// off, lines are Hubble's.
	PolicyNames bool
}

// Printer writes flow responses in one of Hubble's output formats. It is not
// safe for concurrent use.
type Printer struct {
	w    io.Writer
	opts PrinterOptions
	tw   *tabwriter.Writer
	enc  *json.Encoder
	line int
}

// NewPrinter returns a printer writing to w.
func NewPrinter(w io.Writer, opts PrinterOptions) (*Printer, error) {
	if opts.TimeFormat == "" {
		opts.TimeFormat = DefaultTimeFormat
	}
	p := &Printer{w: w, opts: opts}
	switch opts.Output {
	case "", OutputCompact:
		p.opts.Output = OutputCompact
	case OutputJSON, "jsonpb":
		p.opts.Output = OutputJSON
		p.enc = json.NewEncoder(w)
		// protojson does not escape <, > and &; encoding/json would.
		p.enc.SetEscapeHTML(false)
	case OutputTable, "tab":
		p.opts.Output = OutputTable
		// Hubble's tabwriter settings, so columns line up as hubble's do.
		p.tw = tabwriter.NewWriter(w, 2, 0, 3, ' ', 0)
	case OutputDict:
	default:
		return nil, fmt.Errorf("printer: unknown output %q (want compact, json, table or dict)", opts.Output)
	}
	return p, nil
}

// Flush writes out buffered table rows. A table aligns the rows written
// between two flushes, so a follower flushes after each batch it got.
func (p *Printer) Flush() error {
	if p.tw == nil {
		return nil
	}
	if err := p.tw.Flush(); err != nil {
		return fmt.Errorf("printer: flush: %w", err)
	}
	return nil
}

// Close flushes the printer.
func (p *Printer) Close() error { return p.Flush() }

// WriteResponse prints a flow or a lost-events notice; a response with
// neither prints nothing.
func (p *Printer) WriteResponse(r *GetFlowsResponse) error {
	if r == nil {
		return nil
	}
	var err error
	switch {
	case r.Flow != nil:
		err = p.writeFlow(r)
	case r.LostEvents != nil:
		err = p.writeLost(r)
	default:
		return nil
	}
	if err != nil {
		return fmt.Errorf("printer: %w", err)
	}
	p.line++
	return nil
}

func (p *Printer) writeFlow(r *GetFlowsResponse) error {
	f := r.Flow
	if p.opts.Output == OutputJSON {
		return p.enc.Encode(r)
	}
	ts := p.fmtTime(f.Time)
	src, dst := p.hostNames(f)
	typ := FlowTypeText(f)
	verdict := p.verdict(f)
	summary := f.Summary
	if summary == "" {
		summary = Summarize(f)
	}
	var err error
	switch p.opts.Output {
	case OutputTable:
		if p.line == 0 {
			err = p.tableHeader()
		}
		if err == nil {
			_, err = io.WriteString(p.tw, joinCols(ts, p.nodeCol(f.NodeName), src, dst, typ, verdict, summary))
		}
	case OutputDict:
		var b strings.Builder
		if p.line != 0 {
			b.WriteString("------------\n")
		}
		b.WriteString("  TIMESTAMP: " + ts + "\n")
		if p.opts.NodeName {
			b.WriteString("       NODE: " + f.NodeName + "\n")
		}
		b.WriteString("     SOURCE: " + src + "\n")
		b.WriteString("DESTINATION: " + dst + "\n")
		b.WriteString("       TYPE: " + typ + "\n")
		b.WriteString("    VERDICT: " + verdict + "\n")
		b.WriteString("    SUMMARY: " + summary + "\n")
		_, err = io.WriteString(p.w, b.String())
	default:
		var node string
		if p.opts.NodeName {
			node = " [" + f.NodeName + "]"
		}
		srcID, dstID := fmtIdentity(f.Source), fmtIdentity(f.Destination)
		arrow := "->"
		switch {
		case f.IsReply == nil:
			arrow = "<>"
		case *f.IsReply:
			// A reply is printed from the initiator's point of view.
			src, dst = dst, src
			srcID, dstID = dstID, srcID
			arrow = "<-"
		}
		_, err = fmt.Fprintf(p.w, "%s%s: %s %s %s %s %s %s %s (%s)\n",
			ts, node, src, srcID, arrow, dst, dstID, typ, verdict, summary)
	}
	return err
}

func (p *Printer) writeLost(r *GetFlowsResponse) error {
	if p.opts.Output == OutputJSON {
		return p.enc.Encode(r)
	}
	le := r.LostEvents
	ts := p.fmtTime(r.Time)
	// Hubble always prints CPU(n), CPU(0) when the loss is not per CPU; the
	// CPU part is left out here in that case, so a ring loss does not read
	// as a loss on CPU 0.
	var cpu string
	if le.CPU != nil {
		cpu = fmt.Sprintf("CPU(%d) ", *le.CPU)
	}
	var span string
	if le.First != nil && le.Last != nil {
		span = fmt.Sprintf(" (first: %s, last: %s)", p.fmtTime(le.First), p.fmtTime(le.Last))
	}
	var err error
	switch p.opts.Output {
	case OutputTable:
		if p.line == 0 {
			err = p.tableHeader()
		}
		if err == nil {
			sum := fmt.Sprintf("%s- %d%s", cpu, le.NumEventsLost, span)
			_, err = io.WriteString(p.tw, joinCols(ts, p.nodeCol(r.NodeName), le.Source.String(), "-", "EVENTS LOST", "-", sum))
		}
	case OutputDict:
		var b strings.Builder
		if p.line != 0 {
			b.WriteString("------------\n")
		}
		b.WriteString("  TIMESTAMP: " + ts + "\n")
		if p.opts.NodeName {
			b.WriteString("       NODE: " + r.NodeName + "\n")
		}
		b.WriteString("     SOURCE: " + le.Source.String() + "\n")
		b.WriteString("       TYPE: EVENTS LOST\n")
		b.WriteString("    VERDICT: -\n")
		fmt.Fprintf(&b, "    SUMMARY: %s- %d%s\n", cpu, le.NumEventsLost, span)
		_, err = io.WriteString(p.w, b.String())
	default:
		// Hubble prints no node name on a lost-events line, even with
		// --print-node-name.
		_, err = fmt.Fprintf(p.w, "%s EVENTS LOST: %s %s%d%s\n", ts, le.Source, cpu, le.NumEventsLost, span)
	}
	return err
}

// nodeCol is the NODE column's cell, or nil when the column is not printed.
func (p *Printer) nodeCol(node string) *string {
	if !p.opts.NodeName {
		return nil
	}
	return &node
}

func (p *Printer) tableHeader() error {
	_, err := io.WriteString(p.tw, joinCols("TIMESTAMP", p.nodeCol("NODE"), "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"))
	return err
}

func joinCols(ts string, node *string, rest ...string) string {
	cols := []string{ts}
	if node != nil {
		cols = append(cols, *node)
	}
	return strings.Join(append(cols, rest...), "\t") + "\n"
}

func (p *Printer) fmtTime(t *Timestamp) string {
	if t == nil || t.IsZero() {
		return "N/A"
	}
	return t.Format(p.opts.TimeFormat)
}

// hostNames names both ends of a flow as Hubble does: the pod, else the
// service, else the DNS names, else the address; with the port when there is
// one.
func (p *Printer) hostNames(f *Flow) (string, string) {
	if f.IP == nil {
		if f.Ethernet != nil {
			return f.Ethernet.Source, f.Ethernet.Destination
		}
		return "", ""
	}
	var srcNS, dstNS, srcPod, dstPod, srcSvc, dstSvc string
	if f.Source != nil {
		srcNS, srcPod = f.Source.Namespace, f.Source.PodName
	}
	if f.Destination != nil {
		dstNS, dstPod = f.Destination.Namespace, f.Destination.PodName
	}
	// Hubble takes the namespace of a service over the pod's, even when it
	// then prints the pod name.
	if s := f.SourceService; s != nil {
		srcNS, srcSvc = s.Namespace, s.Name
	}
	if s := f.DestinationService; s != nil {
		dstNS, dstSvc = s.Namespace, s.Name
	}
	srcPort, dstPort := ports(f)
	return p.hostname(f.IP.Source, srcPort, srcNS, srcPod, srcSvc, f.SourceNames),
		p.hostname(f.IP.Destination, dstPort, dstNS, dstPod, dstSvc, f.DestinationNames)
}

func (p *Printer) hostname(ip string, port uint32, ns, pod, svc string, names []string) string {
	host := ip
	if !p.opts.Numeric {
		switch {
		case pod != "":
			host = path.Join(ns, pod)
		case svc != "":
			host = path.Join(ns, svc)
		case len(names) != 0:
			host = strings.Join(names, ",")
		}
	}
	if port != 0 {
		return net.JoinHostPort(host, strconv.FormatUint(uint64(port), 10))
	}
	return host
}

// ports returns the L4 source and destination ports of a flow (0 when none).
func ports(f *Flow) (uint32, uint32) {
	if f.L4 == nil {
		return 0, 0
	}
	switch {
	case f.L4.TCP != nil:
		return f.L4.TCP.SourcePort, f.L4.TCP.DestinationPort
	case f.L4.UDP != nil:
		return f.L4.UDP.SourcePort, f.L4.UDP.DestinationPort
	case f.L4.SCTP != nil:
		return f.L4.SCTP.SourcePort, f.L4.SCTP.DestinationPort
	}
	return 0, 0
}

// reservedIdentities are Cilium's reserved security identities, which Hubble
// prints by name (pkg/identity/numericidentity.go).
var reservedIdentities = map[uint32]string{
	0:  "unknown",
	1:  "host",
	2:  "world",
	3:  "unmanaged",
	4:  "health",
	5:  "init",
	6:  "remote-node",
	7:  "kube-apiserver",
	8:  "ingress",
	9:  "world-ipv4",
	10: "world-ipv6",
}

func fmtIdentity(ep *Endpoint) string {
	var id uint32
	if ep != nil {
		id = ep.Identity
	}
	if name, ok := reservedIdentities[id]; ok {
		return "(" + name + ")"
	}
	return fmt.Sprintf("(ID:%d)", id)
}

var traceObservationPoints = map[int32]string{
	TraceToLxc:       "to-endpoint",
	TraceToProxy:     "to-proxy",
	TraceToHost:      "to-host",
	TraceToStack:     "to-stack",
	TraceToOverlay:   "to-overlay",
	TraceToNetwork:   "to-network",
	TraceFromLxc:     "from-endpoint",
	TraceFromProxy:   "from-proxy",
	TraceFromHost:    "from-host",
	TraceFromStack:   "from-stack",
	TraceFromOverlay: "from-overlay",
	TraceFromNetwork: "from-network",
}

// PolicyMatchTypeText is the name Cilium's monitor gives a policy match type,
// as printed in "policy-verdict:<match> <direction>".
func PolicyMatchTypeText(m uint32) string {
	switch m {
	case PolicyMatchNone:
		return "none"
	case PolicyMatchL3Only:
		return "L3-Only"
	case PolicyMatchL3L4:
		return "L3-L4"
	case PolicyMatchL4Only:
		return "L4-Only"
	case PolicyMatchAll:
		return "all"
	case PolicyMatchL3Proto:
		return "L3-Proto"
	case PolicyMatchProtoOnly:
		return "Proto-Only"
	}
	return "unknown"
}

// FlowTypeText is the TYPE column of a flow, as Hubble's GetFlowType names
// it: "http-request", "dns-request proxy", "Policy denied",
// "policy-verdict:L3-L4 INGRESS", "to-endpoint", ...
func FlowTypeText(f *Flow) string {
	if f == nil {
		return "UNKNOWN"
	}
	if l7 := f.L7; l7 != nil {
		proto := "l7"
		typ := strings.ToLower(l7.Type.String())
		switch {
		case l7.HTTP != nil:
			proto = "http"
		case l7.DNS != nil:
			proto = "dns"
			typ += " " + l7.DNS.ObservationSource
		case l7.Kafka != nil:
			proto = "kafka"
		}
		return proto + "-" + typ
	}
	if f.EventType == nil {
		return "UNKNOWN"
	}
	switch f.EventType.Type {
	case MessageTypeTrace:
		// Cilium keeps the subtype in a uint8.
		sub := int32(uint8(f.EventType.SubType))
		if name, ok := traceObservationPoints[sub]; ok {
			return name
		}
		return strconv.Itoa(int(sub))
	case MessageTypeDrop:
		return DropReasonText(uint32(uint8(f.EventType.SubType)))
	case MessageTypePolicyVerdict:
		return "policy-verdict:" + PolicyMatchTypeText(f.PolicyMatchType) + " " + f.TrafficDirection.String()
	}
	return "UNKNOWN"
}

// verdict is the VERDICT column: the verdict, or ALLOWED/DENIED/AUDITED on
// policy-verdict events, followed by the deciding policies with PolicyNames.
func (p *Printer) verdict(f *Flow) string {
	pv := f.EventType != nil && f.EventType.Type == MessageTypePolicyVerdict
	msg := f.Verdict.String()
	var allowed bool
	switch f.Verdict {
	case Forwarded, Redirected:
		allowed = true
		if pv {
			msg = "ALLOWED"
		}
	case Dropped, Error:
		if pv {
			msg = "DENIED"
		}
	case Audit:
		if pv {
			msg = "AUDITED"
		}
	default:
		return msg
	}
	if p.opts.PolicyNames {
		msg += formatPolicies(decidingPolicies(f, allowed, pv))
	}
	return msg
}

// decidingPolicies picks the policies to print for a flow. On policy-verdict
// events Hubble picks the list of the event's direction; netpact prints them
// for every flow, and for a flow of no known direction it prints both
// directions', egress first.
func decidingPolicies(f *Flow, allowed, policyVerdict bool) []*Policy {
	egress, ingress := f.EgressDeniedBy, f.IngressDeniedBy
	if allowed {
		egress, ingress = f.EgressAllowedBy, f.IngressAllowedBy
	}
	switch f.TrafficDirection {
	case Egress:
		return egress
	case Ingress:
		return ingress
	}
	if policyVerdict {
		return nil
	}
	return append(append([]*Policy(nil), egress...), ingress...)
}

// formatPolicies renders " BY p1, p2". A policy without netpact's extension
// fields prints as Hubble prints it, "name (Kind)", and is skipped when it
// lacks either; one with them prints as PolicyText.
func formatPolicies(ps []*Policy) string {
	var parts []string
	for _, pol := range ps {
		if pol == nil {
			continue
		}
		switch {
		case pol.Rule != "" || pol.Source != nil:
			if pol.Name != "" {
				parts = append(parts, PolicyText(pol))
			}
		case pol.Name != "" && pol.Kind != "":
			parts = append(parts, pol.Name+" ("+pol.Kind+")")
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " BY " + strings.Join(parts, ", ")
}

// PolicyText renders a policy with netpact's extension:
//
//	namespace/name (Kind) rule at path:line:column @ git_revision in repository
//
// Each part is left out when empty: the namespace of a cluster-wide policy,
// the kind, the rule, the source, its line and column, its revision and its
// repository.
func PolicyText(pol *Policy) string {
	var b strings.Builder
	if pol.Namespace != "" {
		b.WriteString(pol.Namespace + "/")
	}
	b.WriteString(pol.Name)
	if pol.Kind != "" {
		b.WriteString(" (" + pol.Kind + ")")
	}
	if pol.Rule != "" {
		b.WriteString(" " + pol.Rule)
	}
	if s := pol.Source; s != nil {
		if s.Path != "" {
			b.WriteString(" at " + s.Path)
			if s.Line > 0 {
				b.WriteString(":" + strconv.Itoa(s.Line))
				if s.Column > 0 {
					b.WriteString(":" + strconv.Itoa(s.Column))
				}
			}
		}
		if s.GitRevision != "" {
			b.WriteString(" @ " + s.GitRevision)
		}
		if s.Repository != "" {
			b.WriteString(" in " + s.Repository)
		}
	}
	return b.String()
}
