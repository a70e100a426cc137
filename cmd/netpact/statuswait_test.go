//go:build linux

package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/reconciler"
)

// TestStatusWait: status --wait gives up after --timeout, exit 1, naming the source that is not
// Ready; it returns as soon as the source becomes Ready and enforced on every node, exit 0, a
// line on stderr for each change it saw.
func TestStatusWait(t *testing.T) {
	sc := newStatusCluster(t)
	sc.enforcer(3)
	ps := sc.source("wait-a", "policies")
	sc.setSource(ps, false, "1/3")

	start := time.Now()
	stdout, stderr, code := run(t, "status", "--kubeconfig", sc.kubeconfig, "-n", "wait-a", "--wait", "--timeout", "1500ms")
	if code != 1 {
		t.Errorf("timed out: exit %d, want 1\n%s%s", code, stdout, stderr)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("a wait of 1.5s took %s", d)
	}
	for _, want := range []string{
		"wait-a/policies: Ready False (Progressing); applied main@sha1:abc; enforced on 1/3 nodes: revision main@sha1:abc is applied",
		"netpact status: waited 1.5s: not Ready and enforced on every node: wait-a/policies: context deadline exceeded",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if !strings.Contains(stdout, "  wait-a/policies: Ready False, enforced on 1/3 nodes") {
		t.Errorf("no report after the wait:\n%s", stdout)
	}

	// The controller catches up while status waits: two more nodes, then Ready.
	errs := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		if err := writeSourceStatus(sc.ctx, sc.cl, ps, false, "2/3"); err != nil {
			errs <- err
			return
		}
		time.Sleep(time.Second)
		errs <- writeSourceStatus(sc.ctx, sc.cl, ps, true, "3/3")
	}()
	stdout, stderr, code = run(t, "status", "--kubeconfig", sc.kubeconfig, "-n", "wait-a", "--wait", "--timeout", "1m", "-o", "json")
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Errorf("settled: exit %d, want 0\n%s%s", code, stdout, stderr)
	}
	var h clusterHealth
	if err := json.Unmarshal([]byte(stdout), &h); err != nil || len(h.Sources) != 1 || h.Sources[0].EnforcedNodes != "3/3" || !h.Healthy {
		t.Errorf("report after the wait: %v\n%s", err, stdout)
	}
	for _, want := range []string{"Ready False (Progressing); applied main@sha1:abc; enforced on 1/3 nodes",
		"Ready False (Progressing); applied main@sha1:abc; enforced on 2/3 nodes",
		"Ready True (Succeeded); applied main@sha1:abc; enforced on 3/3 nodes\n"} {
		if strings.Count(stderr, want) != 1 {
			t.Errorf("stderr has not one line with %q:\n%s", want, stderr)
		}
	}

	if _, _, err := runErr("status", "--wait"); err == nil || !strings.Contains(err.Error(), "--wait is about a cluster's PolicySources: give --kubeconfig FILE or --context NAME") {
		t.Errorf("--wait without a cluster: %v", err)
	}
}

// TestReconcileSourceProgress: reconcile source prints a line on stderr for each change of the
// source's conditions and enforced nodes while the controller works (here the test plays the
// controller's status writes), then the outcome.
func TestReconcileSourceProgress(t *testing.T) {
	sc := newStatusCluster(t)
	ps := sc.source("reconcile-a", "policies")
	sc.setSource(ps, true, "3/3")

	errs := make(chan error, 1)
	go func() { errs <- playController(sc.ctx, sc.cl, ps) }()
	stdout, stderr, code := run(t, "reconcile", "source", "policies", "-n", "reconcile-a", "--kubeconfig", sc.kubeconfig, "--timeout", "1m", "-o", "yaml")
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Errorf("exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{
		"reconcile-a/policies: Ready True (Succeeded); applied main@sha1:abc; enforced on 3/3 nodes\n",
		"reconcile-a/policies: Ready False (Progressing), Reconciling True (Progressing); applied main@sha1:def; enforced on 1/3 nodes: applying main@sha1:def\n",
		"reconcile-a/policies: Ready False (Progressing), Reconciling True (Progressing); applied main@sha1:def; enforced on 2/3 nodes: applying main@sha1:def\n",
		"reconcile-a/policies: Ready True (Succeeded); applied main@sha1:def; enforced on 3/3 nodes\n",
	} {
		if strings.Count(stderr, want) != 1 {
			t.Errorf("stderr has not one line %q:\n%s", want, stderr)
		}
	}
	for _, want := range []string{"apiVersion: netpact.io/v1alpha1\nkind: PolicySource\n", "lastEnforcedRevision: main@sha1:def"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("-o yaml lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "managedFields") {
		t.Errorf("-o yaml prints the managed fields, which kubectl leaves out:\n%s", stdout)
	}
}

// playController answers a reconcile request of ps as the controller's status writes would: it
// applies main@sha1:def, which reaches one node, two, then all three.
func playController(ctx context.Context, cl client.Client, ps *v1alpha1.PolicySource) error {
	key := client.ObjectKeyFromObject(ps)
	var requested string
	for requested == "" {
		if err := cl.Get(ctx, key, ps); err != nil {
			return err
		}
		requested = ps.Annotations[reconciler.ReconcileRequestAnnotation]
		time.Sleep(50 * time.Millisecond)
	}
	for _, enforced := range []string{"1/3", "2/3", "3/3"} {
		time.Sleep(400 * time.Millisecond)
		if err := cl.Get(ctx, key, ps); err != nil {
			return err
		}
		ps.Status.LastAppliedRevision, ps.Status.EnforcedNodes = "main@sha1:def", enforced
		ps.Status.Conditions = []metav1.Condition{
			{Type: meta.ReadyCondition, Status: metav1.ConditionFalse, Reason: meta.ProgressingReason, Message: "applying main@sha1:def", LastTransitionTime: metav1.Now()},
			{Type: meta.ReconcilingCondition, Status: metav1.ConditionTrue, Reason: meta.ProgressingReason, Message: "applying", LastTransitionTime: metav1.Now()}}
		if enforced == "3/3" {
			ps.Status.LastEnforcedRevision, ps.Status.LastHandledReconcileAt = "main@sha1:def", requested
			ps.Status.Conditions = []metav1.Condition{{Type: meta.ReadyCondition, Status: metav1.ConditionTrue, Reason: meta.SucceededReason,
				Message: "enforced revision main@sha1:def", LastTransitionTime: metav1.Now()}}
		}
		if err := cl.Status().Update(ctx, ps); err != nil {
			return err
		}
	}
	return nil
}
