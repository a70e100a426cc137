package observe

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Summarize derives a flow's Summary as Hubble's parsers do, for a producer
// to fill Flow.Summary (printers fall back to it when Summary is empty):
//
//	TCP Flags: SYN, ACK                                  (L3/L4, TCP)
//	UDP                                                  (L3/L4, UDP)
//	ICMPv4 EchoRequest                                   (L3/L4, ICMP)
//	HTTP/1.1 GET http://svc/path                         (HTTP request)
//	HTTP/1.1 200 12ms (GET http://svc/path)              (HTTP response)
//	DNS Query name. A                                    (DNS request)
//	DNS Answer "1.2.3.4" TTL: 30 (Proxy name. A)         (DNS response)
func Summarize(f *Flow) string {
	if f == nil {
		return ""
	}
	if l7 := f.L7; l7 != nil {
		switch {
		case l7.HTTP != nil:
			return httpSummary(l7)
		case l7.DNS != nil:
			return dnsSummary(l7)
		case l7.Kafka != nil:
			return kafkaSummary(l7)
		}
		return ""
	}
	if l4 := f.L4; l4 != nil {
		switch {
		case l4.TCP != nil:
			return "TCP Flags: " + tcpFlagsText(l4.TCP.Flags)
		case l4.UDP != nil:
			return "UDP"
		case l4.SCTP != nil:
			return "SCTP"
		case l4.ICMPv4 != nil:
			return "ICMPv4 " + icmpText(icmpv4Types, icmpv4Codes, l4.ICMPv4.Type, l4.ICMPv4.Code)
		case l4.ICMPv6 != nil:
			return "ICMPv6 " + icmpText(icmpv6Types, icmpv6Codes, l4.ICMPv6.Type, l4.ICMPv6.Code)
		}
	}
	if f.IP != nil {
		// Hubble's summary is the name of the last layer it decoded.
		return f.IP.IPVersion.String()
	}
	return ""
}

// tcpFlagsText lists the set flags in the order Hubble's L3/L4 parser does.
func tcpFlagsText(fl *TCPFlags) string {
	if fl == nil {
		return ""
	}
	var s []string
	for _, x := range []struct {
		set  bool
		name string
	}{
		{fl.SYN, "SYN"}, {fl.ACK, "ACK"}, {fl.RST, "RST"}, {fl.FIN, "FIN"}, {fl.PSH, "PSH"},
		{fl.URG, "URG"}, {fl.ECE, "ECE"}, {fl.CWR, "CWR"}, {fl.NS, "NS"},
	} {
		if x.set {
			s = append(s, x.name)
		}
	}
	return strings.Join(s, ", ")
}

// ICMP type and code names as gopacket's layers.ICMPv{4,6}TypeCode print
// them, for the types a pod network sees.
var (
	icmpv4Types = map[uint32]string{
		0: "EchoReply", 3: "DestinationUnreachable", 4: "SourceQuench", 5: "Redirect",
		8: "EchoRequest", 11: "TimeExceeded", 12: "ParameterProblem",
		13: "TimestampRequest", 14: "TimestampReply",
	}
	icmpv4Codes = map[uint32]map[uint32]string{
		3:  {0: "Net", 1: "Host", 2: "Protocol", 3: "Port", 4: "FragmentationNeeded"},
		11: {0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"},
	}
	icmpv6Types = map[uint32]string{
		1: "DestinationUnreachable", 2: "PacketTooBig", 3: "TimeExceeded", 4: "ParameterProblem",
		128: "EchoRequest", 129: "EchoReply", 133: "RouterSolicitation",
		134: "RouterAdvertisement", 135: "NeighborSolicitation", 136: "NeighborAdvertisement",
		137: "Redirect",
	}
	icmpv6Codes = map[uint32]map[uint32]string{
		1: {0: "NoRouteToDst", 1: "AdminProhibited", 3: "Address", 4: "Port"},
		3: {0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"},
	}
)

func icmpText(types map[uint32]string, codes map[uint32]map[uint32]string, typ, code uint32) string {
	name, ok := types[typ]
	if !ok {
		return strconv.FormatUint(uint64(typ), 10) + "(" + strconv.FormatUint(uint64(code), 10) + ")"
	}
	cs, hasCodes := codes[typ]
	if !hasCodes {
		return name
	}
	if c, ok := cs[code]; ok {
		return name + "(" + c + ")"
	}
	return name + "(Code: " + strconv.FormatUint(uint64(code), 10) + ")"
}

func httpSummary(l7 *Layer7) string {
	h := l7.HTTP
	req := h.Method + " " + h.URL
	switch l7.Type {
	case L7Request:
		return h.Protocol + " " + req
	case L7Response:
		ms := uint64(time.Duration(l7.LatencyNs) / time.Millisecond)
		return fmt.Sprintf("%s %d %dms (%s)", h.Protocol, h.Code, ms, req)
	}
	return ""
}

// dnsRcodes are the names gopacket's layers.DNSResponseCode gives rcodes.
var dnsRcodes = map[uint32]string{
	0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain",
	4: "Not Implemented", 5: "Query Refused",
}

func dnsSummary(l7 *Layer7) string {
	d := l7.DNS
	qtypes := strings.Join(d.Qtypes, ",")
	switch l7.Type {
	case L7Request:
		return fmt.Sprintf("DNS Query %s %s", d.Query, qtypes)
	case L7Response:
		var answer string
		if d.Rcode != 0 {
			rc, ok := dnsRcodes[d.Rcode]
			if !ok {
				rc = strconv.FormatUint(uint64(d.Rcode), 10)
			}
			answer = "RCode: " + rc
		} else {
			var parts []string
			if len(d.IPs) > 0 {
				parts = append(parts, strconv.Quote(strings.Join(d.IPs, ",")))
			}
			if len(d.CNAMEs) > 0 {
				parts = append(parts, "CNAMEs: "+strconv.Quote(strings.Join(d.CNAMEs, ",")))
			}
			answer = strings.Join(parts, " ")
		}
		source := "Query"
		if d.ObservationSource == "proxy" {
			source = "Proxy"
		}
		return fmt.Sprintf("DNS Answer %s TTL: %d (%s %s %s)", answer, d.TTL, source, d.Query, qtypes)
	}
	return ""
}

func kafkaSummary(l7 *Layer7) string {
	k := l7.Kafka
	switch l7.Type {
	case L7Request:
		return fmt.Sprintf("Kafka request %s correlation id %d topic '%s'", k.APIKey, k.CorrelationID, k.Topic)
	case L7Response:
		return fmt.Sprintf("Kafka response %s correlation id %d topic '%s' return code %d", k.APIKey, k.CorrelationID, k.Topic, k.ErrorCode)
	}
	return ""
}
