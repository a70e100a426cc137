package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// outputFormat is a command's -o/--output, as kubectl's: text (the command's own screen) by
// default, json and yaml for the same data as a structure, and whatever else a command draws. A
// format the command does not have is refused when the flag is parsed, before any work is done.
type outputFormat struct {
	value   string
	formats []string
}

// addOutputFlag registers -o on cmd: its first format is the default; the shells complete the others.
func addOutputFlag(cmd *cobra.Command, formats ...string) *outputFormat {
	o := &outputFormat{value: formats[0], formats: formats}
	cmd.Flags().VarP(o, "output", "o", "output format: "+o.list())
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp))
	return o
}

func (o *outputFormat) list() string {
	return strings.Join(o.formats[:len(o.formats)-1], ", ") + " or " + o.formats[len(o.formats)-1]
}

func (o *outputFormat) String() string { return o.value }
func (o *outputFormat) Type() string   { return "format" }

func (o *outputFormat) Set(s string) error {
	if !slices.Contains(o.formats, s) {
		return fmt.Errorf("unknown output format %q: use %s", s, o.list())
	}
	o.value = s
	return nil
}

// structured reports whether the output is json or yaml.
func (o *outputFormat) structured() bool { return o.value == "json" || o.value == "yaml" }

// write writes v as JSON (indented) or as YAML with the same field names (sigs.k8s.io/yaml, as
// kubectl -o yaml).
func (o *outputFormat) write(w io.Writer, v any) error {
	switch o.value {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		out, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("yaml output: %w", err)
		}
		_, err = w.Write(out)
		return err
	}
	return fmt.Errorf("output format %q is not json or yaml", o.value)
}
