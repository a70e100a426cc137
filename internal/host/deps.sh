#!/usr/bin/env bash
# The one list of Debian packages netpact needs, installed idempotently by need.
#
#   internal/host/deps.sh demo|test|bench|generate|e2e|ci ...
#
# Checks each package's installed state with dpkg-query; runs apt-get update and apt-get install
# only for what is missing; stops the host-wide services a fresh install starts (the scenarios run
# their own nginx, PostgreSQL and sshd inside pods and tests); prints one line per package it installed. Without
# root or apt-get it stops with one sentence naming what is missing and how to get it.
set -euo pipefail

# need -> packages. Each need lists only what it adds; "test" includes "demo", "ci" everything
# CI runs (lint, check-generate, make test, make e2e).
declare -A NEED=(
	# make demo: the binary, iproute2 for the local node's namespaces, nginx and PostgreSQL as
	# scenario workloads (psql from postgresql-client is a probe), git for the reconciler demo.
	[demo]="make git iproute2 nginx-light postgresql"
	# make test: the demo's, plus sshd and ssh-keygen for the reconciler's SSH source, host-local
	# IPAM for the CNI plugin's tests, nft for a NodePort's translation on the local node, and
	# headless Chromium to screenshot netpact plan's HTML page (policy/matrix).
	[test]="openssh-server openssh-client containernetworking-plugins nftables chromium"
	# make bench: iperf3 and iptables-restore for the datapath throughput baselines, HAProxy (and
	# the demo's nginx) as the reverse proxies the L7 proxy is measured against.
	[bench]="iperf3 iptables haproxy"
	# make generate / check-generate: bpf2go with Debian's clang 14 and libbpf headers.
	[generate]="clang-14 llvm-14 libbpf-dev"
	# make e2e: the private Docker engine (kind/dockerd.sh), jq for its runc wrapper, debootstrap
	# for the offline base image (kind/images.sh).
	[e2e]="docker.io jq debootstrap"
)
declare -A INCLUDES=([test]="demo" [bench]="demo" [ci]="test generate e2e")

# Services a package starts on install; the tests need the binaries, not the host-wide daemons.
declare -A SERVICE=([nginx-light]=nginx [postgresql]=postgresql [openssh-server]=ssh [docker.io]=docker [haproxy]=haproxy)

usage() {
	echo "usage: $0 ${!NEED[*]} ci" >&2
	exit 2
}

expand() {
	local n=$1
	[ -n "${NEED[$n]+x}" ] || [ -n "${INCLUDES[$n]+x}" ] || usage
	local inc
	for inc in ${INCLUDES[$n]:-}; do expand "$inc"; done
	echo "${NEED[$n]:-}"
}

[ $# -gt 0 ] || usage
wanted=()
for n in "$@"; do
	# shellcheck disable=SC2207
	wanted+=($(expand "$n"))
done

missing=()
declare -A seen=()
for p in "${wanted[@]}"; do
	[ -n "${seen[$p]+x}" ] && continue
	seen[$p]=1
	# dpkg -s succeeds for a removed package whose configuration files remain ("rc"): ask for
	# the installed state itself.
	[ "$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
	echo "netpact needs the Debian packages ${missing[*]} (for: $*) and this machine has no apt-get: install them with its package manager, or use Debian." >&2
	exit 1
fi
if [ "$(id -u)" != 0 ]; then
	echo "netpact needs the Debian packages ${missing[*]} (for: $*): run this as root, or install them first with: sudo apt-get install ${missing[*]}" >&2
	exit 1
fi

# A package's maintainer script must not start its daemon on the host: policy-rc.d answers 101
# ("action not allowed") to invoke-rc.d for the length of the install; any daemon that starts
# anyway is stopped below.
rcd=/usr/sbin/policy-rc.d
own_rcd=0
if [ ! -e "$rcd" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$rcd"
	chmod 755 "$rcd"
	own_rcd=1
fi
cleanup() { if [ $own_rcd = 1 ]; then rm -f "$rcd"; fi; }
trap cleanup EXIT

log=$(mktemp)
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
	tail -20 "$log" >&2
	echo "netpact could not install the Debian packages ${missing[*]} (apt-get failed, its output above): install them with apt-get install ${missing[*]}" >&2
	rm -f "$log"
	exit 1
fi
rm -f "$log"
for p in "${missing[@]}"; do
	s=${SERVICE[$p]:-}
	if [ -n "$s" ]; then
		service "$s" stop >/dev/null 2>&1 || true
	fi
	echo "installed $p $(dpkg-query -W -f '${Version}' "$p")"
done
