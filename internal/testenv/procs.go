package testenv

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// NoneLeft fails the test when a live process of the group pgid (what names the program) is
// still there a few seconds on.
func NoneLeft(t testing.TB, pgid int, what string) {
	t.Helper()
	var left []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		left = liveInGroup(pgid)
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("%s processes left behind: %v", what, left)
	}
}

// liveInGroup lists the processes of a group that are not zombies, from /proc/PID/stat.
func liveInGroup(pgid int) []string {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []string
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // it exited
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
		s := string(data)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 3 || fields[0] == "Z" || fields[2] != strconv.Itoa(pgid) {
			continue
		}
		out = append(out, strings.TrimSpace(s[:strings.LastIndexByte(s, ')')+1]))
	}
	return out
}
