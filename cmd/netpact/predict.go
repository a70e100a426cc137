package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
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
	var clusterPath, kubeconfig, output, namespace, mode string
	var ports []string
	var ipv6, enforceHost, verbose bool
	cmd := &cobra.Command{
		Use:   "predict (--cluster CLUSTER.yaml | --kubeconfig FILE) PATH...",
		Short: "Print the connectivity matrix the policies give a described or a live cluster",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cf, err := loadCluster(cmd, clusterPath, kubeconfig)
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
			predicted := predictedMatrix(state, cf, override, ipv6)
			switch output {
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(probeResults(predicted))
			case "text", "":
				printPredicted(cmd.OutOrStdout(), predicted, verbose)
				return nil
			}
			return fmt.Errorf("unknown output format %q: use text or json", output)
		},
	}
	cmd.Flags().StringVar(&clusterPath, "cluster", "", "cluster description file (see docs/cluster-file.md)")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "read the pods, namespaces and nodes of the cluster this kubeconfig reaches instead of a cluster file")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "namespace for policies that name none (default \"default\")")
	cmd.Flags().StringVar(&mode, "mode", "default", "policy enforcement mode: default, always or never")
	cmd.Flags().StringSliceVar(&ports, "port", nil, "probe these ports on every destination instead of its declared ports (80, 53/UDP, ...)")
	cmd.Flags().BoolVar(&ipv6, "ipv6", false, "probe IPv6 addresses instead of IPv4")
	cmd.Flags().BoolVar(&enforceHost, "enforce-host", false, "do not implicitly allow the local host to reach its pods")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "list every probe with the rule that decided it")
	return cmd
}

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

// predictedMatrix is the engine's verdict for every pair of hosts on each destination's ports
// (or the override's): pods by name, then external addresses as the file lists them.
func predictedMatrix(state *policy.State, cf *policy.ClusterFile, override []policy.NamedPort, ipv6 bool) *matrix.Matrix[policy.Outcome] {
	var hosts []host
	for _, ep := range cf.Endpoints {
		hosts = append(hosts, host{name: ep.Namespace + "/" + ep.Name, ips: ep.IPs, ports: ep.Ports})
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].name < hosts[j].name })
	for _, ex := range cf.External {
		hosts = append(hosts, host{name: ex.Name, ips: []netip.Addr{ex.IP}, ports: ex.Ports, names: ex.Names})
	}
	m := matrix.New[policy.Outcome]()
	for _, src := range hosts {
		for _, dst := range hosts {
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
				c := matrix.Cell[policy.Outcome]{Key: matrix.Key{From: src.name, To: dst.name, Port: matrix.Port{Number: p.Port, Protocol: p.Protocol}},
					Predicted: d.Outcome, Reason: d.Reason(), Proxy: d.Proxy, Kafka: d.KafkaTopics()}
				if d.Rule != nil {
					c.Rule = d.Rule.String()
				}
				m.Set(c)
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
