package main

import (
	"encoding/json"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// TestVersion: netpact version reads the module version and the Git revision, time and
// modified flag the toolchain writes into the binary, and says so when they are missing.
func TestVersion(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/netpact/netpact", Version: "v0.3.0"},
		Settings: []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0a6d4db1c2"},
			{Key: "vcs.time", Value: "2026-07-01T10:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	v := versionOf(bi)
	if v.Version != "v0.3.0" || v.Revision != "0a6d4db1c2" || v.Time != "2026-07-01T10:00:00Z" || v.Modified == nil || !*v.Modified ||
		v.GoVersion != "go1.26.0" || v.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("version of %+v: %+v", bi, v)
	}
	var text strings.Builder
	v.print(&text)
	want := "netpact v0.3.0\nrevision: 0a6d4db1c2 (modified)\ntime:     2026-07-01T10:00:00Z\ngo:       go1.26.0 " + v.Platform + "\n"
	if text.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", text.String(), want)
	}
	raw, _ := json.Marshal(v)
	if want := `{"version":"v0.3.0","revision":"0a6d4db1c2","time":"2026-07-01T10:00:00Z","modified":true,"goVersion":"go1.26.0","platform":"` + v.Platform + `"}`; string(raw) != want {
		t.Errorf("json %s, want %s", raw, want)
	}

	text.Reset()
	versionOf(&debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}}).print(&text)
	if !strings.Contains(text.String(), "revision: unknown (built without VCS information") {
		t.Errorf("without VCS information:\n%s", text.String())
	}

	// This test binary's own: the fields are there whatever the build gave.
	for _, format := range []string{"json", "yaml"} {
		stdout, _, code := run(t, "version", "-o", format)
		if code != 0 || !strings.Contains(stdout, "version") || !strings.Contains(stdout, "goVersion") || !strings.Contains(stdout, runtime.GOOS+"/"+runtime.GOARCH) {
			t.Errorf("version -o %s: exit %d\n%s", format, code, stdout)
		}
	}
}
