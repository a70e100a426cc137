package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/policy/matrix"
	"github.com/netpact/netpact/reconciler"
)

// Exit codes of netpact plan.
const (
	planNoChange = 0
	planChanges  = 2
	// planNewAllow is --fail-on-new-allow's: a cell is newly allowed.
	planNewAllow = 3
)

// policySet is one side of a plan: a folder's policies, or a revision's.
type policySet struct {
	label string
	// dir is a checkout to remove; prefix is what to strip from its file names.
	dir, prefix string
	paths       []string
}

// planOptions are netpact plan's flags.
type planOptions struct {
	clusterPath, pngPath, namespace, mode, base, head, repo string
	ports, pods                                             []string
	ipv6, enforceHost, verbose, failOnNewAllow              bool
	kube                                                    *clusterFlags
	output                                                  *outputFormat
}

func newPlanCommand() *cobra.Command {
	var o planOptions
	cmd := &cobra.Command{
		Use: "plan (--cluster FILE | --kubeconfig FILE | --context NAME) (--base REV --head REV [PATH...] | BASE_DIR HEAD_DIR)",
		Short: "Print the cells of the connectivity matrix a policy change opens and closes; " +
			"exit 0 no change, 1 error, 2 changes, 3 newly allowed with --fail-on-new-allow",
		RunE: func(cmd *cobra.Command, args []string) error {
			// Exit 2 means changes here: every error is reported now and exits 1.
			err := o.run(cmd, args)
			var ee exitError
			if err != nil && !errors.As(err, &ee) {
				fmt.Fprintln(cmd.ErrOrStderr(), "netpact plan:", err)
				return exitError{1}
			}
			return err
		},
	}
	cmd.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		fmt.Fprintf(cmd.ErrOrStderr(), "netpact plan: %v\n", err)
		return exitError{1}
	})
	f := cmd.Flags()
	f.StringVar(&o.clusterPath, "cluster", "", "cluster description file (see docs/cluster-file.md)")
	o.kube = addClusterFlags(f)
	o.kube.setKubeconfigUsage(liveClusterUsage)
	f.StringVar(&o.base, "base", "", "revision of the Git repository the change starts from (branch, tag, hash, HEAD~1)")
	f.StringVar(&o.head, "head", "", "revision of the Git repository with the change")
	f.StringVar(&o.repo, "repo", ".", "a path in the Git repository of --base and --head")
	o.output = addOutputFlag(cmd, "text", "json", "yaml", "markdown", "md", "html")
	f.StringVar(&o.pngPath, "png", "", "also draw the head's matrix, changed cells outlined, into this PNG file")
	f.BoolVar(&o.failOnNewAllow, "fail-on-new-allow", false, "exit 3 when a cell is newly allowed, so that CI can demand approval")
	f.StringVarP(&o.namespace, "namespace", "n", "", "namespace for policies that name none (default \"default\")")
	f.StringVar(&o.mode, "mode", "default", "policy enforcement mode: default, always or never")
	f.StringSliceVar(&o.ports, "port", nil, "probe these ports on every destination instead of its declared ports (80, 53/UDP, ...)")
	f.StringSliceVar(&o.pods, "pod", nil, podFlagUsage)
	f.BoolVar(&o.ipv6, "ipv6", false, "probe IPv6 addresses instead of IPv4")
	f.BoolVar(&o.enforceHost, "enforce-host", false, "do not implicitly allow the local host to reach its pods")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "text output: print both matrices too")
	return cmd
}

func (o *planOptions) run(cmd *cobra.Command, args []string) error {
	stderr := cmd.ErrOrStderr()
	sides, err := planSides(o.base, o.head, o.repo, args)
	for _, s := range sides {
		if s.dir != "" {
			defer os.RemoveAll(s.dir)
		}
	}
	if err != nil {
		return err
	}
	cf, err := loadCluster(cmd, o.clusterPath, o.kube)
	if err != nil {
		return err
	}
	mode, err := policy.ParseMode(o.mode)
	if err != nil {
		return err
	}
	override, err := parsePorts(o.ports)
	if err != nil {
		return err
	}
	filter, err := parsePodFilter(o.pods)
	if err != nil {
		return err
	}
	hosts, groups := hostsOf(cf, true)
	var predicted [2]*matrix.Matrix[policy.Outcome]
	for i, s := range sides {
		// The head's warnings are the ones the change merges; the base's are already there.
		state, err := s.compile(stderr, i == 1, cf, policy.LoadOptions{DefaultNamespace: o.namespace}, policy.Options{Mode: mode, EnforceHost: o.enforceHost})
		if err != nil {
			return err
		}
		predicted[i] = predictedMatrix(state, hosts, filter, override, o.ipv6)
	}
	plan := matrix.NewPlan(sides[0].label, sides[1].label, groups, predicted[0], predicted[1])
	if err := writePlan(cmd.OutOrStdout(), plan, o.output, o.verbose); err != nil {
		return err
	}
	if o.pngPath != "" {
		if err := writePlanPNG(plan, o.pngPath); err != nil {
			return err
		}
	}
	switch {
	case o.failOnNewAllow && plan.Count(matrix.NewlyAllowed) > 0:
		return exitError{planNewAllow}
	case len(plan.Changes) > 0:
		return exitError{planChanges}
	}
	return nil
}

// planSides is the base and the head: two revisions of a Git repository, checked out into
// temporary folders (the caller removes them, also on error), or two folders.
func planSides(base, head, repo string, args []string) ([]policySet, error) {
	if base == "" && head == "" {
		if len(args) != 2 {
			return nil, fmt.Errorf("give --base REV --head REV (and the policy paths in the repository), or two folders: BASE_DIR HEAD_DIR")
		}
		return []policySet{{label: args[0], paths: args[:1]}, {label: args[1], paths: args[1:]}}, nil
	}
	if base == "" || head == "" {
		return nil, fmt.Errorf("--base and --head go together")
	}
	if len(args) == 0 {
		args = []string{"."}
	}
	var sides []policySet
	for _, rev := range []string{base, head} {
		dir, err := os.MkdirTemp("", "netpact-plan-")
		if err != nil {
			return sides, fmt.Errorf("make a checkout folder: %w", err)
		}
		sides = append(sides, policySet{dir: dir, prefix: dir + string(filepath.Separator)})
		top, commit, err := reconciler.CheckOutLocal(repo, rev, dir)
		if err != nil {
			return sides, err
		}
		s := &sides[len(sides)-1]
		s.label = fmt.Sprintf("%s (%s)", rev, commit.Hash.String()[:12])
		for _, a := range args {
			rel, err := repoPath(top, a)
			if err != nil {
				return sides, err
			}
			s.paths = append(s.paths, filepath.Join(dir, rel))
		}
	}
	return sides, nil
}

// repoPath is a path given on the command line (relative to the working folder) as a path in
// the repository whose top folder is top.
func repoPath(top, p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("policy path %s: %w", p, err)
	}
	if real, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		abs = filepath.Join(real, filepath.Base(abs))
	}
	if t, err := filepath.EvalSymlinks(top); err == nil {
		top = t
	}
	rel, err := filepath.Rel(top, abs)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("policy path %s is not in the repository at %s", p, top)
	}
	return rel, nil
}

// compile loads and compiles one side over the cluster. A path the revision does not have
// counts as no policies (a change that adds a folder); its errors, warnings (printed with warn)
// and rules name files as the repository does, not as the checkout does.
func (s policySet) compile(stderr io.Writer, warn bool, cf *policy.ClusterFile, lo policy.LoadOptions, o policy.Options) (*policy.State, error) {
	var paths []string
	for _, p := range s.paths {
		if _, err := os.Lstat(p); s.dir != "" && errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(stderr, "%s: %s does not exist there: no policies\n", s.label, strings.TrimPrefix(p, s.prefix))
			continue
		}
		paths = append(paths, p)
	}
	if s.dir != "" {
		lo.Root = s.dir // the checkout, as the reconciler's: an overlay reads its base beside it
	}
	b := &policy.Bundle{}
	if len(paths) > 0 {
		var err error
		b, err = policy.Load(paths, lo)
		var list policy.ErrorList
		if errors.As(err, &list) {
			for _, e := range list {
				e.File = strings.TrimPrefix(e.File, s.prefix)
			}
			fmt.Fprintf(stderr, "%s: %d errors\n", s.label, len(list))
			fmt.Fprintln(stderr, list)
			return nil, exitError{1}
		}
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", s.label, err)
		}
	}
	if s.prefix != "" {
		for _, p := range b.Policies {
			p.Source.File = strings.TrimPrefix(p.Source.File, s.prefix)
		}
		for i := range b.Notices {
			b.Notices[i].File = strings.TrimPrefix(b.Notices[i].File, s.prefix)
		}
	}
	state, err := policy.Compile(&cf.Cluster, b, o)
	if err != nil {
		return nil, fmt.Errorf("compile %s: %w", s.label, err)
	}
	for _, n := range b.AllNotices(state) {
		if warn && n.Warning {
			fmt.Fprintf(stderr, "%s: %s\n", s.label, n)
		}
	}
	return state, nil
}

func writePlan(w io.Writer, p *matrix.Plan, output *outputFormat, verbose bool) error {
	switch {
	case output.structured():
		return output.write(w, p)
	case output.value == "markdown" || output.value == "md":
		p.Markdown(w)
	case output.value == "html":
		return p.HTML(w)
	default:
		p.Text(w, verbose)
	}
	return nil
}

func writePlanPNG(p *matrix.Plan, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write picture: %w", err)
	}
	if err := p.PNG(f); err != nil {
		f.Close()
		return fmt.Errorf("write picture %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write picture %s: %w", path, err)
	}
	return nil
}
