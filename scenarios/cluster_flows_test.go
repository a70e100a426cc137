package scenarios

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/policy"
)

var _ AuditWitness = (*Cluster)(nil)

// fakeEnforcers is an API server that knows only the enforcer pods of two nodes and proxies
// their /flows to a ring each, as kubenode serves it: sync=1 is the node's parameter, and a
// request without it is refused, so that the test sees every question synced.
type fakeEnforcers struct {
	rings map[string]*observe.Ring // node -> its enforcer's ring
	pods  []corev1.Pod             // in enforcerNS, where the DaemonSet is installed
}

// enforcerNS is not kube-system: the enforcers are found wherever netpact was installed.
const enforcerNS = "netpact"

func (f *fakeEnforcers) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	const base = "/api/v1/namespaces/" + enforcerNS + "/pods"
	switch {
	case r.URL.Path == "/apis/apps/v1/daemonsets" && r.URL.Query().Get("fieldSelector") == "metadata.name=netpact":
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&appsv1.DaemonSetList{TypeMeta: metav1.TypeMeta{Kind: "DaemonSetList", APIVersion: "apps/v1"},
			Items: []appsv1.DaemonSet{{ObjectMeta: metav1.ObjectMeta{Name: "netpact", Namespace: enforcerNS}}}})
	case r.URL.Path == base:
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(&corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}, Items: f.pods})
	case strings.HasPrefix(r.URL.Path, base+"/") && strings.HasSuffix(r.URL.Path, ":9879/proxy/flows"):
		name := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, base+"/"), ":9879/proxy/flows")
		for _, p := range f.pods {
			if p.Name != name {
				continue
			}
			q := r.URL.Query()
			if q.Get("sync") != "1" {
				http.Error(w, `filter parameter "sync": unknown parameter`, http.StatusBadRequest)
				return
			}
			q.Del("sync")
			r.URL.RawQuery = q.Encode()
			r.URL.Path = "/flows"
			observe.Handler(f.rings[p.Spec.NodeName], p.Spec.NodeName).ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
	default:
		http.NotFound(w, r)
	}
}

func auditFlow(at time.Time, src, dst string, dport uint32) *observe.GetFlowsResponse {
	return &observe.GetFlowsResponse{Time: observe.TimestampOf(at), Flow: &observe.Flow{
		Time: observe.TimestampOf(at), Verdict: observe.Audit, TrafficDirection: observe.Ingress,
		EventType: &observe.CiliumEventType{Type: observe.MessageTypePolicyVerdict},
		IP:        &observe.IP{Source: src, Destination: dst},
		L4:        &observe.Layer4{TCP: &observe.TCP{SourcePort: 40000, DestinationPort: dport}},
		IngressDeniedBy: []*observe.Policy{{Name: "default-deny", Namespace: "ns", Kind: "CiliumNetworkPolicy",
			Rule: "default deny (ingress) (audit mode)", Source: &observe.PolicySource{Path: "deny.yaml", Line: 7}}},
	}}
}

func pod(name, node string, ips ...string) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"}, Spec: corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ips[0]}}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return p
}

// TestClusterAudited: a cell is audited when the enforcers of its source's and destination's
// nodes report AUDIT flows between the pods on its port since the step began (synced), to every
// replica probed, or to any backend of a service; unknown when an enforcer cannot be asked or
// lost events.
func TestClusterAudited(t *testing.T) {
	enf := func(name, node string) corev1.Pod {
		p := pod(name, node, "172.18.0.9")
		p.Namespace = enforcerNS
		return p
	}
	fe := &fakeEnforcers{rings: map[string]*observe.Ring{"n1": observe.NewRing(0), "n2": observe.NewRing(0)},
		pods: []corev1.Pod{enf("netpact-1", "n1"), enf("netpact-2", "n2")}}
	srv := httptest.NewServer(fe)
	defer srv.Close()
	kc, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL, QPS: 1000, Burst: 1000})
	if err != nil {
		t.Fatal(err)
	}
	c := NewCluster(ClusterOptions{Client: kc})
	c.pods = map[string][]corev1.Pod{
		"ns/a": {pod("a", "n1", "10.0.1.5", "fd00:1::5")},
		"ns/b": {pod("b", "n2", "10.0.2.7", "fd00:2::7")},
		"ns/c": {pod("c-1", "n1", "10.0.1.9"), pod("c-2", "n2", "10.0.2.9")},
	}
	c.BeginStep()
	now := time.Now()
	tcp := func(port uint16) Port { return Port{Port: port, Protocol: policy.ProtoTCP} }
	check := func(what string, cell Cell, wantAudited, wantKnown bool) {
		t.Helper()
		if a, k := c.Audited(cell); a != wantAudited || k != wantKnown {
			t.Errorf("%s: audited %v known %v, want %v %v", what, a, k, wantAudited, wantKnown)
		}
	}

	// Before the step: not this step's.
	fe.rings["n2"].Add(auditFlow(now.Add(-time.Hour), "10.0.1.5", "10.0.2.7", 8080))
	check("an audit of an earlier step", Cell{From: "ns/a", To: "ns/b", Port: tcp(8080)}, false, true)
	// Ingress policy: on the destination's node.
	fe.rings["n2"].Add(auditFlow(now, "10.0.1.5", "10.0.2.7", 8080))
	check("an ingress audit on the destination's node", Cell{From: "ns/a", To: "ns/b", Port: tcp(8080)}, true, true)
	check("another port", Cell{From: "ns/a", To: "ns/b", Port: tcp(9090)}, false, true)
	check("the other way", Cell{From: "ns/b", To: "ns/a", Port: tcp(8080)}, false, true)
	// Egress policy, over IPv6: on the source's node.
	fe.rings["n1"].Add(auditFlow(now, "fd00:1::5", "fd00:2::7", 9090))
	check("an egress audit on the source's node, IPv6", Cell{From: "ns/a", To: "ns/b", Port: tcp(9090)}, true, true)

	// Replicas: every one probed, every one must be reported; a service's any backend.
	fe.rings["n1"].Add(auditFlow(now, "10.0.1.5", "10.0.1.9", 80))
	check("one replica of two", Cell{From: "ns/a", To: "ns/c", Port: tcp(80)}, false, true)
	svc := Cell{From: "ns/a", To: "ns/c-svc", Service: "ns/c-svc", Backends: []string{"ns/c"}, Port: tcp(80)}
	check("a service with one backend reported", svc, true, true)
	fe.rings["n2"].Add(auditFlow(now, "10.0.1.5", "10.0.2.9", 80))
	check("both replicas", Cell{From: "ns/a", To: "ns/c", Port: tcp(80)}, true, true)

	// Lost events since the step began: no AUDIT seen is not known to be none.
	fe.rings["n1"].AddLost(observe.RateLimited, nil, 3)
	check("lost events, no audit", Cell{From: "ns/a", To: "ns/b", Port: tcp(7070)}, false, false)
	check("lost events, an audit", Cell{From: "ns/a", To: "ns/b", Port: tcp(8080)}, true, true)

	// An enforcer that cannot be asked.
	fe.pods = fe.pods[:1]
	check("no enforcer on the destination's node", Cell{From: "ns/a", To: "ns/b", Port: tcp(8080)}, false, false)
	check("an unknown source", Cell{From: "ns/x", To: "ns/b", Port: tcp(8080)}, false, false)

	// nodeFlows renders what a failing step shows: the compact line, with the policy, its rule
	// and where it was written.
	lines := c.nodeFlows(ktypes.NamespacedName{Namespace: enforcerNS, Name: "netpact-1"}, "10.0.1.5", "10.0.1.9", now.Add(-time.Minute))
	// The loss is shown too: a missing line may be one of those.
	if len(lines) != 2 || !strings.Contains(lines[1], "EVENTS LOST: RATE_LIMITED 3") ||
		!strings.Contains(lines[0], "AUDITED BY ns/default-deny (CiliumNetworkPolicy) default deny (ingress) (audit mode) at deny.yaml:7") {
		t.Errorf("nodeFlows: %q", lines)
	}
	if lines := c.nodeFlows(ktypes.NamespacedName{Namespace: enforcerNS, Name: "netpact-gone"}, "10.0.1.5", "10.0.1.9", now); len(lines) != 1 || !strings.HasPrefix(lines[0], "flows unavailable") {
		t.Errorf("nodeFlows of no enforcer: %q", lines)
	}
}

// TestPolicyObjectOrigin: a scenario's policy is applied with the source annotations the
// reconciler writes (its file, line and rules' lines), which the enforcer reads back as the
// policy's origin: its flows say "at file:line". A policy with annotations of its own keeps them.
func TestPolicyObjectOrigin(t *testing.T) {
	const cnp = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny, namespace: ns}
spec:
  endpointSelector: {}
  ingress:
    - fromEndpoints: [{matchLabels: {app: a}}]
`
	b, err := policy.LoadBytes("seeds/x.yaml (inline policy of step one)", []byte(cnp), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := policyObject(b.Policies[0])
	if err != nil {
		t.Fatal(err)
	}
	ann := obj.GetAnnotations()
	if got := ann[policy.AnnotationSourcePath]; got != "seeds/x.yaml (inline policy of step one):1" {
		t.Errorf("source path %q", got)
	}
	if got := ann[policy.AnnotationSourceRules]; got != "spec.ingress[0]=7 spec=4" {
		t.Errorf("source rules %q, want the ingress rule at line 7, the default deny of the section at 4", got)
	}
	raw, err := json.Marshal(obj.Object)
	if err != nil {
		t.Fatal(err)
	}
	back, err := policy.LoadBytes("applied", raw, policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if o := back.Policies[0].Origin; o == nil || o.Path != "seeds/x.yaml (inline policy of step one)" || o.Line != 1 {
		t.Errorf("origin read back: %+v", o)
	}
	// Its own annotations win.
	own := strings.Replace(cnp, "metadata: {name: deny, namespace: ns}",
		"metadata: {name: deny, namespace: ns, annotations: {netpact.io/source-path: \"policies/deny.yaml:3\"}}", 1)
	b, err = policy.LoadBytes("seeds/x.yaml", []byte(own), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if obj, err = policyObject(b.Policies[0]); err != nil {
		t.Fatal(err)
	}
	if got := obj.GetAnnotations()[policy.AnnotationSourcePath]; got != "policies/deny.yaml:3" {
		t.Errorf("own source path overwritten: %q", got)
	}
}
