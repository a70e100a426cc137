package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// softMemoryLimit sets Go's soft memory limit to 90% of the container's (cgroup v2 memory.max),
// unless GOMEMLIMIT says otherwise: the collector works harder before the kernel kills the node's
// enforcer.
func softMemoryLimit(memoryMax string) (int64, bool) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, false
	}
	raw, err := os.ReadFile(memoryMax)
	if err != nil {
		return 0, false
	}
	max, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil || max <= 0 { // "max": no limit
		return 0, false
	}
	limit := max / 10 * 9
	debug.SetMemoryLimit(limit)
	return limit, true
}

// clusterFlags name the cluster a command talks to the way kubectl's flags do: the file of
// --kubeconfig, else those of KUBECONFIG, else ~/.kube/config, else the pod's in-cluster
// configuration; --context, --user, --server, --token, --as and the rest on top. They are
// client-go's own flags and loading rules, which kubectl's (k8s.io/cli-runtime's ConfigFlags)
// wrap: cli-runtime's package brings kustomize along, 41 MB more binary for the same flags.
// Two of kubectl's are left out: --cluster, a cluster file in predict and plan, and -n/--namespace,
// which each command that has it defines; and basic auth, which kubectl hides.
type clusterFlags struct {
	kubeconfig string
	overrides  clientcmd.ConfigOverrides
	flags      *pflag.FlagSet
	names      []string
}

// addClusterFlags registers the cluster flags on fs.
func addClusterFlags(fs *pflag.FlagSet) *clusterFlags {
	c := &clusterFlags{overrides: clientcmd.ConfigOverrides{ClusterDefaults: clientcmd.ClusterDefaults}, flags: fs}
	own := pflag.NewFlagSet("cluster", pflag.ContinueOnError)
	own.StringVar(&c.kubeconfig, clientcmd.RecommendedConfigPathFlag, "", "Path to the kubeconfig file to use for CLI requests.")
	names := clientcmd.RecommendedConfigOverrideFlags("")
	names.ContextOverrideFlags.ClusterName.LongName = ""
	names.ContextOverrideFlags.Namespace.LongName = ""
	names.AuthOverrideFlags.Username.LongName = ""
	names.AuthOverrideFlags.Password.LongName = ""
	names.ClusterOverrideFlags.APIServer.ShortName = "s"
	clientcmd.BindOverrideFlags(&c.overrides, own, names)
	own.VisitAll(func(f *pflag.Flag) {
		c.names = append(c.names, f.Name)
		fs.AddFlag(f)
	})
	return c
}

// addDaemonClusterFlags registers the cluster flags of a command that runs in a pod: no flag is
// needed there, KUBECONFIG and ~/.kube/config being absent.
func addDaemonClusterFlags(fs *pflag.FlagSet) *clusterFlags {
	c := addClusterFlags(fs)
	c.setKubeconfigUsage("kubeconfig file (else KUBECONFIG, else ~/.kube/config, else the pod's in-cluster configuration)")
	return c
}

// setKubeconfigUsage says what naming a cluster does for a command whose default is something
// else: a cluster file, a local node.
func (c *clusterFlags) setKubeconfigUsage(usage string) {
	c.flags.Lookup("kubeconfig").Usage = usage
}

// named reports whether the command line names a cluster: --kubeconfig or --context. Commands
// with a local default (predict, plan, observe, status) read a cluster only then; another cluster
// flag without them is an error, since it would be ignored.
func (c *clusterFlags) named(without string) (bool, error) {
	if c.flags.Changed("kubeconfig") || c.flags.Changed("context") {
		return true, nil
	}
	for _, n := range c.names {
		if c.flags.Changed(n) {
			return false, fmt.Errorf("--%s names no cluster by itself: give --kubeconfig FILE or --context NAME too (without them %s)", n, without)
		}
	}
	return false, nil
}

// restConfig is the configuration of the cluster the flags name.
func (c *clusterFlags) restConfig() (*rest.Config, error) {
	rules := c.rules()
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &c.overrides).ClientConfig()
	switch {
	case clientcmd.IsEmptyConfig(err) || (err == nil && rules.IsDefaultConfig(cfg) && os.Getenv("KUBERNETES_MASTER") == ""):
		// kubectl would try http://localhost:8080 and say the connection was refused.
		return nil, errors.New("no cluster: no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config), and not in a pod")
	case err != nil:
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return cfg, nil
}

// rules find the configuration as kubectl does.
func (c *clusterFlags) rules() *clientcmd.ClientConfigLoadingRules {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.kubeconfig
	// What kubectl sets: a configuration equal to this default is taken for none, and the pod's
	// in-cluster configuration is used instead.
	rules.DefaultClientConfig = &clientcmd.DefaultClientConfig
	return rules
}

// name is the cluster's name in messages: its context's, as kubectl names clusters, or the
// kubeconfig file's.
func (c *clusterFlags) name() string {
	if c.overrides.CurrentContext != "" {
		return c.overrides.CurrentContext
	}
	if raw, err := c.rules().Load(); err == nil && raw.CurrentContext != "" {
		return raw.CurrentContext
	}
	if c.kubeconfig != "" {
		return "of " + c.kubeconfig
	}
	return "in-cluster"
}
