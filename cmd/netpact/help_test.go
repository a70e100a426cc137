package main

import (
	"regexp"
	"strings"
	"testing"
)

// TestHelpGroups: netpact --help lists the commands people and CI run apart from the daemons and
// helpers, every command in one of the two groups, the scenario pods' probe commands not at all
// (they still run by name).
func TestHelpGroups(t *testing.T) {
	stdout, _, code := run(t, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	_, groups, ok1 := strings.Cut(stdout, "Commands for people and CI:\n")
	clients, daemons, ok2 := strings.Cut(groups, "Daemons, node setup and test clusters:\n")
	if !ok1 || !ok2 {
		t.Fatalf("no groups:\n%s", stdout)
	}
	listed := func(section string) []string {
		var names []string
		for _, m := range regexp.MustCompile(`(?m)^  ([a-z-]+) `).FindAllStringSubmatch(section, -1) {
			names = append(names, m[1])
		}
		return names
	}
	daemons, _, _ = strings.Cut(daemons, "\n\n")
	if got, want := strings.Join(listed(clients), " "), "completion help observe plan predict reconcile status test validate version"; got != want {
		t.Errorf("client commands %q, want %q", got, want)
	}
	if got, want := strings.Join(listed(daemons), " "), "admission enforcer kind node-setup reconciler"; got != want {
		t.Errorf("daemon commands %q, want %q", got, want)
	}
	if strings.Contains(stdout, "Additional Commands") || strings.Contains(stdout, "probe") {
		t.Errorf("a command outside the groups, or a probe command listed:\n%s", stdout)
	}
	for _, name := range []string{"probe", "probe-server", "probe-flood", "probe-kafka-broker", "git-server", "external-server"} {
		if _, _, code := run(t, name, "--help"); code != 0 {
			t.Errorf("%s --help: exit %d", name, code)
		}
	}
}

// TestCompletion: netpact completion writes each shell's script, and the shells complete -o with
// the formats a command has.
func TestCompletion(t *testing.T) {
	for shell, want := range map[string]string{
		"bash":       "__start_netpact",
		"zsh":        "#compdef netpact",
		"fish":       "complete -c netpact",
		"powershell": "Register-ArgumentCompleter",
	} {
		stdout, _, code := run(t, "completion", shell)
		if code != 0 || !strings.Contains(stdout, want) {
			t.Errorf("completion %s: exit %d, no %q in %d bytes", shell, code, want, len(stdout))
		}
	}
	stdout, _, _ := run(t, "__complete", "status", "-o", "")
	if !strings.HasPrefix(stdout, "text\njson\nyaml\n") {
		t.Errorf("completion of status -o:\n%s", stdout)
	}
	if _, _, err := runErr("validate", "-o", "xml", "x.yaml"); err == nil || !strings.Contains(err.Error(), `unknown output format "xml": use text, json or yaml`) {
		t.Errorf("validate -o xml: %v", err)
	}
}
