package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RevisionAnnotation is the Git revision a policy object carries when the reconciler applied it.
const RevisionAnnotation = "netpact.io/revision"

// NodePolicyStatus is what one node's enforcer enforces: one cluster-scoped object per node,
// named after the node, written only by that node's enforcer. One object per node keeps the
// writes O(nodes) per policy change (Cilium dropped per-policy node status for O(policies x
// nodes) writes).
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=nps,categories=netpact
// +kubebuilder:printcolumn:name="Policies",type=integer,JSONPath=".status.policyCount"
// +kubebuilder:printcolumn:name="Endpoints",type=integer,JSONPath=".status.endpoints"
// +kubebuilder:printcolumn:name="Failed",type=integer,JSONPath=".status.failedEndpoints"
// +kubebuilder:printcolumn:name="Errors",type=integer,JSONPath=".status.errorCount"
// +kubebuilder:printcolumn:name="Revisions",type=string,JSONPath=".status.revisions"
// +kubebuilder:printcolumn:name="Synced",type=date,JSONPath=".status.lastSync"
// +kubebuilder:printcolumn:name="Took",type=string,JSONPath=".status.syncDuration"
type NodePolicyStatus struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Status            NodePolicyStatusStatus `json:"status,omitempty"`
}

// NodePolicyStatusStatus is the node's last sync.
type NodePolicyStatusStatus struct {
	// Mode is the policy enforcement mode (default, always or never).
	Mode string `json:"mode,omitempty"`
	// Policies are every policy object the node's enforcer holds, in name order.
	Policies []EnforcedPolicy `json:"policies,omitempty"`
	// PolicyCount is len(policies), for the column.
	PolicyCount int `json:"policyCount"`
	// Revisions are the distinct Git revisions the policies carry.
	Revisions []string `json:"revisions,omitempty"`
	// Audited are the policies in audit mode the node enforces ("Kind namespace/name"): their
	// denies pass and are reported as AUDIT.
	Audited []string `json:"audited,omitempty"`
	// Endpoints is the number of the node's pods whose policy is in the datapath.
	Endpoints int `json:"endpoints"`
	// FailedEndpoints is the number of the node's pods failed closed (all traffic dropped).
	FailedEndpoints int `json:"failedEndpoints"`
	// EndpointErrors say why each failed pod failed.
	EndpointErrors []EndpointError `json:"endpointErrors,omitempty"`
	// ErrorCount is the number of policies and endpoints with an error, for the column.
	ErrorCount int `json:"errorCount"`
	// LastSync is when the datapath last matched the objects below; SyncDuration how long it took.
	LastSync *metav1.Time `json:"lastSync,omitempty"`
	// SyncDuration is how long the last sync took, as a Go duration ("12ms").
	SyncDuration string `json:"syncDuration,omitempty"`
	// ObservedVersion is the newest resourceVersion of a Pod or Namespace the last sync compiled:
	// a client that changed labels waits until every node reports at least the version it got.
	ObservedVersion int64 `json:"observedVersion,omitempty"`
	// ServicesObservedVersion is the newest resourceVersion of a Service or EndpointSlice the
	// node translates ClusterIPs from (the informers watch each kind apart, so it has its own).
	ServicesObservedVersion int64 `json:"servicesObservedVersion,omitempty"`
	// Error is a node-wide problem (the informers not synced, the ipcache not written).
	Error string `json:"error,omitempty"`
}

// EnforcedPolicy is one policy object as the node's enforcer holds it.
type EnforcedPolicy struct {
	// Kind is NetworkPolicy, CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy.
	Kind string `json:"kind"`
	// Namespace is the object's namespace; empty for a CiliumClusterwideNetworkPolicy.
	Namespace string `json:"namespace,omitempty"`
	// Name is the object's name.
	Name string `json:"name"`
	// UID is the object's UID: a new object under the same name is another policy.
	UID string `json:"uid"`
	// Generation is the object generation the datapath enforces.
	Generation int64 `json:"generation"`
	// Revision is the object's netpact.io/revision annotation at that generation.
	Revision string `json:"revision,omitempty"`
	// Error says why the object at its current generation is not enforced; the last good
	// generation (EnforcedGeneration) keeps being enforced, or none (0).
	Error string `json:"error,omitempty"`
	// ObservedGeneration is the newest generation seen, when it differs from Generation.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Audit: the policy is in audit mode (netpact.io/audit or policy.cilium.io/audit-mode
	// "true"): its denies are reported as AUDIT and not enforced.
	Audit bool `json:"audit,omitempty"`
}

// EndpointError is a pod of the node failed closed, with why.
type EndpointError struct {
	// Pod is "namespace/name".
	Pod string `json:"pod"`
	// Error says why the pod was failed closed.
	Error string `json:"error"`
}
