package scenarios

// What a scenario asks of a kind cluster beyond pods and policies: its external hosts
// (containers on kind's network, kind.StartExternal), their names in the cluster's CoreDNS with
// the scenario's TTL, and the enforcers' policy enforcement mode. Each is undone by Stop, and
// what a killed run left is undone by the next Start.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ktypes "k8s.io/apimachinery/pkg/types"

	"github.com/netpact/netpact/deploy"
	"github.com/netpact/netpact/kind"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// The lines that delimit the scenario's hosts block in the CoreDNS Corefile: removing them and
// what is between gives back the Corefile as it was.
const (
	corefileBegin = "    # netpact scenario: external hosts (begin)"
	corefileEnd   = "    # netpact scenario: external hosts (end)"
)

// modeAnnotation on the netpact DaemonSet keeps the enforcers' mode from before a scenario
// switched it, to restore (after a killed run too).
const modeAnnotation = "netpact.io/scenario-restore-mode"

// startExternals runs the scenario's external hosts on the kind cluster and routes their
// addresses (ExternalAddrs, as on the local node) from every node (Start removed any a killed
// run left, in undoCluster).
func (c *Cluster) startExternals(sc *Scenario) error {
	for i := range sc.Externals {
		e := &sc.Externals[i]
		v4, v6 := ExternalAddrs(i)
		cert, key, ca, err := externalCertificate(e, []netip.Addr{v4, v6})
		if err != nil {
			return err
		}
		c.caPEM = string(ca)
		var ports []uint16
		for _, p := range e.Ports {
			ports = append(ports, p.Port)
		}
		if err := kind.StartExternal(c.opts.Kind, c.opts.ProbeImage, kind.ExternalHost{Name: e.Name,
			Addrs: []netip.Addr{v4, v6}, Ports: ports, CertPEM: cert, KeyPEM: key}); err != nil {
			return err
		}
	}
	return nil
}

// hostsBlock is what CoreDNS answers outside the cluster's zones while the scenario runs, as the
// local node's dns workload does: each external's names with its addresses and the scenario's
// TTL, NXDOMAIN for every other name (offline, forwarding them upstream would give SERVFAIL).
// The template plugin, not hosts: hosts answers SERVFAIL, not NXDOMAIN, for names it lacks, and
// template runs before it in CoreDNS's plugin chain. Names under .local and .arpa fall through
// to the kubernetes plugin as before.
func hostsBlock(sc *Scenario) string {
	var b strings.Builder
	b.WriteString(corefileBegin + "\n")
	ttl := sc.dnsTTL()
	for i, e := range sc.Externals {
		v4, v6 := ExternalAddrs(i)
		for _, n := range e.Names {
			fq := policy.FQDN(n)
			match := "^" + strings.ReplaceAll(fq, ".", "[.]") + "$"
			for _, rr := range []struct{ typ, addr string }{{"A", v4.String()}, {"AAAA", v6.String()}} {
				fmt.Fprintf(&b, "    template IN %s %s {\n        match \"%s\"\n        answer \"{{ .Name }} %d IN %s %s\"\n        fallthrough\n    }\n",
					rr.typ, fq, match, ttl, rr.typ, rr.addr)
			}
			// Other types of a known name: no data, not NXDOMAIN.
			fmt.Fprintf(&b, "    template IN ANY %s {\n        match \"%s\"\n        rcode NOERROR\n        fallthrough\n    }\n", fq, match)
		}
	}
	fmt.Fprintf(&b, "    template ANY ANY . {\n        match \"%s\"\n        rcode NXDOMAIN\n        fallthrough\n    }\n%s\n",
		outsideCluster, corefileEnd)
	return b.String()
}

// outsideCluster matches the names whose last label is neither local (the cluster's domain) nor
// arpa (reverse lookups), without backslashes or braces (the Corefile's lexer reads those).
var outsideCluster = func() string {
	n := "[^.]"
	last := []string{n + n + "?" + n + "?", n + n + n + n + n + n + "+"}
	for _, word := range []string{"arpa", "local"} {
		for i := range word {
			alt := word[:i] + "[^" + word[i:i+1] + ".]"
			for range len(word) - i - 1 {
				alt += n
			}
			last = append(last, alt)
		}
	}
	return "^(" + n + "+[.])*(" + strings.Join(last, "|") + ")[.]$"
}()

// withoutHosts is the Corefile without the scenario's block.
func withoutHosts(corefile string) string {
	begin := strings.Index(corefile, corefileBegin)
	end := strings.Index(corefile, corefileEnd)
	if begin < 0 || end < begin {
		return corefile
	}
	return corefile[:begin] + strings.TrimPrefix(corefile[end+len(corefileEnd):], "\n")
}

// withHosts puts the block first in the root server block (".:53 {"), before kubernetes and
// forward, so that it answers the names it knows.
func withHosts(corefile, block string) (string, error) {
	corefile = withoutHosts(corefile)
	i := strings.Index(corefile, ".:53 {\n")
	if i < 0 {
		return "", errors.New(`the Corefile has no ".:53 {" server block`)
	}
	i += len(".:53 {\n")
	return corefile[:i] + block + corefile[i:], nil
}

// setCorefile makes the cluster's CoreDNS serve the Corefile edit makes of its own, restarts it
// and waits until every replica runs it; unchanged, it does nothing.
func (c *Cluster) setCorefile(ctx context.Context, edit func(string) (string, error)) error {
	cms := c.opts.Client.CoreV1().ConfigMaps("kube-system")
	cm, err := cms.Get(ctx, "coredns", metav1.GetOptions{})
	if apierrors.IsNotFound(err) && !c.dnsChanged {
		return nil // a cluster without CoreDNS, that no run changed
	}
	if err != nil {
		return fmt.Errorf("coredns configmap: %w", err)
	}
	next, err := edit(cm.Data["Corefile"])
	if err != nil {
		return fmt.Errorf("coredns configmap: %w", err)
	}
	if next == cm.Data["Corefile"] {
		return nil
	}
	cm.Data["Corefile"] = next
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update the coredns configmap: %w", err)
	}
	c.dnsChanged = true
	// A restart, rather than waiting for the reload plugin and kubelet's sync of the volume:
	// new pods read the ConfigMap as it is now.
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{"netpact.io/restarted-at": time.Now().Format(time.RFC3339Nano)}}}}})
	if _, err := c.opts.Client.AppsV1().Deployments("kube-system").Patch(ctx, "coredns", ktypes.MergePatchType, patch,
		metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("restart coredns: %w", err)
	}
	if err := c.waitRolledOut(ctx, "deployment kube-system/coredns", func() (bool, error) {
		d, err := c.opts.Client.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		want := *d.Spec.Replicas
		st := d.Status
		return st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == want && st.ReadyReplicas == want &&
			st.AvailableReplicas == want && st.Replicas == want, nil
	}); err != nil {
		return err
	}
	return c.waitDNSTranslated(ctx)
}

// waitDNSTranslated waits until every node translates kube-dns to CoreDNS's new pods (its
// EndpointSlices' newest version): a lookup right after the restart must not go to a pod gone.
func (c *Cluster) waitDNSTranslated(ctx context.Context) error {
	if err := c.ensureApplier(); err != nil {
		return err
	}
	list, err := c.opts.Client.DiscoveryV1().EndpointSlices("kube-system").List(ctx,
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kube-dns"})
	if err != nil {
		return fmt.Errorf("kube-dns endpoints: %w", err)
	}
	for _, s := range list.Items {
		if v, err := strconv.ParseInt(s.ResourceVersion, 10, 64); err == nil {
			c.minServicesVersion = max(c.minServicesVersion, v)
		}
	}
	return c.waitEnforced(ctx, nil)
}

// waitRolledOut polls done every 500 ms until it is true.
func (c *Cluster) waitRolledOut(ctx context.Context, what string, done func() (bool, error)) error {
	var last error
	for {
		ok, err := done()
		if ok {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("roll out %s: %w (last error: %v)", what, ctx.Err(), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// checkNames resolves each external's names from a pod the backend made, through kube-dns,
// four times each (so that every CoreDNS replica is likely asked), and fails unless each answer
// is the external's IPv4 address.
func (c *Cluster) checkNames(sc *Scenario, from corev1.Pod) error {
	var reqs []probeagent.Request
	want := map[int]string{}
	for i, e := range sc.Externals {
		v4, _ := ExternalAddrs(i)
		for _, n := range e.Names {
			for range 4 {
				want[len(reqs)] = v4.String()
				reqs = append(reqs, probeagent.Request{ID: len(reqs), Lookup: true, Name: policy.FQDN(n),
					TimeoutMS: int(c.opts.ProbeTimeout.Milliseconds())})
			}
		}
	}
	if len(reqs) == 0 {
		return nil
	}
	results, err := c.runProbes(from, from.Spec.Containers[0].Name, reqs)
	if err != nil {
		return fmt.Errorf("check the externals' names in coredns: %w", err)
	}
	for _, r := range results {
		if r.Outcome != "allow" || !strings.Contains(r.Note, want[r.ID]) {
			return fmt.Errorf("coredns does not answer %s with %s: %s %s", reqs[r.ID].Name, want[r.ID], r.Outcome, r.Note)
		}
	}
	return nil
}

// setEnforcerMode makes the enforcers' --policy-enforcement-mode mode: the DaemonSet's argument
// patched (its mode before kept in modeAnnotation, unless there already), and a rollout waited
// for until every node's enforcer is ready with it. The same mode does nothing.
func (c *Cluster) setEnforcerMode(ctx context.Context, mode EnforcementMode, remember bool) error {
	ds, err := deploy.Enforcer(ctx, c.opts.Client)
	if err != nil {
		return fmt.Errorf("enforcement mode: %w", err)
	}
	name := "DaemonSet " + ds.Namespace + "/" + ds.Name
	dsAPI := c.opts.Client.AppsV1().DaemonSets(ds.Namespace)
	have, err := c.enforcerMode(ctx)
	if err != nil {
		return err
	}
	if ds.Annotations == nil {
		ds.Annotations = map[string]string{}
	}
	_, kept := ds.Annotations[modeAnnotation]
	switch {
	case remember && !kept:
		ds.Annotations[modeAnnotation] = string(have)
	case !remember:
		delete(ds.Annotations, modeAnnotation)
	}
	if have != mode {
		if err := setModeArg(ds, mode); err != nil {
			return err
		}
	} else if remember == kept {
		return nil
	}
	ds, err = dsAPI.Update(ctx, ds, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("enforcement mode %s: update %s: %w", mode, name, err)
	}
	gen := ds.Generation
	return c.waitRolledOut(ctx, strings.ToLower(name), func() (bool, error) {
		ds, err := dsAPI.Get(ctx, ds.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		st := ds.Status
		return st.ObservedGeneration >= gen && st.UpdatedNumberScheduled == st.DesiredNumberScheduled &&
			st.NumberReady == st.DesiredNumberScheduled && st.NumberAvailable == st.DesiredNumberScheduled &&
			st.NumberUnavailable == 0, nil
	})
}

// setModeArg sets the enforcer container's --policy-enforcement-mode.
func setModeArg(ds *appsv1.DaemonSet, mode EnforcementMode) error {
	for i := range ds.Spec.Template.Spec.Containers {
		ctr := &ds.Spec.Template.Spec.Containers[i]
		if ctr.Name != deploy.EnforcerContainer {
			continue
		}
		arg := "--policy-enforcement-mode=" + string(mode)
		for j, a := range ctr.Args {
			if strings.HasPrefix(a, "--policy-enforcement-mode=") {
				ctr.Args[j] = arg
				return nil
			}
		}
		ctr.Args = append(ctr.Args, arg)
		return nil
	}
	return fmt.Errorf("DaemonSet %s/%s has no %s container", ds.Namespace, ds.Name, deploy.EnforcerContainer)
}

// restoreEnforcerMode gives the enforcers back the mode a scenario (this run's or a killed
// one's) switched them from.
func (c *Cluster) restoreEnforcerMode(ctx context.Context) error {
	ds, err := deploy.Enforcer(ctx, c.opts.Client)
	if errors.Is(err, deploy.ErrNotInstalled) {
		return nil // nothing to restore
	}
	if err != nil {
		return fmt.Errorf("enforcement mode: %w", err)
	}
	was, ok := ds.Annotations[modeAnnotation]
	if !ok {
		return nil
	}
	mode, err := policy.ParseMode(was)
	if err != nil {
		return fmt.Errorf("enforcement mode to restore (%s): %w", modeAnnotation, err)
	}
	return c.setEnforcerMode(ctx, EnforcementMode(mode), false)
}

// undoCluster restores what the scenario changed in the cluster beyond pods and policies: the
// enforcers' mode, CoreDNS's Corefile, the external hosts.
func (c *Cluster) undoCluster() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := c.restoreEnforcerMode(ctx)
	err = errors.Join(err, c.setCorefile(ctx, func(s string) (string, error) { return withoutHosts(s), nil }))
	// On kind always: a killed run's hosts go at the next start, whatever that scenario asks.
	if c.opts.Kind != "" {
		err = errors.Join(err, kind.RemoveExternals(c.opts.Kind))
	}
	return err
}
