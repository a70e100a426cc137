#!/usr/bin/env bash
# make soak: the seed and L7 scenarios N times in a row on a local node while the machine is
# busy, to catch a verdict that differs between runs (a race, never noise).
#
#   internal/host/soak.sh BIN N
#
# The load is what the race of issue 30 showed under: Go compiling netpact from an empty build
# cache, over and over (every core busy, processes started and ended, the disk written), in a
# process group of its own that is killed at the end. Each run prints its wrong cells and failed
# steps; the end prints the totals, the time taken and how busy the CPUs were. Exit 1 when any
# run had a wrong cell, a failed step or no result.
set -uo pipefail
bin=${1:?usage: soak.sh BIN N}
n=${2:?usage: soak.sh BIN N}
scenarios=(scenarios/seeds/ scenarios/l7/)
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "soak: N must be a positive number, not '$n'"; exit 2; }
command -v go >/dev/null || { echo "soak: go is needed for the compile load"; exit 1; }

work=$(mktemp -d)
setsid bash -c 'while :; do rm -rf "$1/cache"; GOCACHE="$1/cache" go build -o /dev/null ./cmd/netpact >/dev/null 2>&1 || sleep 1; done' soak-load "$work" &
load=$!
stop_load() {
	kill -TERM -- "-$load" 2>/dev/null
	wait "$load" 2>/dev/null
	rm -rf "$work"
}
trap stop_load EXIT

# cpu_busy prints "busy total" jiffies from /proc/stat (busy: all but idle and iowait).
cpu_busy() {
	local _cpu user nice system idle iowait irq softirq steal _rest
	read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
	echo "$((user + nice + system + irq + softirq + steal)) $((user + nice + system + idle + iowait + irq + softirq + steal))"
}

sleep 5 # the load is under way before the first run
read -r busy0 total0 < <(cpu_busy)
start=$(date +%s)
wrong_total=0 failed_total=0 bad_runs=0
for i in $(seq 1 "$n"); do
	log="$work/run-$i.log"
	t0=$(date +%s)
	"$bin" test "${scenarios[@]}" >"$log" 2>&1
	rc=$?
	totals=$(grep -E '^[0-9]+ scenarios, [0-9]+ steps: ' "$log" | tail -1)
	if [[ $totals =~ ([0-9]+)\ failed\;\ ([0-9]+)\ probes,\ ([0-9]+)\ wrong ]]; then
		failed=${BASH_REMATCH[1]} probes=${BASH_REMATCH[2]} wrong=${BASH_REMATCH[3]}
	else
		failed=1 probes=0 wrong=0
		totals="no result (exit $rc)"
	fi
	echo "soak run $i/$n: $wrong wrong cells, $failed failed steps of $probes probes in $(($(date +%s) - t0))s"
	wrong_total=$((wrong_total + wrong))
	failed_total=$((failed_total + failed))
	if ((wrong > 0 || failed > 0 || rc != 0)); then
		bad_runs=$((bad_runs + 1))
		echo "---- run $i: $totals"
		sed -n '/^== failures/,$p' "$log"
		grep -q '^== failures' "$log" || tail -20 "$log"
		echo "----"
	fi
done
read -r busy1 total1 < <(cpu_busy)
share=$(((busy1 - busy0) * 100 / (total1 - total0 > 0 ? total1 - total0 : 1)))
echo "make soak: $n runs of ${scenarios[*]} in $(($(date +%s) - start))s under a compile load (CPUs ${share}% busy):" \
	"$wrong_total wrong cells, $failed_total failed steps, $bad_runs bad runs"
((bad_runs == 0))
