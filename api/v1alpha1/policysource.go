// +groupName=netpact.io
// +versionName=v1alpha1

// Package v1alpha1 holds netpact's own API types (group netpact.io, version v1alpha1). The
// reconciler keeps its status in them with Flux's condition helpers; the API-server target will
// serve the same types.
package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is netpact.io/v1alpha1.
var GroupVersion = schema.GroupVersion{Group: "netpact.io", Version: "v1alpha1"}

// Condition types netpact adds to Flux's Ready, Reconciling and Stalled.
const (
	// EnforcedCondition is true when every target's datapath holds the last applied revision.
	EnforcedCondition = "Enforced"
)

// Reasons netpact adds to Flux's meta reasons.
const (
	// GitOperationFailedReason: listing or cloning the repository failed (unreachable, timeout,
	// deleted ref, authentication).
	GitOperationFailedReason = "GitOperationFailed"
	// ValidationFailedReason: the bundle at the revision has errors; nothing of it was applied.
	ValidationFailedReason = "ValidationFailed"
	// VerificationFailedReason: the commit is unsigned or not signed by a trusted key.
	VerificationFailedReason = "VerificationFailed"
	// ApplyFailedReason: a target refused or failed to apply the bundle.
	ApplyFailedReason = "ApplyFailed"
	// EnforcedReason: the targets' datapaths hold the revision.
	EnforcedReason = "Enforced"
	// EmptyBundleReason: the revision has no policy at all, or none left in a namespace that had
	// some, which would open everything they closed; refused unless spec.allowEmpty is set.
	EmptyBundleReason = "EmptyBundle"
)

// PolicySource is a Git repository path whose policy bundle netpact enforces.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ps,categories=netpact
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=".status.conditions[?(@.type==\"Ready\")].status"
// +kubebuilder:printcolumn:name="Enforced",type=string,JSONPath=".status.enforcedNodes"
// +kubebuilder:printcolumn:name="Revision",type=string,JSONPath=".status.lastEnforcedRevision"
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=".status.conditions[?(@.type==\"Ready\")].message",priority=1
type PolicySource struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PolicySourceSpec   `json:"spec,omitempty"`
	Status            PolicySourceStatus `json:"status,omitempty"`
}

// GitRef selects a revision: one of branch, tag, semver (a range over tags), name (a full ref
// such as refs/heads/main) or commit.
type GitRef struct {
	// Branch is a branch name; the source follows its tip. Without any field, main.
	Branch string `json:"branch,omitempty"`
	// Tag is a tag name (annotated or not); the source applies the commit it points at.
	Tag string `json:"tag,omitempty"`
	// SemVer is a semantic version range over the tags; the newest tag in it is applied.
	SemVer string `json:"semver,omitempty"`
	// Name is a full ref name, such as refs/heads/main or refs/pull/7/head.
	Name string `json:"name,omitempty"`
	// Commit is a full commit SHA, applied as it is.
	Commit string `json:"commit,omitempty"`
}

// Bounds of a PolicySource's interval and timeout, which the CRD and the controller both keep.
const (
	MinInterval = 10 * time.Second
	MaxInterval = 168 * time.Hour
	MaxTimeout  = 5 * time.Minute
)

// PolicySourceSpec says where the bundle lives and how often to look. interval and timeout are
// bounded: a tenant's source cannot poll without pause nor hold one of the controller's workers
// for long (MinInterval, MaxInterval, MaxTimeout).
// +kubebuilder:validation:XValidation:rule="duration(self.interval) >= duration('10s') && duration(self.interval) <= duration('168h')",message="interval must be between 10s and 168h"
// +kubebuilder:validation:XValidation:rule="!has(self.timeout) || duration(self.timeout) == duration('0s') || (duration(self.timeout) >= duration('1s') && duration(self.timeout) <= duration('5m'))",message="timeout must be between 1s and 5m (0s: the default)"
type PolicySourceSpec struct {
	// URL is the repository: http(s) or ssh, as Flux's GitRepository takes it (an SSH remote is
	// written ssh://git@host/path).
	// +kubebuilder:validation:Pattern="^(http|https|ssh)://.+$"
	URL string `json:"url"`
	// Ref is the revision to apply; the main branch when empty.
	Ref GitRef `json:"ref,omitempty"`
	// Path is the folder of the repository whose policies are applied (with its subfolders, or
	// a kustomization); the repository's root when empty. A path that leaves the repository,
	// through ".." or a symlink, is refused.
	Path string `json:"path,omitempty"`
	// Interval is how often the repository is checked for a new revision (10s to 168h); a
	// webhook delivery or the reconcile.fluxcd.io/requestedAt annotation checks at once.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern="^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"
	Interval metav1.Duration `json:"interval"`
	// Timeout bounds each Git operation (1s to 5m; 60s when empty or 0s).
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern="^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"
	Timeout metav1.Duration `json:"timeout,omitempty"`
	// Verify, when set, applies only commits signed by a key of this armored OpenPGP keyring.
	VerifyKeyring string `json:"verifyKeyring,omitempty"`
	// Suspend stops the source's reconciling: what it applied stays, and keeps being enforced.
	Suspend bool `json:"suspend,omitempty"`
	// AllowEmpty lets a revision remove every policy (of the bundle, or of a namespace that had
	// some). Without it such a revision is refused and the last good one stays enforced.
	AllowEmpty bool `json:"allowEmpty,omitempty"`
	// SecretRef names a Secret of the PolicySource's namespace with the Git credentials:
	// username and password (or a token as password), or identity (an SSH private key) and
	// known_hosts. In the cluster controller only.
	SecretRef *LocalObjectReference `json:"secretRef,omitempty"`
	// WebhookSecretRef names a Secret of the PolicySource's namespace whose "token" signs this
	// source's webhook deliveries; the receiver's shared secret is then refused for it. Without
	// it, the shared secret signs them.
	WebhookSecretRef *LocalObjectReference `json:"webhookSecretRef,omitempty"`
	// Verify, when set, applies only commits signed by a key of the armored OpenPGP keyring in
	// the Secret's "keyring" entry (cluster controller; VerifyKeyring inline on a local node).
	Verify *VerifySpec `json:"verify,omitempty"`
	// Prune deletes what an earlier revision applied and this one lacks (default true); an
	// object annotated netpact.io/prune: disabled is never deleted.
	Prune *bool `json:"prune,omitempty"`
}

// LocalObjectReference names an object of the same namespace.
type LocalObjectReference struct {
	// Name is the object's name.
	Name string `json:"name"`
}

// VerifySpec says where the trusted OpenPGP keys are.
type VerifySpec struct {
	// SecretRef names a Secret of the PolicySource's namespace whose "keyring" entry is an
	// armored OpenPGP keyring.
	SecretRef LocalObjectReference `json:"secretRef"`
}

// ResourceRef is an object of the inventory as Flux writes it: ID
// "<namespace>_<name>_<group>_<kind>" and V its version.
type ResourceRef struct {
	// ID is "<namespace>_<name>_<group>_<kind>".
	ID string `json:"id"`
	// V is the object's API version.
	V string `json:"v"`
}

// ResourceInventory is what the last applied revision put in the cluster.
type ResourceInventory struct {
	// Entries are the objects, one each.
	Entries []ResourceRef `json:"entries"`
}

// PolicySourceStatus is what the reconciler reports.
type PolicySourceStatus struct {
	// ObservedGeneration is the generation of the spec the status is about.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions are Ready and Reconciling, as Flux's sources report them.
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// LastAttemptedRevision is the newest revision seen, whatever became of it.
	LastAttemptedRevision string `json:"lastAttemptedRevision,omitempty"`
	// LastAppliedRevision is the newest revision handed to the targets.
	LastAppliedRevision string `json:"lastAppliedRevision,omitempty"`
	// LastEnforcedRevision is the revision the targets' datapaths hold, and since when.
	LastEnforcedRevision string `json:"lastEnforcedRevision,omitempty"`
	// LastEnforcedAt is when every node first held LastEnforcedRevision.
	LastEnforcedAt *metav1.Time `json:"lastEnforcedAt,omitempty"`
	// Errors are the problems of the last failed revision, each with file:line.
	Errors []string `json:"errors,omitempty"`
	// Warnings are those of the last revision that validated, each with file:line: policies it
	// applies that will not do what they read as (a Kafka rule, a toFQDNs rule without a dns rule).
	Warnings []string `json:"warnings,omitempty"`
	// Inventory is what the last applied revision put in the cluster (cluster controller).
	Inventory *ResourceInventory `json:"inventory,omitempty"`
	// EnforcedNodes is "N/M": nodes whose datapath holds every applied object's generation, of
	// all nodes; LaggingNodes names the others and why.
	EnforcedNodes string `json:"enforcedNodes,omitempty"`
	// LaggingNodes are the nodes that do not hold the applied revision yet, each with why.
	LaggingNodes []string `json:"laggingNodes,omitempty"`
	// LastHandledReconcileAt is the reconcile.fluxcd.io/requestedAt value last acted on.
	LastHandledReconcileAt string `json:"lastHandledReconcileAt,omitempty"`
}

// GetConditions returns the status conditions (Flux's conditions.Getter).
func (in *PolicySource) GetConditions() []metav1.Condition { return in.Status.Conditions }

// SetConditions replaces the status conditions (Flux's conditions.Setter).
func (in *PolicySource) SetConditions(c []metav1.Condition) { in.Status.Conditions = c }

// DeepCopyInto copies the object into out.
func (in *PolicySource) DeepCopyInto(out *PolicySource) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec = in.Spec
	out.Status = in.Status
	if in.Status.Conditions != nil {
		out.Status.Conditions = make([]metav1.Condition, len(in.Status.Conditions))
		for i := range in.Status.Conditions {
			in.Status.Conditions[i].DeepCopyInto(&out.Status.Conditions[i])
		}
	}
	if in.Status.LastEnforcedAt != nil {
		out.Status.LastEnforcedAt = in.Status.LastEnforcedAt.DeepCopy()
	}
	if in.Status.Errors != nil {
		out.Status.Errors = append([]string(nil), in.Status.Errors...)
	}
	if in.Status.Warnings != nil {
		out.Status.Warnings = append([]string(nil), in.Status.Warnings...)
	}
	if in.Spec.SecretRef != nil {
		r := *in.Spec.SecretRef
		out.Spec.SecretRef = &r
	}
	if in.Spec.WebhookSecretRef != nil {
		r := *in.Spec.WebhookSecretRef
		out.Spec.WebhookSecretRef = &r
	}
	if in.Spec.Verify != nil {
		v := *in.Spec.Verify
		out.Spec.Verify = &v
	}
	if in.Spec.Prune != nil {
		b := *in.Spec.Prune
		out.Spec.Prune = &b
	}
	if in.Status.Inventory != nil {
		out.Status.Inventory = &ResourceInventory{Entries: append([]ResourceRef(nil), in.Status.Inventory.Entries...)}
	}
	if in.Status.LaggingNodes != nil {
		out.Status.LaggingNodes = append([]string(nil), in.Status.LaggingNodes...)
	}
}

// DeepCopy returns a copy.
func (in *PolicySource) DeepCopy() *PolicySource {
	if in == nil {
		return nil
	}
	out := new(PolicySource)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *PolicySource) DeepCopyObject() runtime.Object { return in.DeepCopy() }

// PolicySourceList is a list of PolicySources.
//
// +kubebuilder:object:root=true
type PolicySourceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PolicySource `json:"items"`
}

// DeepCopyObject implements runtime.Object.
func (in *PolicySourceList) DeepCopyObject() runtime.Object {
	if in == nil {
		return nil
	}
	out := &PolicySourceList{TypeMeta: in.TypeMeta}
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	for i := range in.Items {
		out.Items = append(out.Items, *in.Items[i].DeepCopy())
	}
	return out
}

// SchemeBuilder registers netpact.io/v1alpha1's kinds; AddToScheme adds them to a scheme.
var (
	SchemeBuilder = runtime.NewSchemeBuilder(func(s *runtime.Scheme) error {
		s.AddKnownTypes(GroupVersion, &PolicySource{}, &PolicySourceList{})
		metav1.AddToGroupVersion(s, GroupVersion)
		return nil
	})
	AddToScheme = SchemeBuilder.AddToScheme
)
