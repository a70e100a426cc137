package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// versionInfo is what `netpact version` says of the binary, from the build information the Go
// toolchain writes into it.
type versionInfo struct {
	// Version is the module's: a tag (v0.3.0), a pseudo-version, or "(devel)" for a build from a
	// checkout without VCS information.
	Version string `json:"version"`
	// Revision, Time and Modified are the Git commit built, its time, and whether the work tree
	// had changes; absent when built without VCS information (-buildvcs=false, or not in a
	// checkout).
	Revision  string `json:"revision,omitempty"`
	Time      string `json:"time,omitempty"`
	Modified  *bool  `json:"modified,omitempty"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// versionOf reads a binary's build information.
func versionOf(bi *debug.BuildInfo) versionInfo {
	v := versionInfo{Version: "(unknown)", GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi == nil {
		return v
	}
	v.GoVersion = bi.GoVersion
	if bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			modified := s.Value == "true"
			v.Modified = &modified
		}
	}
	return v
}

func (v versionInfo) print(w io.Writer) {
	fmt.Fprintf(w, "netpact %s\n", v.Version)
	if v.Revision == "" {
		fmt.Fprintln(w, "revision: unknown (built without VCS information: -buildvcs=false, or not in a Git checkout)")
	} else {
		modified := ""
		if v.Modified != nil && *v.Modified {
			modified = " (modified)"
		}
		fmt.Fprintf(w, "revision: %s%s\n", v.Revision, modified)
		if v.Time != "" {
			fmt.Fprintf(w, "time:     %s\n", v.Time)
		}
	}
	fmt.Fprintf(w, "go:       %s %s\n", v.GoVersion, v.Platform)
}

func newVersionCommand() *cobra.Command {
	var output *outputFormat
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print netpact's version and the Git revision it was built from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bi, _ := debug.ReadBuildInfo()
			v := versionOf(bi)
			if output.structured() {
				return output.write(cmd.OutOrStdout(), v)
			}
			v.print(cmd.OutOrStdout())
			return nil
		},
	}
	output = addOutputFlag(cmd, "text", "json", "yaml")
	return cmd
}
