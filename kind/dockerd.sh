#!/usr/bin/env bash
# A private Docker engine for kind on this kind of machine, started idempotently.
#
#   kind/dockerd.sh start   installs Debian's docker.io when missing, starts the private dockerd
#                           (unless it already runs) and prints the DOCKER_HOST to use
#   kind/dockerd.sh stop    stops it again, only if this script started it
#   kind/dockerd.sh status  exits 0 when the private dockerd runs
#   kind/dockerd.sh env     prints export DOCKER_HOST=...
#
# The sandbox's processes lack CAP_SYS_RESOURCE in their bounding set, so `docker run --privileged`
# (which kind uses for every node) fails when runc tries to grant every capability. The private
# dockerd's default runtime is a wrapper around runc that removes CAP_SYS_RESOURCE from the bundle's
# config.json first. It has its own root, exec root, pidfile and socket, no iptables and no default
# bridge (nothing is pulled or NATed offline; kind makes its own network).
set -euo pipefail

STATE=${NETPACT_DOCKER_STATE:-/var/lib/netpact-docker}
RUN=${NETPACT_DOCKER_RUN:-/run/netpact-docker}
SOCK="$RUN/docker.sock"
PIDFILE="$RUN/dockerd.pid"
WRAPPER="$STATE/runc-nosysresource"

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# docker.io and jq from the project's one list; its lines go to stderr (stdout is the env).
install() {
	"$(dirname "$0")/../internal/host/deps.sh" e2e >&2
}

write_wrapper() {
	mkdir -p "$STATE"
	cat >"$WRAPPER" <<'WRAP'
#!/bin/sh
# runc, minus CAP_SYS_RESOURCE, which this sandbox cannot grant: removed from every capability set
# of the bundle's config.json (create/run) and of the process spec (exec --process).
bundle=""
process=""
prev=""
for a in "$@"; do
	case "$prev" in
	--bundle | -b) bundle="$a" ;;
	--process | -p) process="$a" ;;
	esac
	case "$a" in
	--bundle=*) bundle="${a#--bundle=}" ;;
	--process=*) process="${a#--process=}" ;;
	esac
	prev="$a"
done
strip() {
	tmp="$1.netpact"
	jq "$2"' |= ((. // {}) | with_entries(.value |= map(select(. != "CAP_SYS_RESOURCE"))))' "$1" >"$tmp" && mv "$tmp" "$1"
}
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
	strip "$bundle/config.json" .process.capabilities
fi
if [ -n "$process" ] && [ -f "$process" ]; then
	strip "$process" .capabilities
fi
exec /usr/sbin/runc "$@"
WRAP
	chmod 755 "$WRAPPER"
}

start() {
	install
	write_wrapper # always current, even for an engine already running
	if running; then
		echo "export DOCKER_HOST=unix://$SOCK"
		return
	fi
	mkdir -p "$RUN" "$STATE/root" "$STATE/exec"
	cat >"$STATE/daemon.json" <<JSON
{
  "data-root": "$STATE/root",
  "exec-root": "$STATE/exec",
  "pidfile": "$PIDFILE",
  "hosts": ["unix://$SOCK"],
  "iptables": false,
  "ip6tables": false,
  "ipv6": true,
  "bridge": "none",
  "runtimes": {"netpact-runc": {"path": "$WRAPPER"}},
  "default-runtime": "netpact-runc"
}
JSON
	nohup dockerd --config-file "$STATE/daemon.json" >"$RUN/dockerd.log" 2>&1 &
	echo "started" >"$RUN/started-by-netpact"
	for _ in $(seq 1 100); do
		if DOCKER_HOST="unix://$SOCK" docker info >/dev/null 2>&1; then
			echo "export DOCKER_HOST=unix://$SOCK"
			return
		fi
		sleep 0.2
	done
	echo "dockerd did not come up; its log:" >&2
	tail -20 "$RUN/dockerd.log" >&2
	exit 1
}

stop() {
	if [ -f "$RUN/started-by-netpact" ] && running; then
		local pid
		pid=$(cat "$PIDFILE")
		kill "$pid"
		for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		# dockerd leaves its bind mount of the host network namespace behind.
		umount "$STATE/exec/netns/default" 2>/dev/null || true
	fi
	rm -f "$RUN/started-by-netpact"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env) echo "export DOCKER_HOST=unix://$SOCK" ;;
status) running ;;
*) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
