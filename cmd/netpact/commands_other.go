//go:build !linux

package main

import "github.com/spf13/cobra"

// addNodeCommands adds nothing: the commands that run or make a node need Linux, and the
// binary for other systems is the client (commands_linux.go lists them).
func addNodeCommands(root, reconciler *cobra.Command) {}

// runCNIPlugin never runs: a CNI plugin runs on a Linux node.
func runCNIPlugin() bool { return false }
