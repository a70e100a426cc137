package scenarios

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// proberAnnotation marks a pod whose container runs the netpact binary: probes from it go in one
// batch (`netpact probe`) instead of one exec per probe.
const proberAnnotation = "netpact.io/prober"

// probeContainer is the ephemeral container the backend adds to a pod without the netpact
// binary or the probe tools (CoreDNS, for one) to probe from it.
const probeContainer = "netpact-probe"

// ensureNamespaces creates the scenario's namespaces that do not exist, with its labels, and
// adds the scenario's labels to those that do.
func (c *Cluster) ensureNamespaces(ctx context.Context, sc *Scenario) error {
	api := c.opts.Client.CoreV1().Namespaces()
	for _, ns := range sc.Namespaces {
		have, err := api.Get(ctx, ns.Name, metav1.GetOptions{})
		if err == nil && have.DeletionTimestamp != nil {
			// The previous scenario's (Stop does not wait for its namespaces to go): wait for it.
			have, err = c.waitNamespaceGone(ctx, ns.Name)
		}
		switch {
		case apierrors.IsNotFound(err):
			labels := maps.Clone(ns.Labels)
			if labels == nil {
				labels = map[string]string{}
			}
			labels[scenarioLabel] = "true"
			if _, err := api.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.Name, Labels: labels}},
				metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("create namespace %s: %w", ns.Name, err)
			}
			c.createdNS = append(c.createdNS, ns.Name)
		case err != nil:
			return fmt.Errorf("namespace %s: %w", ns.Name, err)
		default:
			missing := map[string]any{}
			for k, v := range ns.Labels {
				if have.Labels[k] != v {
					missing[k] = v
				}
			}
			if len(missing) > 0 {
				if _, err := c.patchLabels(ctx, "", ns.Name, missing); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// waitNamespaceGone waits at most 2 minutes for a namespace being deleted to be gone, and
// returns what Get then says (NotFound).
func (c *Cluster) waitNamespaceGone(ctx context.Context, name string) (*corev1.Namespace, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		have, err := c.opts.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if err != nil || have.DeletionTimestamp == nil {
			return have, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("namespace %s is being deleted (an earlier run's) and is still there: %w", name, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// createPod makes a scenario pod no manifest made: the netpact image serving its ports (a Kafka
// broker for the kafka workload).
func (c *Cluster) createPod(ctx context.Context, p Pod) error {
	if c.opts.ProbeImage == "" {
		return fmt.Errorf("scenario pod %s does not exist, and no probe image is set to create it", p.Key())
	}
	sa := p.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	if sa != "default" {
		_, err := c.opts.Client.CoreV1().ServiceAccounts(p.Namespace).Create(ctx,
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Labels: map[string]string{scenarioLabel: "true"}}},
			metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("service account %s/%s: %w", p.Namespace, sa, err)
		}
	}
	labels := maps.Clone(p.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[scenarioLabel] = "true"
	args := []string{"probe-server", "--ready-file=/tmp/ready"}
	var env []corev1.EnvVar
	if p.Workload == "kafka" {
		// The broker tells clients to connect to the pod's address (kubelet expands $(POD_IP)).
		args = []string{"probe-kafka-broker", "--ready-file=/tmp/ready", "--advertise=$(POD_IP)"}
		for _, t := range c.sc.kafkaTopics(p.Key()) {
			args = append(args, "--topic="+t)
		}
		env = []corev1.EnvVar{{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}}
	}
	var ports []corev1.ContainerPort
	for _, port := range p.Ports {
		args = append(args, "--port="+port.String())
		ports = append(ports, corev1.ContainerPort{Name: port.Name, ContainerPort: int32(port.Port),
			Protocol: corev1.Protocol(port.Protocol.String())})
	}
	grace := int64(1)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: labels,
			Annotations: map[string]string{proberAnnotation: "true"}},
		Spec: corev1.PodSpec{
			ServiceAccountName:            sa,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "probe", Image: c.opts.ProbeImage, ImagePullPolicy: corev1.PullNever, Args: args, Env: env, Ports: ports,
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
					Command: []string{"cat", "/tmp/ready"}}}, PeriodSeconds: 1},
			}},
		},
	}
	if _, err := c.opts.Client.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create pod %s: %w", p.Key(), err)
	}
	c.createdPods = append(c.createdPods, p.Key())
	return nil
}

// waitReady waits until the named pods are Running and Ready.
func (c *Cluster) waitReady(ctx context.Context, keys []string) error {
	for _, k := range keys {
		ns, name, _ := strings.Cut(k, "/")
		for {
			pod, err := c.opts.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err == nil && pod.Status.Phase == corev1.PodRunning && podIsReady(pod) {
				break
			}
			select {
			case <-ctx.Done():
				state := "not found"
				if pod != nil {
					state = string(pod.Status.Phase)
				}
				return fmt.Errorf("pod %s not Ready (%s): %w", k, state, ctx.Err())
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	return nil
}

// ensureServices creates the scenario's Services that no manifest made (kube-dns and seed 002's
// exist already), labeled as the scenario's, so that a probe through one reaches its ClusterIP.
func (c *Cluster) ensureServices(ctx context.Context, sc *Scenario) error {
	for _, svc := range sc.Services {
		api := c.opts.Client.CoreV1().Services(svc.Namespace)
		_, err := api.Get(ctx, svc.Name, metav1.GetOptions{})
		if err == nil {
			continue
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("service %s: %w", svc.Key(), err)
		}
		spec := corev1.ServiceSpec{Selector: svc.Selector, Type: corev1.ServiceTypeClusterIP}
		switch svc.Type {
		case "NodePort":
			spec.Type = corev1.ServiceTypeNodePort
		case "Headless":
			spec.ClusterIP = corev1.ClusterIPNone
		}
		for _, sp := range svc.Ports {
			proto, _ := policy.ParseProto(sp.Protocol)
			target := sp.TargetPort
			if target == 0 {
				target = sp.Port
			}
			spec.Ports = append(spec.Ports, corev1.ServicePort{Name: fmt.Sprintf("p%d-%s", sp.Port, strings.ToLower(proto.String())),
				Port: int32(sp.Port), TargetPort: intstr.FromInt32(int32(target)), NodePort: int32(sp.NodePort),
				Protocol: corev1.Protocol(proto.String())})
		}
		obj := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: svc.Name, Namespace: svc.Namespace,
			Labels: map[string]string{scenarioLabel: "true"}}, Spec: spec}
		if _, err := api.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create service %s: %w", svc.Key(), err)
		}
		c.createdSvcs = append(c.createdSvcs, svc.Key())
	}
	return nil
}

// removeCreated deletes the pods, services and namespaces this run created (not waiting for
// them to go).
func (c *Cluster) removeCreated(ctx context.Context) error {
	var errs []string
	grace := int64(0)
	for _, k := range c.createdSvcs {
		ns, name, _ := strings.Cut(k, "/")
		err := c.opts.Client.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err.Error())
		}
	}
	c.createdSvcs = nil
	for _, k := range c.createdPods {
		ns, name, _ := strings.Cut(k, "/")
		err := c.opts.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err.Error())
		}
	}
	for _, ns := range c.createdNS {
		err := c.opts.Client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err.Error())
		}
	}
	c.createdPods, c.createdNS = nil, nil
	if len(errs) > 0 {
		return fmt.Errorf("remove scenario pods and namespaces: %s", strings.Join(errs, "; "))
	}
	return nil
}

// patchLabels merges labels (a nil value removes one) into a namespace (ns "") or a pod, and
// returns the resourceVersion the API server gave the change.
func (c *Cluster) patchLabels(ctx context.Context, ns, name string, labels map[string]any) (int64, error) {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	var rv string
	if ns == "" {
		got, err := c.opts.Client.CoreV1().Namespaces().Patch(ctx, name, ktypes.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil {
			return 0, fmt.Errorf("label namespace %s: %w", name, err)
		}
		rv = got.ResourceVersion
	} else {
		got, err := c.opts.Client.CoreV1().Pods(ns).Patch(ctx, name, ktypes.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil {
			return 0, fmt.Errorf("label pod %s/%s: %w", ns, name, err)
		}
		rv = got.ResourceVersion
	}
	v, _ := strconv.ParseInt(rv, 10, 64)
	return v, nil
}

// relabel makes the cluster's namespace and pod labels those of the engine's cluster where a
// step changed them, and returns the newest resourceVersion of the changes (0 for none).
func (c *Cluster) relabel(ctx context.Context, pc *policy.Cluster) (int64, error) {
	var newest int64
	diff := func(old, want map[string]string) map[string]any {
		out := map[string]any{}
		for k, v := range want {
			if old[k] != v {
				out[k] = v
			}
		}
		for k := range old {
			if _, ok := want[k]; !ok {
				out[k] = nil
			}
		}
		return out
	}
	for _, ns := range pc.Namespaces {
		old := c.nsLabels[ns.Name]
		if d := diff(old, ns.Labels); len(d) > 0 {
			delete(d, scenarioLabel)
			v, err := c.patchLabels(ctx, "", ns.Name, d)
			if err != nil {
				return 0, err
			}
			newest = max(newest, v)
			c.nsLabels[ns.Name] = maps.Clone(ns.Labels)
		}
	}
	for _, ep := range pc.Endpoints {
		k := ep.Key().String()
		old := c.podLabels[k]
		if d := diff(old, ep.Labels); len(d) > 0 {
			for _, pod := range c.pods[k] {
				v, err := c.patchLabels(ctx, pod.Namespace, pod.Name, d)
				if err != nil {
					return 0, err
				}
				newest = max(newest, v)
			}
			c.podLabels[k] = maps.Clone(ep.Labels)
		}
	}
	return newest, nil
}

// ProbeBatch probes every cell: sources that run the netpact binary (pods the backend made, or
// an ephemeral probe container) get one exec with all their probes, the others one exec per
// probe (curl, nc and psql of the seed workloads' images).
func (c *Cluster) ProbeBatch(cells []Cell) []Outcome {
	out := make([]Outcome, len(cells))
	bySource := map[string][]int{}
	for i, cell := range cells {
		bySource[cell.From] = append(bySource[cell.From], i)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for from, idx := range bySource {
		pods := c.pods[from]
		if len(pods) == 0 {
			for _, i := range idx {
				out[i] = "error"
			}
			continue
		}
		container, batch := c.prober(pods[0])
		if !batch && c.opts.ProbeImage != "" {
			// HTTPS to an external host needs the harness's CA, and a Kafka probe a Kafka client:
			// the probe container's agent has them, the workload's curl would not.
			var ext []int
			rest := idx[:0:0]
			for _, i := range idx {
				// UDP and SCTP too: the pod's own tools probe TCP only.
				if cells[i].External != "" || cells[i].Kafka != "" ||
					(cells[i].Lookup == "" && cells[i].Port.Protocol != policy.ProtoTCP) {
					ext = append(ext, i)
				} else {
					rest = append(rest, i)
				}
			}
			if len(ext) > 0 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c.batch(pods[0], probeContainer, cells, ext, out)
				}()
			}
			idx = rest
		}
		if !batch {
			for _, i := range idx {
				wg.Add(1)
				go func() {
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					out[i] = c.Probe(cells[i])
				}()
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.batch(pods[0], container, cells, idx, out)
		}()
	}
	wg.Wait()
	return out
}

// prober says which container of the pod probes in batches ("" and false: none, use the tools).
func (c *Cluster) prober(pod corev1.Pod) (string, bool) {
	if pod.Annotations[proberAnnotation] == "true" {
		return pod.Spec.Containers[0].Name, true
	}
	for _, ec := range pod.Spec.EphemeralContainers {
		if ec.Name == probeContainer {
			return probeContainer, true
		}
	}
	image := pod.Spec.Containers[0].Image
	for _, tools := range []string{"/debug:", "/flask:", "/postgres:"} {
		if strings.Contains(image, tools) {
			return "", false
		}
	}
	if c.opts.ProbeImage == "" {
		return "", false
	}
	return probeContainer, true
}

// ensureProbeContainer adds the netpact probe container to a pod that lacks tools, once.
func (c *Cluster) ensureProbeContainer(ctx context.Context, pod corev1.Pod) error {
	cur, err := c.opts.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	running := func(p *corev1.Pod) bool {
		for _, st := range p.Status.EphemeralContainerStatuses {
			if st.Name == probeContainer && st.State.Running != nil {
				return true
			}
		}
		return false
	}
	if running(cur) {
		return nil
	}
	have := false
	for _, ec := range cur.Spec.EphemeralContainers {
		have = have || ec.Name == probeContainer
	}
	if !have {
		cur.Spec.EphemeralContainers = append(cur.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: probeContainer, Image: c.opts.ProbeImage,
				ImagePullPolicy: corev1.PullNever, Args: []string{"probe-server"}}})
		if _, err := c.opts.Client.CoreV1().Pods(pod.Namespace).UpdateEphemeralContainers(ctx, pod.Name, cur,
			metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("add the probe container to %s/%s: %w", pod.Namespace, pod.Name, err)
		}
	}
	for {
		p, err := c.opts.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err == nil && running(p) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the probe container of %s/%s does not run: %w", pod.Namespace, pod.Name, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// batch runs the cells idx of one source pod in one `netpact probe` exec.
func (c *Cluster) batch(src corev1.Pod, container string, cells []Cell, idx []int, out []Outcome) {
	fail := func(msg string) {
		for _, i := range idx {
			out[i] = "error"
			c.record(cells[i], msg)
		}
	}
	if container == probeContainer {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := c.ensureProbeContainer(ctx, src)
		cancel()
		if err != nil {
			fail(err.Error())
			return
		}
	}
	var reqs []probeagent.Request
	owner := map[int]int{}       // request id -> cell index
	dest := map[int]corev1.Pod{} // SCTP request id -> the pod asked whether its INIT arrived
	targetsOf := map[int][]target{}
	for _, i := range idx {
		cell := cells[i]
		if cell.Port.Protocol == policy.ProtoSCTP && (cell.Service != "" || cell.External != "") {
			out[i] = "error"
			c.record(cell, "an SCTP probe on a cluster goes to pods only: whether its INIT arrived is asked of "+
				"the destination pod's listener, and a Service or an external host names none")
			continue
		}
		targets, err := c.targets(cell, src)
		if err != nil {
			out[i] = "error"
			c.record(cell, err.Error())
			continue
		}
		if cell.Port.Protocol == policy.ProtoSCTP {
			if p, ok := c.sctpListenerMissing(cell); !ok {
				out[i] = "error"
				c.record(cell, fmt.Sprintf("an SCTP probe goes to pods the scenario run made, whose probe server "+
					"listens for SCTP: %s/%s is not one", p.Namespace, p.Name))
				continue
			}
		}
		if cell.Lookup != "" {
			targets = targets[:1]
		} else if len(targets) == 1 && cell.Service != "" && cell.Via == "clusterIP" && len(cell.Backends) > 1 {
			// Translation picks a backend per connection: enough probes to meet each.
			for range min(4*len(cell.Backends), 16) - 1 {
				targets = append(targets, targets[0])
			}
		}
		targetsOf[i] = targets
		for j, t := range targets {
			r := probeagent.Request{ID: len(reqs), Proto: cell.Port.Protocol.String(), Host: t.host, Port: t.port,
				HTTP: cell.HTTP, TimeoutMS: int(c.opts.ProbeTimeout.Milliseconds())}
			if cell.HTTP {
				r.Method, r.Path = cell.method(), cell.path()
				r.VHost, r.Headers, r.Seen = cell.VHost, cell.Headers, cell.Seen
			}
			if t.port == 53 && !cell.HTTP {
				r.DNS = true
			}
			if cell.Lookup != "" {
				r.DNS, r.Lookup, r.Name, r.ExactRCode = false, true, cell.Lookup, cell.ExactRCode
			}
			if cell.External != "" {
				c.externalRequest(&r, cell)
			}
			if cell.Kafka != "" {
				r.HTTP, r.DNS, r.Kafka, r.Topic, r.ClientID = false, false, cell.Kafka, cell.Topic, cell.ClientID
			}
			owner[r.ID] = i
			if cell.Port.Protocol == policy.ProtoSCTP {
				dest[r.ID] = c.pods[cell.To][j]
			}
			reqs = append(reqs, r)
		}
	}
	if len(reqs) == 0 {
		return
	}
	results, err := c.runProbes(src, container, reqs)
	if err != nil {
		fail(err.Error())
		return
	}
	c.sctpArrivals(src, reqs, dest, results)
	per := map[int][]probeagent.Result{}
	for _, r := range results {
		per[owner[r.ID]] = append(per[owner[r.ID]], r)
	}
	keys := make([]int, 0, len(per))
	for i := range per {
		keys = append(keys, i)
	}
	sort.Ints(keys)
	for _, i := range keys {
		rs := per[i]
		var notes []string
		outcomes := make([]Outcome, len(rs))
		for j, r := range rs {
			outcomes[j] = Outcome(r.Outcome)
			notes = append(notes, fmt.Sprintf("%s from %s (%s) to %s: %s", r.Outcome, src.Name, src.Spec.NodeName,
				targetsOf[i][j], r.Note))
		}
		c.record(cells[i], strings.Join(notes, "; "))
		if cells[i].Service != "" {
			out[i] = combineSet(outcomes)
		} else {
			out[i] = combine(outcomes)
		}
	}
}

// sctpListenerMissing finds a destination pod of an SCTP cell that the run did not make, so that
// no probe server of its listens for SCTP; ok when there is none.
func (c *Cluster) sctpListenerMissing(cell Cell) (corev1.Pod, bool) {
	for _, p := range c.pods[cell.To] {
		if p.Annotations[proberAnnotation] != "true" {
			return p, false
		}
	}
	return corev1.Pod{}, true
}

// sctpArrivals turns the results of SCTP probes (reqs), INITs sent (probeagent.SCTPSent), into allow
// or timeout: the probe server of each destination pod (dest, by request id), which records the
// INITs its raw SCTP sockets receive, is asked which arrived, every pod at once, each waiting up
// to the probe timeout for those that have not. An INIT is known by its source address and port,
// destination port and tag.
func (c *Cluster) sctpArrivals(src corev1.Pod, reqs []probeagent.Request, dest map[int]corev1.Pod, results []probeagent.Result) {
	type ask struct {
		pod   corev1.Pod
		res   []int // indexes into results
		inits []probeagent.SCTPInit
	}
	srcAddr, _ := netip.ParseAddr(src.Status.PodIP)
	byPod := map[string]*ask{}
	for k, r := range results {
		if r.Outcome != probeagent.SCTPSent {
			continue
		}
		p, ok := dest[r.ID]
		if !ok {
			results[k].Outcome, results[k].Note = "error", r.Note+"; no destination pod to ask whether it arrived"
			continue
		}
		key := p.Namespace + "/" + p.Name
		a := byPod[key]
		if a == nil {
			a = &ask{pod: p}
			byPod[key] = a
		}
		a.res = append(a.res, k)
		a.inits = append(a.inits, probeagent.SCTPInit{Src: srcAddr, SPort: r.SPort, DPort: reqs[r.ID].Port, Tag: r.Tag})
	}
	var wg sync.WaitGroup
	for key, a := range byPod {
		wg.Add(1)
		go func() {
			defer wg.Done()
			arrived, err := c.askSCTP(a.pod, a.inits)
			for n, k := range a.res {
				r := &results[k]
				switch {
				case err != nil:
					r.Outcome, r.Note = "error", fmt.Sprintf("%s; asking %s whether it arrived: %v", r.Note, key, err)
				case arrived[n]:
					r.Outcome, r.Note = string(Allow), fmt.Sprintf("%s; it arrived at %s", r.Note, key)
				default:
					r.Outcome, r.Note = string(Timeout), fmt.Sprintf("%s; it had not arrived at %s when asked, %s after "+
						"the probes of the step were made", r.Note, key, c.opts.ProbeTimeout)
				}
			}
		}()
	}
	wg.Wait()
}

// askSCTP runs `netpact probe-sctp-arrived` in the pod's probe server container.
func (c *Cluster) askSCTP(pod corev1.Pod, inits []probeagent.SCTPInit) ([]bool, error) {
	in, _ := json.Marshal(probeagent.SCTPQuestion{Inits: inits, TimeoutMS: int(c.opts.ProbeTimeout.Milliseconds())})
	stdout, stderr, code, err := c.execIn(pod, "", bytes.NewReader(in), []string{"netpact", "probe-sctp-arrived"})
	switch {
	case err != nil:
		return nil, fmt.Errorf("exec netpact probe-sctp-arrived: %w", err)
	case code != 0:
		return nil, fmt.Errorf("netpact probe-sctp-arrived exit %d: %s", code, strings.TrimSpace(stderr))
	}
	var ans probeagent.SCTPAnswer
	if err := json.Unmarshal([]byte(stdout), &ans); err != nil || len(ans.Arrived) != len(inits) {
		return nil, fmt.Errorf("netpact probe-sctp-arrived printed %q", stdout)
	}
	return ans.Arrived, nil
}

// runProbes runs `netpact probe` in a container of the pod with the requests, and returns one
// result for each.
func (c *Cluster) runProbes(src corev1.Pod, container string, reqs []probeagent.Request) ([]probeagent.Result, error) {
	in, _ := json.Marshal(reqs)
	stdout, stderr, code, err := c.execIn(src, container, bytes.NewReader(in), []string{"netpact", "probe"})
	if err != nil || code != 0 {
		return nil, fmt.Errorf("netpact probe in %s/%s exit %d: %v %s", src.Namespace, src.Name, code, err, stderr)
	}
	var results []probeagent.Result
	if err := json.Unmarshal([]byte(stdout), &results); err != nil || len(results) != len(reqs) {
		return nil, fmt.Errorf("netpact probe in %s/%s printed %q", src.Namespace, src.Name, stdout)
	}
	return results, nil
}

// combine is the one outcome of several replicas: theirs when they agree, else mixed(...).
func combine(outcomes []Outcome) Outcome {
	for _, o := range outcomes[1:] {
		if o != outcomes[0] {
			var s []string
			for _, o := range outcomes {
				s = append(s, string(o))
			}
			return Outcome("mixed(" + strings.Join(s, ",") + ")")
		}
	}
	return outcomes[0]
}
