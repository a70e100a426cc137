package kubenode

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func ptr[T any](v T) *T { return &v }

func slice(ns, svc string, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc + "-x",
		Labels: map[string]string{discoveryv1.LabelServiceName: svc}}, AddressType: at, Ports: ports, Endpoints: eps}
}

// TestServiceFrontends: what the informers' Services and EndpointSlices become.
func TestServiceFrontends(t *testing.T) {
	dns := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10", "fd00:10:96::a"}, Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}, {Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
			{Name: "sctp", Port: 99, Protocol: corev1.ProtocolSCTP}}}}
	headless := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: "pg"},
		Spec: corev1.ServiceSpec{ClusterIP: "None", Ports: []corev1.ServicePort{{Port: 5432}}}}
	ext := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: "ext"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.org"}}
	localOnly := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.5.5", InternalTrafficPolicy: ptr(corev1.ServiceInternalTrafficPolicyLocal),
			Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}}}
	empty := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "empty"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.6.6", Ports: []corev1.ServicePort{{Port: 80}}}}
	dnsPorts := []discoveryv1.EndpointPort{{Name: ptr("dns"), Port: ptr(int32(53)), Protocol: ptr(corev1.ProtocolUDP)},
		{Name: ptr("dns-tcp"), Port: ptr(int32(53)), Protocol: ptr(corev1.ProtocolTCP)}}
	eps := []*discoveryv1.EndpointSlice{
		slice("kube-system", "kube-dns", discoveryv1.AddressTypeIPv4, dnsPorts,
			discoveryv1.Endpoint{Addresses: []string{"10.244.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}},
			discoveryv1.Endpoint{Addresses: []string{"10.244.0.2"}},
			discoveryv1.Endpoint{Addresses: []string{"10.244.0.9"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}},
			discoveryv1.Endpoint{Addresses: []string{"10.244.0.8"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Terminating: ptr(true)}}),
		slice("kube-system", "kube-dns", discoveryv1.AddressTypeIPv6, dnsPorts,
			discoveryv1.Endpoint{Addresses: []string{"fd00:244::2"}}),
		slice("app", "web", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Port: ptr(int32(8080))}},
			discoveryv1.Endpoint{Addresses: []string{"10.244.1.5"}, NodeName: ptr("n1")},
			discoveryv1.Endpoint{Addresses: []string{"10.244.2.5"}, NodeName: ptr("n2")}),
		slice("other", "web", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Port: ptr(int32(9999))}},
			discoveryv1.Endpoint{Addresses: []string{"10.244.9.9"}}),
	}
	var got []string
	for _, s := range serviceFrontends("n1", []*corev1.Service{dns, headless, ext, localOnly, empty}, eps) {
		got = append(got, fmt.Sprintf("%s %s/%s -> %v", s.Name, s.Frontend, s.Proto, s.Backends))
	}
	want := []string{
		"kube-system/kube-dns 10.96.0.10:53/UDP -> [10.244.0.2:53 10.244.0.3:53]",
		"kube-system/kube-dns 10.96.0.10:53/TCP -> [10.244.0.2:53 10.244.0.3:53]",
		"kube-system/kube-dns [fd00:10:96::a]:53/UDP -> [[fd00:244::2]:53]",
		"kube-system/kube-dns [fd00:10:96::a]:53/TCP -> [[fd00:244::2]:53]",
		"app/web 10.96.5.5:80/TCP -> [10.244.1.5:8080]",
		"app/empty 10.96.6.6:80/TCP -> []",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("frontends:\n got %q\nwant %q", got, want)
	}
}
