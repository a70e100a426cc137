package scenarios

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/textproto"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/policy/matrix"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// Cell is one probe: from a pod to a pod on a port, optionally an HTTP request. A cell through a
// service names it: To and Port are then the backend pod and target port the prediction uses.
type Cell struct {
	From, To string
	Port     Port
	HTTP     bool
	// GRPC makes the request a unary gRPC call to Path (/package.Service/Method) over h2c.
	GRPC   bool
	Method string
	Path   string
	// VHost is the request's Host header (the address when empty), Headers its other headers,
	// and Seen the headers the destination must say it received ("" for absent).
	VHost   string
	Headers map[string]string
	Seen    map[string]string
	// Service (namespace/name), its port and how it is reached (clusterIP, nodePort, dns).
	Service     string
	ServicePort ServicePort
	Via         string
	// Backends are the pods behind Service (namespace/name, with the step's labels): the engine
	// predicts each, as translation may pick any.
	Backends []string
	// Lookup is a DNS name the source pod resolves with its resolver (Service is then kube-dns
	// and Port 53/UDP: what the resolver's query needs from policy). ExactRCode makes an NXDOMAIN
	// answer dns-nxdomain rather than allow: the probe expects a dns- outcome.
	Lookup     string
	ExactRCode bool
	// External is the external host (Scenario.Externals) the probe connects to on Port; To is
	// then ExternalKey(External). Resolve, when set, is a lookup the probe makes first (a Lookup
	// cell): it connects to the address the name resolved to, an address of External.
	External string
	Resolve  *Cell
	// Kafka makes the probe a Kafka client's (probeagent.KafkaProduce or KafkaConsume) on Topic,
	// with client ID ClientID: To is then a pod of the kafka workload.
	Kafka, Topic, ClientID string
	// Explicit cells come from a step's probes list; the matrix tables leave them out.
	Explicit bool
}

func (c Cell) String() string {
	s := fmt.Sprintf("%s -> %s %s", c.From, c.To, c.Port)
	if c.Lookup != "" && c.ExactRCode {
		return fmt.Sprintf("%s -> lookup %s (resolver %s, exact rcode)", c.From, c.Lookup, c.Service)
	}
	if c.Lookup != "" {
		return fmt.Sprintf("%s -> lookup %s (resolver %s)", c.From, c.Lookup, c.Service)
	}
	if c.Resolve != nil {
		return fmt.Sprintf("%s -> lookup %s, then %s %s", c.From, c.Resolve.Lookup, c.To, c.Port)
	}
	if c.Service != "" {
		to := c.To
		if to == "" {
			to = "no backend"
		}
		s = fmt.Sprintf("%s -> service %s:%d via %s (%s %s)", c.From, c.Service, c.ServicePort.Port, c.Via, to, c.Port)
	}
	if c.GRPC {
		return s + " gRPC " + c.path()
	}
	if c.Kafka != "" {
		s += fmt.Sprintf(" Kafka %s %s", c.Kafka, c.Topic)
		if c.ClientID != "" {
			s += fmt.Sprintf(" client %q", c.ClientID)
		}
		return s
	}
	if c.HTTP {
		s += " " + c.method() + " " + c.path()
		if c.VHost != "" {
			s += " host " + c.VHost
		}
		for _, k := range sortedKeys(c.Headers) {
			s += fmt.Sprintf(" %s: %s", k, c.Headers[k])
		}
	}
	return s
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (c Cell) method() string {
	if c.Method == "" {
		return "GET"
	}
	return c.Method
}

func (c Cell) path() string {
	if c.Path == "" {
		return "/"
	}
	return c.Path
}

// Backend is where a scenario runs: it makes pods, enforces policies, and probes.
type Backend interface {
	// Start makes the scenario's namespaces and pods and returns the cluster with addresses.
	Start(sc *Scenario) (*policy.Cluster, error)
	// Enforce makes the backend enforce the policies over the cluster (labels may have changed).
	Enforce(c *policy.Cluster, policies []*policy.Policy) error
	// Probe opens a fresh connection for the cell and reports what happened.
	Probe(c Cell) Outcome
	// Flows returns what the datapath reported for the given cells since the step began.
	Flows(cells []Cell) []string
	// BeginStep marks the start of a step for Flows.
	BeginStep()
	// Stop tears everything down.
	Stop() error
}

// BatchProber is a backend that probes many cells at once better than one by one (a cluster:
// one exec per source pod); the runner uses it when the backend has it.
type BatchProber interface {
	ProbeBatch(cells []Cell) []Outcome
}

// AuditWitness is a backend whose datapath reports the flows a policy in audit mode would have
// dropped (verdict AUDIT).
type AuditWitness interface {
	// Audited reports whether the datapath reported the cell's connection (source pod,
	// destination pod or a backend of the service, protocol and port) as AUDIT since the step
	// began; known is false when the backend cannot tell.
	Audited(c Cell) (audited, known bool)
}

// PacketWitness is a backend whose datapath can tell whether a cell's traffic reached it.
type PacketWitness interface {
	// Seen reports whether any packet between the cell's two pods reached the datapath since the
	// step began; known is false when the backend cannot tell.
	Seen(c Cell) (seen, known bool)
}

// NotSeen is the note of a timed-out probe no packet of which reached the datapath: the pod's
// own network lost it, before any policy could decide, so the timeout says nothing of policy.
const NotSeen = "no packet of this probe was seen by the datapath: the pods' network lost it before any policy decided"

// CellResult is a cell's three answers.
type CellResult struct {
	Cell      Cell    `json:"-"`
	From      string  `json:"from"`
	To        string  `json:"to"`
	Port      string  `json:"port"`
	Expected  Outcome `json:"expected"`
	Predicted Outcome `json:"predicted"`
	// Observed is what the probe saw; empty in a PredictOnly run, which probes nothing.
	Observed Outcome `json:"observed,omitempty"`
	Rule     string  `json:"rule,omitempty"`
	// Loopback cells are shown but never compared: the traffic does not leave the pod.
	Loopback bool `json:"loopback,omitempty"`
	OK       bool `json:"ok"`
	// Note says more of a wrong cell (NotSeen).
	Note string `json:"note,omitempty"`
}

// matrixCell is the cell's place and answers in its step's matrix, which judges and prints them.
func (c *CellResult) matrixCell() matrix.Cell[Outcome] {
	return matrix.Cell[Outcome]{
		Key:      matrix.Key{From: c.From, To: c.To, Port: matrix.Port{Number: c.Cell.Port.Port, Protocol: c.Cell.Port.Protocol}},
		Expected: c.Expected, Predicted: c.Predicted, Observed: c.Observed, Rule: c.Rule,
	}
}

// StepResult is one step.
type StepResult struct {
	Name    string       `json:"name"`
	Pending string       `json:"pending,omitempty"`
	Cells   []CellResult `json:"cells,omitempty"`
	Failed  bool         `json:"failed"`
	Error   string       `json:"error,omitempty"`
	Flows   []string     `json:"flows,omitempty"`
	// Warnings are the notices and warnings of the step's policies (policy.Bundle.AllNotices
	// over the step's cluster) that no earlier step of the scenario reported.
	Warnings []string `json:"warnings,omitempty"`
	ports    []Port
	// mode is the run's (Result.Mode), for what the step's reports say they compared.
	mode Mode
}

// Mode is what a run holds each cell to.
type Mode string

const (
	// Probed is every run on a backend with a datapath: a cell's expected, predicted and
	// observed (real probes) answers must all agree.
	Probed Mode = "probed"
	// PredictOnly is a run on the Prediction backend: a cell's expected answer must agree with
	// the engine's prediction; nothing is probed, so nothing is observed.
	PredictOnly Mode = "predict-only"
)

// columns are the answers the mode compares.
func (m Mode) columns() matrix.Column {
	if m == PredictOnly {
		return matrix.Expected | matrix.Predicted
	}
	return matrix.All
}

// predictor is a backend that probes nothing (Prediction): the runner then compares only the
// expectations with the engine's predictions, and never calls its Probe. The method is
// unexported so that only this package's backend can claim it.
type predictor interface{ predictsOnly() }

// Result is one scenario.
type Result struct {
	Scenario string `json:"scenario"`
	File     string `json:"file"`
	// Mode says what the steps were held to: probed, or predict-only (nothing observed).
	Mode  Mode         `json:"mode"`
	Steps []StepResult `json:"steps"`
	Error string       `json:"error,omitempty"`
}

// Failed reports whether any step failed or the scenario could not run.
func (r *Result) Failed() bool {
	if r.Error != "" {
		return true
	}
	for _, s := range r.Steps {
		if s.Failed {
			return true
		}
	}
	return false
}

// Runner runs scenarios on a backend.
type Runner struct {
	Backend Backend
	// Parallel probes at once; 32 when zero.
	Parallel int
	// Options are the policy engine's, for predictions; they must match the backend's. A
	// scenario's enforcementMode replaces their Mode (and the backend's) while it runs.
	Options policy.Options
	// Verbose keeps a few flow events of every step, not only of failing ones.
	Verbose bool
	// OnStep, when set, is told of each step as soon as it is done: progress for a long run.
	OnStep func(res *Result, step *StepResult)
}

// mode is what the runner's backend lets it check.
func (r *Runner) mode() Mode {
	if _, ok := r.Backend.(predictor); ok {
		return PredictOnly
	}
	return Probed
}

// Run runs one scenario: start, then each step, then stop.
func (r *Runner) Run(sc *Scenario) *Result {
	res := &Result{Scenario: sc.Name, File: sc.file, Mode: r.mode()}
	cluster, err := r.Backend.Start(sc)
	if err != nil {
		res.Error = err.Error()
		r.Backend.Stop()
		return res
	}
	defer r.Backend.Stop()
	policies := map[policy.Key]*policy.Policy{}
	shown := noticesShown{}
	for i := range sc.Steps {
		st := &sc.Steps[i]
		sr := StepResult{Name: st.Name, Pending: st.Pending}
		loaded, err := r.change(sc, st, cluster, policies)
		if err != nil {
			sr.Failed, sr.Error = true, err.Error()
			r.record(res, sr)
			continue
		}
		if st.Pending != "" {
			r.record(res, sr)
			continue
		}
		list := make([]*policy.Policy, 0, len(policies))
		for _, p := range policies {
			list = append(list, p)
		}
		bundle := &policy.Bundle{Policies: list, Notices: loaded}
		state, err := policy.Compile(cluster, bundle, sc.engineOptions(r.Options))
		if err == nil {
			sr.Warnings = shown.add(bundle.AllNotices(state))
			err = r.Backend.Enforce(cluster, list)
		}
		if errors.Is(err, ErrNotEnforced) {
			sr.Pending = err.Error()
			r.record(res, sr)
			continue
		}
		if err != nil {
			sr.Failed, sr.Error = true, err.Error()
			r.record(res, sr)
			continue
		}
		r.Backend.BeginStep()
		cells, expected, ports, err := expectations(sc, st, cluster)
		if err != nil {
			sr.Failed, sr.Error = true, err.Error()
			r.record(res, sr)
			continue
		}
		sr.ports = ports
		sr.Cells = r.probe(sc, state, cells, expected)
		var failing []Cell
		pw, witness := r.Backend.(PacketWitness)
		for i, c := range sr.Cells {
			if !c.OK {
				sr.Failed = true
				failing = append(failing, c.Cell)
				// A timing problem must never read like a policy problem.
				if witness && c.Observed == Timeout {
					if seen, known := pw.Seen(c.Cell); known && !seen {
						sr.Cells[i].Note = NotSeen
					}
				}
			}
		}
		switch {
		case sr.Failed:
			sr.Flows = r.Backend.Flows(failing)
		case r.Verbose:
			all := make([]Cell, len(cells))
			copy(all, cells)
			flows := r.Backend.Flows(all)
			sr.Flows = flows[:min(len(flows), 6)]
		}
		r.record(res, sr)
	}
	return res
}

// record adds a step's result and reports it to OnStep.
func (r *Runner) record(res *Result, sr StepResult) {
	sr.mode = res.Mode
	res.Steps = append(res.Steps, sr)
	if r.OnStep != nil {
		r.OnStep(res, &res.Steps[len(res.Steps)-1])
	}
}

// noticesShown are the notices a scenario's steps reported so far, so that each is reported once:
// at the first step whose policies have it.
type noticesShown map[string]bool

// add returns the notices not reported yet, as text, and remembers them.
func (s noticesShown) add(ns []policy.Notice) []string {
	var out []string
	for _, n := range ns {
		if t := n.String(); !s[t] {
			s[t] = true
			out = append(out, t)
		}
	}
	return out
}

// change applies a step's policy and label changes to the running state; it returns the notices
// of the files it read. The policies' pod address expressions ({{ ip "ns/pod" }}) are expanded
// with the cluster's addresses before they are read.
func (r *Runner) change(sc *Scenario, st *Step, cluster *policy.Cluster, policies map[policy.Key]*policy.Policy) ([]policy.Notice, error) {
	var notices []policy.Notice
	for _, src := range st.Apply {
		var b *policy.Bundle
		var err error
		if src.File != "" {
			x := addresses{cluster: cluster, context: fmt.Sprintf(" (step %q of %s)", st.Name, sc.file)}
			b, err = policy.Load([]string{filepath.Join(sc.dir, src.File)}, policy.LoadOptions{Expand: x.expand})
		} else {
			x := addresses{cluster: cluster}
			b, err = policy.LoadBytes(sc.file+" (inline policy of step "+st.Name+")", []byte(src.Inline), policy.LoadOptions{Expand: x.expand})
		}
		if err != nil {
			return nil, fmt.Errorf("apply: %w", err)
		}
		for _, p := range b.Policies {
			policies[p.Key] = p
		}
		notices = append(notices, b.Notices...)
	}
	for _, d := range st.Delete {
		found := false
		for k := range policies {
			if k.String() == d {
				delete(policies, k)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("delete: no policy %q is applied", d)
		}
	}
	for _, pl := range st.SetPodLabels {
		for i := range cluster.Endpoints {
			if cluster.Endpoints[i].Key().String() == pl.Pod {
				cluster.Endpoints[i].Labels = pl.Labels
			}
		}
	}
	for _, nl := range st.SetNamespaceLabels {
		for i := range cluster.Namespaces {
			if cluster.Namespaces[i].Name == nl.Namespace {
				cluster.Namespaces[i].Labels = nl.Labels
			}
		}
	}
	return notices, nil
}

// expectations lists a step's cells with what the file expects for each.
func expectations(sc *Scenario, st *Step, cluster *policy.Cluster) ([]Cell, map[string]Outcome, []Port, error) {
	labels := func(p *Pod) map[string]string {
		if cluster != nil {
			for _, ep := range cluster.Endpoints {
				if ep.Namespace == p.Namespace && ep.Name == p.Name {
					return ep.Labels
				}
			}
		}
		return p.Labels
	}
	expected := map[string]Outcome{}
	var cells []Cell
	var ports []Port
	if m := st.Expect.Matrix; m != nil {
		def, _ := parseOutcome(m.Default)
		ports = m.Ports
		for _, port := range m.Ports {
			for _, from := range sc.Pods {
				for _, to := range sc.Pods {
					if !serves(to, port) {
						continue
					}
					c := Cell{From: from.Key(), To: to.Key(), Port: port}
					want := def
					for _, ex := range m.Exceptions {
						fm, tm := globMatch(ex.From, c.From), globMatch(ex.To, c.To)
						if fm && tm && (ex.Port == "" || ex.Port == port.String() || ex.Port == fmt.Sprint(port.Port)) {
							want, _ = parseOutcome(ex.Expect)
						}
					}
					if want == HTTP200 || want == HTTP403 {
						c.HTTP = true
					}
					cells = append(cells, c)
					expected[c.String()] = want
				}
			}
		}
	}
	for _, p := range st.Expect.Probes {
		want, _ := parseOutcome(p.Expect)
		c, err := probeCell(sc, p, want, labels)
		if err != nil {
			return nil, nil, nil, err
		}
		if _, dup := expected[c.String()]; !dup {
			cells = append(cells, c)
		}
		expected[c.String()] = want
	}
	return cells, expected, ports, nil
}

// probeCell is the cell of an explicit probe that expects want: to a pod; through a service; a
// lookup, which goes through kube-dns on 53/UDP as its query does; to an external host; or a
// lookup then a connection to the external host whose name it is.
func probeCell(sc *Scenario, p ProbeSpec, want Outcome, labels func(*Pod) map[string]string) (Cell, error) {
	if p.External != "" || p.Lookup != "" && p.Port != 0 {
		return externalCell(sc, p, labels)
	}
	proto, _ := policy.ParseProto(p.Protocol)
	grpcCall := want == GRPCOK || want == GRPCDenied
	c := Cell{From: p.From, To: p.To, Port: Port{Port: p.Port, Protocol: proto}, Method: p.Method, Path: p.Path,
		VHost: p.Host, Headers: p.Headers, Seen: p.Seen,
		HTTP: grpcCall || want == HTTP200 || want == HTTP403 || p.Method != "" || p.Path != "", GRPC: grpcCall, Explicit: true}
	if grpcCall {
		c.Method = "POST" // a gRPC method is a POST to its path
	}
	if role := p.kafkaRole(want); role != "" {
		c.Kafka, c.Topic, c.ClientID = role, string(p.Topic), p.ClientID
	}
	if p.Lookup != "" {
		// The resolver's query: UDP to kube-dns on 53.
		c.Lookup, c.ExactRCode, c.HTTP, p.Service, p.Port, p.Via = p.Lookup, want.isDNS(), false, DNSService, 53, "clusterIP"
		if svc, ok := sc.service(DNSService); ok {
			for _, sp := range svc.Ports {
				if sp.Port == 53 && strings.EqualFold(sp.Protocol, "UDP") {
					c.ServicePort = sp
				}
			}
		}
	}
	if p.Service != "" {
		svc, _ := sc.service(p.Service)
		sp, ok := svc.port(p.Port)
		if c.Lookup != "" && c.ServicePort.Port != 0 {
			sp, ok = c.ServicePort, true
		}
		if !ok {
			return Cell{}, fmt.Errorf("service %s has no port %d", p.Service, p.Port)
		}
		pods, tp := sc.backends(svc, sp, labels)
		if len(pods) == 0 {
			c.To = ""
		} else {
			c.To = pods[0].Key()
		}
		c.Backends = nil
		for _, b := range pods {
			c.Backends = append(c.Backends, b.Key())
		}
		c.Port, c.Service, c.ServicePort, c.Via = tp, p.Service, sp, p.Via
		if c.Via == "" {
			c.Via = "clusterIP"
		}
	}
	return c, nil
}

// globMatch matches namespace/name against a pattern where * matches any run of characters,
// slashes included ("*", "prod/*", "*/debug").
func globMatch(pattern, s string) bool {
	re := "^" + strings.ReplaceAll(regexp.QuoteMeta(pattern), `\*`, ".*") + "$"
	m, err := regexp.MatchString(re, s)
	return err == nil && m
}

func serves(p Pod, port Port) bool {
	for _, q := range p.Ports {
		if q.Port == port.Port && q.Protocol == port.Protocol {
			return true
		}
	}
	return false
}

// probe fills the three answers of every cell, probing each once, in parallel; on a backend that
// probes nothing, the expected and predicted answers alone. A wrong cell is never probed again:
// a second answer that agrees would hide the first, and a flaky cell is a bug to find.
func (r *Runner) probe(sc *Scenario, state *policy.State, cells []Cell, expected map[string]Outcome) []CellResult {
	if mode := r.mode(); mode == PredictOnly {
		out := make([]CellResult, len(cells))
		for i, c := range cells {
			out[i] = unprobed(sc, state, c, expected[c.String()])
		}
		judge(out, mode)
		return out
	}
	return r.probeOnce(sc, state, cells, expected)
}

// judge sets each cell's OK: its answers that the mode compares agree.
func judge(out []CellResult, mode Mode) {
	for i := range out {
		out[i].OK = out[i].matrixCell().Agrees(mode.columns())
	}
}

// markAudited turns each connection that got through into Audit when the backend's datapath
// reported it as AUDIT: the cell then shows what a policy in audit mode would have dropped.
func (r *Runner) markAudited(out []CellResult) {
	aw, ok := r.Backend.(AuditWitness)
	if !ok {
		return
	}
	for i := range out {
		cr := &out[i]
		if cr.Observed != Allow || cr.Loopback {
			continue
		}
		if audited, known := aw.Audited(cr.Cell); audited && known {
			cr.Observed = Audit
		}
	}
}

// unprobed is a cell's result before its probe: what the file expects and what the engine predicts.
func unprobed(sc *Scenario, state *policy.State, c Cell, expected Outcome) CellResult {
	pred, rule := predict(sc, state, c)
	return CellResult{Cell: c, From: c.From, To: c.To, Port: c.Port.String(), Expected: expected,
		Predicted: pred, Rule: rule, Loopback: c.From == c.To}
}

// predict is the engine's answer for a cell, in probe outcomes.
func predict(sc *Scenario, state *policy.State, c Cell) (Outcome, string) {
	if c.External != "" {
		return predictExternal(sc, state, c)
	}
	if c.Service != "" {
		// Translation may pick any backend: each is predicted, and backends that disagree make
		// a mixed outcome. No backend: refused at once.
		if len(c.Backends) == 0 {
			return Refused, "no backend"
		}
		var outs []Outcome
		var rules []string
		for _, b := range c.Backends {
			bc := c
			bc.Service, bc.To = "", b
			o, rule := predict(sc, state, bc)
			outs, rules = append(outs, o), append(rules, rule)
		}
		return combineSet(outs), strings.Join(slices.Compact(rules), "; ")
	}
	from, _ := sc.pod(c.From)
	to, _ := sc.pod(c.To)
	src, dst, ok := addrs(state, from, to)
	if !ok {
		return Timeout, "no address"
	}
	d := state.Decide(src, dst, c.Port.Protocol, c.Port.Port)
	rule := ""
	if d.Rule != nil {
		rule = d.Rule.String()
	}
	// A source's egress HTTP (or Kafka) proxy judges a request even when the destination refuses
	// the flow.
	egressHTTP := d.Egress.Proxy() == policy.ParserHTTP
	switch {
	case d.Outcome == policy.OutcomeDNS:
		return predictDNSProxy(sc, c, d, rule)
	case c.Kafka != "" && (d.Outcome == policy.OutcomeKafka || d.Egress.Proxy() == policy.ParserKafka):
		return predictKafka(c, d, rule)
	case d.Outcome == policy.OutcomeDenied || d.Outcome == policy.OutcomeDefaultDenied:
		if !c.HTTP || !egressHTTP {
			return Timeout, d.Reason()
		}
		fallthrough
	case d.Outcome == policy.OutcomeL7:
		if c.Lookup != "" {
			return predictLookup(sc, c, rule)
		}
		if c.Kafka != "" {
			return Timeout, "a Kafka probe through the HTTP proxy, which cannot read its requests: " + rule
		}
		if !c.HTTP {
			return Allow, rule
		}
		// The proxy's own judgement (policy.Decision.MatchHTTP), on the request the probe sends.
		target, _, err := policy.NormalizeHTTPTarget(c.path())
		if err != nil {
			return Timeout, "the probe's path is not a valid request target: " + err.Error()
		}
		req := c.request(target)
		v := d.MatchHTTP(req)
		if v.Rule != nil {
			rule = v.Rule.String()
		}
		if v.Unreachable != "" {
			// Forwarded, and dropped at the destination: the proxy's 503 comes only after its
			// connect timeout, longer than a probe's.
			return Timeout, v.Unreachable
		}
		if c.GRPC {
			if v.Allowed {
				return GRPCOK, rule
			}
			return GRPCDenied, rule
		}
		if v.Allowed {
			// What the destination receives: the request's headers, as the rules' mismatch
			// actions left them.
			policy.ApplyHeaderActions(req.Header, v.Actions)
			return c.seenOutcome(http.StatusOK, req.Header), rule
		}
		return HTTP403, rule
	}
	if !serves(*to, c.Port) {
		return Refused, rule
	}
	if c.Lookup != "" {
		return predictLookup(sc, c, rule)
	}
	if c.GRPC {
		return GRPCOK, rule
	}
	if c.Kafka != "" {
		ok, _ := c.kafkaOutcomes()
		return ok, rule
	}
	if c.HTTP {
		return c.seenOutcome(http.StatusOK, c.request("").Header), rule
	}
	if d.Outcome == policy.OutcomeAudited {
		return Audit, d.Reason()
	}
	return Allow, rule
}

// predictDNSProxy is a probe of a flow the source's egress hands to the DNS proxy. A lookup asks
// each candidate of the pod's search list in turn (probeagent.PodResolvConf): the proxy REFUSES
// the ones no dns rule allows and forwards the others; the first with addresses answers, else the
// name as written's answer. Another probe of the port is a query too (probeagent.DNSQuery),
// which the proxy answers, forwarded or REFUSED.
func predictDNSProxy(sc *Scenario, c Cell, d policy.Decision, rule string) (Outcome, string) {
	if c.Lookup == "" {
		// A probe of a DNS port is a query: the proxy answers it, forwarded or REFUSED.
		return Allow, rule
	}
	ns, _, _ := strings.Cut(c.From, "/")
	conf := probeagent.PodResolvConf(netip.IPv4Unspecified(), ns)
	for _, cand := range conf.Candidates(c.Lookup) {
		v := d.MatchDNS(cand)
		if !v.Allowed {
			if strings.EqualFold(strings.TrimSuffix(cand, "."), strings.TrimSuffix(c.Lookup, ".")) {
				return DNSRefused, v.Reason
			}
			continue
		}
		if sc.names()[strings.ToLower(cand)] {
			return Allow, rule
		}
	}
	return predictLookup(sc, c, rule)
}

// predictLookup is a lookup's answer once its query reaches the resolver: allow (addresses, or
// NXDOMAIN), or dns-nxdomain for a name the scenario's DNS server does not know when the probe
// asks for the exact answer. A DNS rule on the way (the source's L7 DNS policy) is to answer
// here too: REFUSED for a name it does not allow.
func predictLookup(sc *Scenario, c Cell, rule string) (Outcome, string) {
	ns, _, _ := strings.Cut(c.From, "/")
	if c.ExactRCode && !sc.resolves(ns, c.Lookup) {
		return DNSNXDomain, "the scenario's DNS server does not know " + c.Lookup
	}
	return Allow, rule
}

// request is the HTTP request the cell's probe sends, as the proxy reads it (target: the path
// normalised).
func (c Cell) request(target string) policy.HTTPRequest {
	h := map[string][]string{}
	for k, v := range c.Headers {
		k = textproto.CanonicalMIMEHeaderKey(k)
		h[k] = append(h[k], v)
	}
	return policy.HTTPRequest{Method: c.method(), Path: target, Host: c.VHost, Header: h}
}

// seenOutcome is an HTTP outcome with what the destination saw of c.Seen, given the headers it
// received (probeagent.SeenOutcome: the probes' own comparison).
func (c Cell) seenOutcome(code int, received map[string][]string) Outcome {
	got := map[string]string{}
	for n := range c.Seen {
		got[n] = probeagent.Absent
		if vs, ok := received[textproto.CanonicalMIMEHeaderKey(n)]; ok {
			got[n] = strings.Join(vs, ",")
		}
	}
	return Outcome(probeagent.SeenOutcome(code, c.Seen, got))
}

func addrs(state *policy.State, from, to *Pod) (netip.Addr, netip.Addr, bool) {
	fk := policy.EndpointKey{Namespace: from.Namespace, Name: from.Name}
	tk := policy.EndpointKey{Namespace: to.Namespace, Name: to.Name}
	s, ok1 := state.Addr(fk, false)
	d, ok2 := state.Addr(tk, false)
	return s, d, ok1 && ok2
}

// Soak runs a scenario up to the step named step (its policies enforced), then probes that
// step's matrix round after round while keepGoing(probes so far) says so, and returns every
// cell whose observed outcome differed from the expectation. It is how a test holds the
// datapath to its verdicts while something disrupts the node agents.
func (r *Runner) Soak(sc *Scenario, step string, keepGoing func(probes int) bool) (probes int, wrong []CellResult, err error) {
	if r.mode() == PredictOnly {
		return 0, nil, errors.New("soak: the backend probes nothing, so there is nothing to soak")
	}
	cluster, err := r.Backend.Start(sc)
	if err != nil {
		r.Backend.Stop()
		return 0, nil, err
	}
	defer func() {
		if serr := r.Backend.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	policies := map[policy.Key]*policy.Policy{}
	var st *Step
	for i := range sc.Steps {
		if _, err := r.change(sc, &sc.Steps[i], cluster, policies); err != nil {
			return 0, nil, err
		}
		if sc.Steps[i].Name == step {
			st = &sc.Steps[i]
			break
		}
	}
	if st == nil {
		return 0, nil, fmt.Errorf("scenario %s has no step %q", sc.Name, step)
	}
	list := make([]*policy.Policy, 0, len(policies))
	for _, p := range policies {
		list = append(list, p)
	}
	state, err := policy.Compile(cluster, &policy.Bundle{Policies: list}, sc.engineOptions(r.Options))
	if err != nil {
		return 0, nil, err
	}
	if err := r.Backend.Enforce(cluster, list); err != nil {
		return 0, nil, err
	}
	cells, expected, _, err := expectations(sc, st, cluster)
	if err != nil {
		return 0, nil, err
	}
	for keepGoing(probes) {
		r.Backend.BeginStep()
		for _, c := range r.probeOnce(sc, state, cells, expected) {
			if c.Loopback {
				continue
			}
			probes++
			if c.Observed != c.Expected {
				wrong = append(wrong, c)
			}
		}
	}
	return probes, wrong, nil
}

// probeOnce probes every cell once: in one batch on a backend that batches, else in parallel,
// at most Parallel (32 when zero) at a time.
func (r *Runner) probeOnce(sc *Scenario, state *policy.State, cells []Cell, expected map[string]Outcome) []CellResult {
	out := make([]CellResult, len(cells))
	for i, c := range cells {
		out[i] = unprobed(sc, state, c, expected[c.String()])
	}
	var observed []Outcome
	if bp, ok := r.Backend.(BatchProber); ok {
		observed = bp.ProbeBatch(cells)
	} else {
		parallel := r.Parallel
		if parallel == 0 {
			parallel = 32
		}
		sem := make(chan struct{}, parallel)
		observed = make([]Outcome, len(cells))
		var wg sync.WaitGroup
		for i, c := range cells {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				observed[i] = r.Backend.Probe(c)
			}()
		}
		wg.Wait()
	}
	for i := range out {
		out[i].Observed = observed[i]
	}
	r.markAudited(out)
	judge(out, Probed)
	return out
}

// combineSet is one outcome for a probe that may reach any of several backends: theirs when they
// agree, else mixed(...) of the distinct outcomes, sorted.
func combineSet(outcomes []Outcome) Outcome {
	set := map[Outcome]bool{}
	for _, o := range outcomes {
		set[o] = true
	}
	if len(set) == 1 {
		return outcomes[0]
	}
	var s []string
	for o := range set {
		s = append(s, string(o))
	}
	sort.Strings(s)
	return Outcome("mixed(" + strings.Join(s, ",") + ")")
}
