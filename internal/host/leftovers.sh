#!/usr/bin/env bash
# What a test run may leave on the host: network namespaces, veths in the host namespace, and
# pins under /sys/fs/bpf (bpffs's own maps.debug and progs.debug aside: a test may mount bpffs, as
# the enforcer does on a node, and the mount stays).
#
#   internal/host/leftovers.sh snapshot FILE   records what is there now
#   internal/host/leftovers.sh check FILE      fails, naming each one, when something is there
#                                              that FILE did not record
set -euo pipefail

list() {
	ip netns list 2>/dev/null | awk '{print "netns " $1}'
	ip -o link show type veth 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print "veth " $2}'
	if [ -d /sys/fs/bpf ]; then find /sys/fs/bpf -mindepth 1 2>/dev/null | { grep -vxE '/sys/fs/bpf/(maps|progs)\.debug' || true; } | sed 's/^/pin /'; fi
}

case "${1:-}:${2:-}" in
snapshot:?*) list | sort >"$2" ;;
check:?*)
	left=$(list | sort | comm -13 "$2" -)
	if [ -n "$left" ]; then
		echo "the test run left these behind (a test leaks; remove them with ip netns del, ip link del, rm):" >&2
		echo "$left" | sed 's/^/  /' >&2
		exit 1
	fi
	;;
*)
	echo "usage: $0 snapshot|check FILE" >&2
	exit 2
	;;
esac
