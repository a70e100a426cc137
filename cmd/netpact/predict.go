package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/policy/matrix"
)

// probeResult is one cell of the predicted matrix in predict's JSON.
type probeResult struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	Verdict  string `json:"verdict"`
	// Proxy is the L7 proxy the flow goes to (http, dns, kafka); absent when no L7 rule decided.
	Proxy  string  `json:"proxy,omitempty"`
	Rule   *string `json:"rule"`
	Reason string  `json:"reason"`
	// Kafka is, for a cell the Kafka proxy judges, what the rules let a client do per topic:
	// produce and consume on each topic a kafka rule names, and on "*" (any other).
	Kafka []policy.KafkaTopicVerdict `json:"kafka,omitempty"`
}

// host is a probe source or destination: a pod or an external address.
type host struct {
	name  string
	ips   []netip.Addr
	ports []policy.NamedPort
	// names are an external host's DNS names.
	names []string
	// pods are, for pods, the pods the host stands for (one, or a group's), as namespace/name.
	pods []string
}

func (h host) addr(v6 bool) (netip.Addr, bool) {
	for _, ip := range h.ips {
		if ip.Is6() == v6 {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func newPredictCommand() *cobra.Command {
	var clusterPath, namespace, mode string
	var output *outputFormat
	var kube *clusterFlags
	var ports, pods []string
	var ipv6, enforceHost, verbose bool
	cmd := &cobra.Command{
		Use:   "predict (--cluster CLUSTER.yaml | --kubeconfig FILE | --context NAME) PATH...",
		Short: "Print the connectivity matrix the policies give a described or a live cluster",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cf, err := loadCluster(cmd, clusterPath, kube)
			if err != nil {
				return err
			}
			b, err := policy.Load(args, policy.LoadOptions{DefaultNamespace: namespace})
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return exitError{1}
			}
			m, err := policy.ParseMode(mode)
			if err != nil {
				return err
			}
			state, err := policy.Compile(&cf.Cluster, b, policy.Options{Mode: m, EnforceHost: enforceHost})
			if err != nil {
				return err
			}
			printNotices(cmd.ErrOrStderr(), b.AllNotices(state))
			override, err := parsePorts(ports)
			if err != nil {
				return err
			}
			filter, err := parsePodFilter(pods)
			if err != nil {
				return err
			}
			hosts, _ := hostsOf(cf, false)
			predicted := predictedMatrix(state, hosts, filter, override, ipv6)
			if output.structured() {
				return output.write(cmd.OutOrStdout(), probeResults(predicted))
			}
			printPredicted(cmd.OutOrStdout(), predicted, verbose)
			return nil
		},
	}
	cmd.Flags().StringVar(&clusterPath, "cluster", "", "cluster description file (see docs/cluster-file.md)")
	kube = addClusterFlags(cmd.Flags())
	kube.setKubeconfigUsage(liveClusterUsage)
	output = addOutputFlag(cmd, "text", "json", "yaml")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "namespace for policies that name none (default \"default\")")
	cmd.Flags().StringVar(&mode, "mode", "default", "policy enforcement mode: default, always or never")
	cmd.Flags().StringSliceVar(&ports, "port", nil, "probe these ports on every destination instead of its declared ports (80, 53/UDP, ...)")
	cmd.Flags().StringSliceVar(&pods, "pod", nil, podFlagUsage)
	cmd.Flags().BoolVar(&ipv6, "ipv6", false, "probe IPv6 addresses instead of IPv4")
	cmd.Flags().BoolVar(&enforceHost, "enforce-host", false, "do not implicitly allow the local host to reach its pods")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "list every probe with the rule that decided it")
	return cmd
}

// liveClusterUsage is predict's and plan's --kubeconfig.
const liveClusterUsage = "read the pods, namespaces and nodes of the cluster this kubeconfig (or --context, in KUBECONFIG or ~/.kube/config) reaches instead of a cluster file"

const podFlagUsage = "only the cells from or to these pods: namespace/name or a name, shell globs allowed (production/*)"

// readClusterFile loads a cluster description; its errors go to stderr, and so do its notices,
// marked as validate marks a policy file's.
func readClusterFile(stderr io.Writer, what, path string) (*policy.ClusterFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	cf, err := policy.LoadClusterFile(path, data)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, exitError{1}
	}
	printNotices(stderr, cf.Notices)
	return cf, nil
}

func parsePorts(specs []string) ([]policy.NamedPort, error) {
	var out []policy.NamedPort
	for _, s := range specs {
		num, proto, _ := strings.Cut(s, "/")
		n, err := strconv.ParseUint(num, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("invalid --port %q: want PORT or PORT/PROTOCOL", s)
		}
		p, err := policy.ParseProto(proto)
		if err != nil {
			return nil, fmt.Errorf("invalid --port %q: %w", s, err)
		}
		out = append(out, policy.NamedPort{Port: uint16(n), Protocol: p})
	}
	return out, nil
}

// hostsOf is the cluster file's probe hosts: pods by name, then external addresses as the file
// lists them. With group, pods of a namespace that the engine cannot tell apart (the same
// labels, service account and ports) are one host, named for them all, and the groups say which
// pods each pod host stands for.
func hostsOf(cf *policy.ClusterFile, group bool) ([]host, []matrix.Group) {
	var order []string
	byKey := map[string][]policy.Endpoint{}
	for _, ep := range cf.Endpoints {
		k := ep.Namespace + "/" + ep.Name
		if group {
			k = podClass(ep)
		}
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], ep)
	}
	var hosts []host
	var groups []matrix.Group
	taken := map[string]bool{}
	for _, ep := range cf.Endpoints {
		taken[ep.Namespace+"/"+ep.Name] = true
	}
	for _, k := range order {
		eps := byKey[k]
		sort.Slice(eps, func(i, j int) bool { return eps[i].Name < eps[j].Name })
		g := matrix.Group{Name: eps[0].Namespace + "/" + eps[0].Name}
		if len(eps) > 1 {
			g.Name = groupName(eps, taken)
		}
		for _, ep := range eps {
			g.Pods = append(g.Pods, ep.Namespace+"/"+ep.Name)
		}
		groups = append(groups, g)
		hosts = append(hosts, host{name: g.Name, ips: eps[0].IPs, ports: eps[0].Ports, pods: g.Pods})
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].name < hosts[j].name })
	sort.Slice(groups, func(i, j int) bool { return groups[i].Name < groups[j].Name })
	for _, ex := range cf.External {
		hosts = append(hosts, host{name: ex.Name, ips: []netip.Addr{ex.IP}, ports: ex.Ports, names: ex.Names})
	}
	return hosts, groups
}

// podClass is what the engine decides a pod's traffic by, besides its addresses (which policy
// never matches for a pod): namespace, labels, service account and ports. Its node decides only
// what the node's host may reach, and hosts are not in the matrix.
func podClass(ep policy.Endpoint) string {
	b, _ := json.Marshal(struct {
		NS, SA string
		Labels map[string]string
		Ports  []policy.NamedPort
	}{ep.Namespace, ep.ServiceAccount, ep.Labels, ep.Ports})
	return string(b)
}

// generated are the suffixes Kubernetes adds to a workload's pod names: a ReplicaSet's or
// DaemonSet's random five characters (and a Deployment's pod-template-hash before them), or a
// StatefulSet's ordinal.
var generated = []*regexp.Regexp{
	regexp.MustCompile(`^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$`),
	regexp.MustCompile(`^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}$`),
	regexp.MustCompile(`^(.+)-[0-9]+$`),
}

// workload is the name of the workload a pod's name says it belongs to: the name without the
// suffixes Kubernetes generates.
func workload(pod string) string {
	for _, rx := range generated {
		if m := rx.FindStringSubmatch(pod); m != nil {
			pod = m[1]
		}
	}
	return pod
}

// groupName names pods the engine cannot tell apart: their namespace, their workload's name (or
// the name segments they share) and how many they are.
func groupName(eps []policy.Endpoint, taken map[string]bool) string {
	prefix := workload(eps[0].Name)
	for _, ep := range eps[1:] {
		if workload(ep.Name) != prefix {
			prefix = ""
			break
		}
	}
	if prefix == "" {
		prefix = eps[0].Name
		for _, ep := range eps[1:] {
			for !strings.HasPrefix(ep.Name, prefix) {
				prefix = prefix[:len(prefix)-1]
			}
		}
		// Whole segments only: web-1a and web-1b are "web", not "web-1".
		if i := strings.LastIndexAny(prefix, "-."); i > 0 {
			prefix = prefix[:i]
		}
	}
	if prefix == "" {
		prefix = eps[0].Name
	}
	base := fmt.Sprintf("%s/%s (%d pods)", eps[0].Namespace, prefix, len(eps))
	name := base
	for i := 2; taken[name]; i++ {
		name = fmt.Sprintf("%s #%d", base, i)
	}
	taken[name] = true
	return name
}

// podFilter is --pod: patterns of namespace/name (or a name in any namespace), with shell
// globs (production/*, */frontend-*).
type podFilter []string

func parsePodFilter(patterns []string) (podFilter, error) {
	for _, p := range patterns {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("invalid --pod %q: %w", p, err)
		}
	}
	return podFilter(patterns), nil
}

// matches reports whether a pod of h matches a pattern.
func (f podFilter) matches(h host) bool {
	for _, pod := range h.pods {
		_, name, _ := strings.Cut(pod, "/")
		for _, p := range f {
			target := pod
			if !strings.Contains(p, "/") {
				target = name
			}
			if ok, _ := path.Match(p, target); ok {
				return true
			}
		}
	}
	return false
}

// keeps reports whether the matrix holds the cells from src to dst: all of them without a
// filter, else those from or to a pod it matches.
func (f podFilter) keeps(src, dst host) bool {
	return len(f) == 0 || f.matches(src) || f.matches(dst)
}

// predictedMatrix is the engine's verdict for every pair of hosts the filter keeps, on each
// destination's ports (or the override's).
func predictedMatrix(state *policy.State, hosts []host, filter podFilter, override []policy.NamedPort, ipv6 bool) *matrix.Matrix[policy.Outcome] {
	m := matrix.New[policy.Outcome]()
	for _, src := range hosts {
		for _, dst := range hosts {
			if !filter.keeps(src, dst) {
				continue
			}
			ports := dst.ports
			if override != nil {
				ports = override
			}
			for _, p := range ports {
				sa, ok1 := src.addr(ipv6)
				da, ok2 := dst.addr(ipv6)
				if !ok1 || !ok2 {
					continue
				}
				d := state.DecideResolved(sa, da, dst.names, p.Protocol, p.Port)
				m.Set(matrix.Decided(matrix.Key{From: src.name, To: dst.name, Port: matrix.Port{Number: p.Port, Protocol: p.Protocol}}, d))
			}
		}
	}
	return m
}

// probeResults is predict's JSON: a probeResult per cell, as docs/cluster-file.md documents it.
func probeResults(m *matrix.Matrix[policy.Outcome]) []probeResult {
	results := []probeResult{}
	for _, c := range m.Cells() {
		r := probeResult{From: c.From, To: c.To, Port: c.Number, Protocol: c.Protocol.String(),
			Verdict: string(c.Predicted), Proxy: string(c.Proxy), Reason: c.Reason, Kafka: c.Kafka}
		if c.Rule != "" {
			rule := c.Rule
			r.Rule = &rule
		}
		results = append(results, r)
	}
	return results
}

// printPredicted prints the predicted matrix, a table per port and protocol, then its legend;
// verbose adds a line per probe with the engine's reason.
func printPredicted(w io.Writer, m *matrix.Matrix[policy.Outcome], verbose bool) {
	m.Table(w, "", matrix.Predicted)
	line := ""
	for _, l := range append(policy.Legend(), `"-" not probed`) {
		if line != "" && len(line)+3+len(l) > 100 {
			fmt.Fprintln(w, line)
			line = ""
		}
		if line != "" {
			line += "   "
		}
		line += l
	}
	fmt.Fprintln(w, line)
	if verbose {
		fmt.Fprintln(w)
		for _, c := range m.Cells() {
			fmt.Fprintf(w, "%s -> %s %s: %s\n", c.From, c.To, c.Port, c.Reason)
			for _, k := range c.Kafka {
				verdict := "denied (TOPIC_AUTHORIZATION_FAILED)"
				if k.Allowed {
					verdict = "allowed"
				}
				topic := k.Topic
				if topic == "*" {
					topic = "any other topic"
				}
				fmt.Fprintf(w, "    kafka %s %s: %s", k.Role, topic, verdict)
				if k.Rule != "" {
					fmt.Fprintf(w, " by %s", k.Rule)
				}
				fmt.Fprintln(w)
			}
		}
	}
}
