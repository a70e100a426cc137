package policy

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/netpact/netpact/api/ciliumv2"
)

// ICMP type names Cilium accepts, per family.
var (
	icmpv4Types = map[string]int{
		"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
		"RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
		"Timestamp": 13, "TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42, "ExtendedEchoReply": 43,
	}
	icmpv6Types = map[string]int{
		"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
		"EchoRequest": 128, "EchoReply": 129, "MulticastListenerQuery": 130, "MulticastListenerReport": 131,
		"MulticastListenerDone": 132, "RouterSolicitation": 133, "RouterAdvertisement": 134,
		"NeighborSolicitation": 135, "NeighborAdvertisement": 136, "RedirectMessage": 137,
		"RouterRenumbering": 138, "ICMPNodeInformationQuery": 139, "ICMPNodeInformationResponse": 140,
		"InverseNeighborDiscoverySolicitation": 141, "InverseNeighborDiscoveryAdvertisement": 142,
		"HomeAgentAddressDiscoveryRequest": 144, "HomeAgentAddressDiscoveryReply": 145,
		"MobilePrefixSolicitation": 146, "MobilePrefixAdvertisement": 147, "DuplicateAddressRequestCodeSuffix": 157,
		"DuplicateAddressConfirmationCodeSuffix": 158, "ExtendedEchoRequest": 160, "ExtendedEchoReply": 161,
	}
)

// icmpType resolves an ICMP field to its protocol and type number.
func icmpType(f ciliumv2.ICMPField) (Proto, int, error) {
	proto, names := ProtoICMP, icmpv4Types
	switch f.Family {
	case "", "IPv4":
	case "IPv6":
		proto, names = ProtoICMPv6, icmpv6Types
	default:
		return 0, 0, fmt.Errorf("unknown ICMP family %q: use IPv4 or IPv6", f.Family)
	}
	if f.Type.Type == intstr.Int {
		if f.Type.IntVal < 0 || f.Type.IntVal > 255 {
			return 0, 0, fmt.Errorf("ICMP type %d is out of range 0-255", f.Type.IntVal)
		}
		return proto, int(f.Type.IntVal), nil
	}
	if t, ok := names[f.Type.StrVal]; ok {
		return proto, t, nil
	}
	return 0, 0, fmt.Errorf("unknown %s ICMP type %q", map[Proto]string{ProtoICMP: "IPv4", ProtoICMPv6: "IPv6"}[proto], f.Type.StrVal)
}
