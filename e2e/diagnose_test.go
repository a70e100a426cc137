package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/enforcer/kubenode"
	"github.com/netpact/netpact/internal/kubeapply"
)

// failuresFile collects, for every failed kind spec, its failure and the cluster's state at that
// moment: make e2e prints it last, so that a CI log's tail says why, not only where.
var failuresFile = filepath.Join(root, "bin", "e2e-failures.txt")

// A failed spec's cluster state is read before any cleanup of its container runs (AfterEach
// runs before an Ordered container's DeferCleanup and AfterAll).
var _ = AfterEach(func() {
	rep := CurrentSpecReport()
	if !rep.Failed() || kindData == nil {
		return
	}
	// The cluster first, the failure last: a log's tail ends with what failed.
	var b strings.Builder
	fmt.Fprintf(&b, "--- the cluster when %q failed (ginkgo --seed=%d reruns this order):\n", rep.LeafNodeText,
		GinkgoRandomSeed())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	diagnoseCluster(ctx, &b)
	fmt.Fprintf(&b, "=== FAILED: %s\n    at %s\n%s\n", rep.FullText(), rep.Failure.Location, indent(rep.Failure.Message, 4, 40))
	f, err := os.OpenFile(failuresFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		GinkgoWriter.Printf("diagnostics: %v\n%s", err, b.String())
		return
	}
	defer f.Close()
	_, _ = f.WriteString(b.String())
	GinkgoWriter.Print(b.String())
})

// diagnoseCluster writes what a reader of a failed run needs first: every pod that is not Ready
// or has restarted, with its containers' states and its last log lines, and the recent warnings.
func diagnoseCluster(ctx context.Context, b *strings.Builder) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kindData.Kubeconfig)
	if err != nil {
		fmt.Fprintf(b, "  cluster: %v\n", err)
		return
	}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintf(b, "  cluster: %v\n", err)
		return
	}
	pods, err := kc.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(b, "  list pods: %v\n", err)
		return
	}
	logged := 0
	stuckOn := map[string]bool{} // nodes with a pod not Ready: their enforcer's log is read too
	for i := range pods.Items {
		p := &pods.Items[i]
		ready, restarts := kubeapply.PodReady(p), int32(0)
		for _, cs := range p.Status.ContainerStatuses {
			restarts += cs.RestartCount
		}
		if ready && restarts == 0 {
			continue
		}
		fmt.Fprintf(b, "  pod %s/%s on %s: phase %s, ready %v, restarts %d\n", p.Namespace, p.Name, p.Spec.NodeName, p.Status.Phase, ready, restarts)
		for _, c := range p.Status.Conditions {
			if c.Status != corev1.ConditionTrue {
				fmt.Fprintf(b, "    condition %s=%s %s %s\n", c.Type, c.Status, c.Reason, c.Message)
			}
		}
		for _, cs := range p.Status.ContainerStatuses {
			fmt.Fprintf(b, "    container %s: %s; last %s\n", cs.Name, containerState(cs.State), containerState(cs.LastTerminationState))
		}
		if !ready && p.Spec.NodeName != "" {
			stuckOn[p.Spec.NodeName] = true
		}
		if ready || logged >= 4 {
			continue
		}
		logged++
		for _, previous := range []bool{true, false} {
			raw, err := kc.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Previous: previous, TailLines: ptr(int64(25))}).DoRaw(ctx)
			if err != nil || len(raw) == 0 {
				continue
			}
			fmt.Fprintf(b, "    logs (previous=%v):\n%s\n", previous, indent(string(raw), 6, 25))
		}
	}
	// The enforcer of each node with a pod not Ready: a pod that never gets its network waits
	// for it.
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Namespace != netpactNS || p.Labels["app.kubernetes.io/name"] != "netpact" || !stuckOn[p.Spec.NodeName] {
			continue
		}
		raw, err := kc.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: "enforcer", TailLines: ptr(int64(40))}).DoRaw(ctx)
		if err != nil {
			fmt.Fprintf(b, "  enforcer %s on %s: logs: %v\n", p.Name, p.Spec.NodeName, err)
			continue
		}
		fmt.Fprintf(b, "  enforcer %s on %s, its last log lines:\n%s\n", p.Name, p.Spec.NodeName, indent(string(raw), 6, 40))
	}
	diagnoseNodeStatuses(ctx, cfg, b)
	events, err := kc.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "type=Warning"})
	if err != nil {
		fmt.Fprintf(b, "  list events: %v\n", err)
		return
	}
	sort.Slice(events.Items, func(i, j int) bool { return lastSeen(&events.Items[i]).Before(lastSeen(&events.Items[j])) })
	recent := events.Items
	if len(recent) > 30 {
		recent = recent[len(recent)-30:]
	}
	for _, e := range recent {
		fmt.Fprintf(b, "  event %s %s/%s %s (x%d): %s\n", lastSeen(&e).Format(time.TimeOnly), e.InvolvedObject.Kind,
			e.InvolvedObject.Namespace+"/"+e.InvolvedObject.Name, e.Reason, e.Count, strings.TrimSpace(e.Message))
	}
}

// diagnoseNodeStatuses writes each node's NodePolicyStatus in one line: when its enforcer last
// synced, how long that took, and what it reports failing.
func diagnoseNodeStatuses(ctx context.Context, cfg *rest.Config, b *strings.Builder) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintf(b, "  node statuses: %v\n", err)
		return
	}
	list, err := dyn.Resource(kubenode.NPSResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(b, "  node statuses: %v\n", err)
		return
	}
	for _, u := range list.Items {
		var st v1alpha1.NodePolicyStatusStatus
		raw, _ := json.Marshal(u.Object["status"])
		if err := json.Unmarshal(raw, &st); err != nil {
			fmt.Fprintf(b, "  node %s status: %v\n", u.GetName(), err)
			continue
		}
		last := "never"
		if st.LastSync != nil {
			last = st.LastSync.Format(time.TimeOnly)
		}
		fmt.Fprintf(b, "  node %s status: last sync %s took %s, %d policies, %d pods programmed, %d failed closed, %d errors %s\n",
			u.GetName(), last, st.SyncDuration, st.PolicyCount, st.Endpoints, st.FailedEndpoints, st.ErrorCount, st.Error)
		for _, ee := range st.EndpointErrors {
			fmt.Fprintf(b, "    %s: %s\n", ee.Pod, ee.Error)
		}
	}
}

func containerState(s corev1.ContainerState) string {
	switch {
	case s.Waiting != nil:
		return "waiting " + s.Waiting.Reason + " " + s.Waiting.Message
	case s.Running != nil:
		return "running since " + s.Running.StartedAt.Format(time.TimeOnly)
	case s.Terminated != nil:
		return fmt.Sprintf("terminated %s exit %d at %s %s", s.Terminated.Reason, s.Terminated.ExitCode,
			s.Terminated.FinishedAt.Format(time.TimeOnly), strings.TrimSpace(s.Terminated.Message))
	}
	return "none"
}

func lastSeen(e *corev1.Event) time.Time {
	if !e.LastTimestamp.IsZero() {
		return e.LastTimestamp.Time
	}
	if !e.EventTime.IsZero() {
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

// indent prefixes each line with n spaces and keeps the last max lines.
func indent(s string, n, max int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > max {
		lines = append([]string{fmt.Sprintf("(%d lines before)", len(lines)-max)}, lines[len(lines)-max:]...)
	}
	pad := strings.Repeat(" ", n)
	return pad + strings.Join(lines, "\n"+pad)
}

func ptr[T any](v T) *T { return &v }
