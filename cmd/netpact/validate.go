package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/netpact/netpact/policy"
)

type validateResult struct {
	Valid    bool            `json:"valid"`
	Policies []string        `json:"policies"`
	Errors   []*policy.Error `json:"errors"`
	Notices  []policy.Notice `json:"notices"`
}

func newValidateCommand() *cobra.Command {
	var namespace, root string
	var output *outputFormat
	var allowEmpty bool
	cmd := &cobra.Command{
		Use:   "validate PATH...",
		Short: "Check policy files and folders strictly; exit 1 with file:line:column errors when invalid",
		Long: `Check policy files and folders strictly; exit 1 with file:line:column errors when invalid.

A folder holding a kustomization.yaml is built with kustomize, as kubectl apply -k and Flux do.
PATH - reads the policies from standard input (helm template ... | netpact validate -).
A path that holds no policy is an error unless --allow-empty is given.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := policy.Load(args, policy.LoadOptions{DefaultNamespace: namespace, Root: root, Stdin: cmd.InOrStdin()})
			res := validateResult{Valid: err == nil, Policies: []string{}, Errors: []*policy.Error{}, Notices: []policy.Notice{}}
			var list policy.ErrorList
			switch {
			case errors.As(err, &list):
				res.Errors = list
			case err != nil:
				return err
			default:
				res.Notices = append(res.Notices, b.AllNotices(nil)...)
				for _, p := range b.Policies {
					res.Policies = append(res.Policies, p.Key.String())
				}
				if !allowEmpty {
					res.Errors = emptyPaths(b.Empty)
					res.Valid = len(res.Errors) == 0
				}
			}
			return writeValidate(cmd.OutOrStdout(), cmd.ErrOrStderr(), output, res)
		},
	}
	output = addOutputFlag(cmd, "text", "json", "yaml")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "namespace for objects that name none (default \"default\")")
	cmd.Flags().StringVar(&root, "root", "", "folder the paths may read from (a repository, whose overlays read their bases beside them); default: each path itself")
	cmd.Flags().BoolVar(&allowEmpty, "allow-empty", false, "accept a path that holds no policy")
	return cmd
}

// emptyPaths are the errors for paths that hold no policy: a typo in a path, or a folder of
// other objects, would otherwise pass as a valid bundle that enforces nothing. Only validate
// refuses them: plan compares against a base that may have none yet.
func emptyPaths(paths []string) []*policy.Error {
	errs := []*policy.Error{}
	for _, p := range paths {
		errs = append(errs, &policy.Error{File: p, Message: "holds no policy (give --allow-empty to accept that)"})
	}
	return errs
}

// printNotices prints notices and warnings, each on its line, in file and line order.
func printNotices(w io.Writer, ns []policy.Notice) {
	for _, n := range ns {
		fmt.Fprintln(w, n)
	}
}

// warningCount is ", N warnings" for a summary line, empty without warnings: a valid bundle with
// warnings is still valid (exit 0), but behaves otherwise than it reads.
func warningCount(ns []policy.Notice) string {
	switch n := policy.CountWarnings(ns); n {
	case 0:
		return ""
	case 1:
		return ", 1 warning"
	default:
		return fmt.Sprintf(", %d warnings", n)
	}
}

func writeValidate(stdout, stderr io.Writer, output *outputFormat, res validateResult) error {
	if output.structured() {
		if err := output.write(stdout, res); err != nil {
			return err
		}
	} else {
		printNotices(stderr, res.Notices)
		for _, e := range res.Errors {
			fmt.Fprintln(stderr, e)
		}
		if res.Valid {
			fmt.Fprintf(stdout, "%d policies valid%s\n", len(res.Policies), warningCount(res.Notices))
		} else {
			if len(res.Errors) == 1 {
				fmt.Fprintln(stderr, "1 error")
			} else {
				fmt.Fprintf(stderr, "%d errors\n", len(res.Errors))
			}
		}
	}
	if !res.Valid {
		return exitError{1}
	}
	return nil
}
