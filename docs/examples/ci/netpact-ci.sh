#!/usr/bin/env bash
# netpact's gate for a policy repository's pull request, in plain shell (docs/ci.md). Any CI
# runs it; the GitHub Actions workflow beside it does too.
#
#   netpact-ci.sh BASE_REV HEAD_REV
#
# From the repository's top folder, it runs:
#   1. netpact validate on the policies: an invalid file stops the gate (exit 1) with file:line.
#   2. netpact plan from BASE_REV to HEAD_REV over the cluster file: the connectivity cells the
#      change opens and closes, as Markdown for a pull-request comment ($OUT/plan.md).
#   3. netpact test on the scenarios: expected, predicted and observed matrices on a node of
#      network namespaces (root), as JUnit ($OUT/junit.xml).
#
# Exit: 0 the gate passes; 1 invalid policies, a scenario that fails, or an error; 3 the change
# opens paths (newly allowed cells) and NETPACT_ALLOW_NEW is not "true": a reviewer approves by
# setting it (a label on the pull request, in the workflow).
#
# Environment (defaults in brackets): NETPACT [netpact], POLICIES [policies], CLUSTER
# [cluster.yaml], SCENARIOS [scenarios], OUT [netpact-out], NETPACT_ALLOW_NEW [false].
set -uo pipefail

if [ $# -ne 2 ]; then
	echo "usage: $0 BASE_REV HEAD_REV" >&2
	exit 1
fi
base=$1 head=$2
netpact=${NETPACT:-netpact}
policies=${POLICIES:-policies}
cluster=${CLUSTER:-cluster.yaml}
scenarios=${SCENARIOS:-scenarios}
out=${OUT:-netpact-out}
mkdir -p "$out" || exit 1

echo "== netpact validate $policies"
if ! "$netpact" validate "$policies"; then
	echo "netpact: the policies are invalid; nothing else was checked" >&2
	exit 1
fi

echo "== netpact plan $base -> $head"
"$netpact" plan --cluster "$cluster" --base "$base" --head "$head" --fail-on-new-allow \
	-o markdown "$policies" >"$out/plan.md"
plan=$?
case $plan in
0 | 2) ;;
3)
	if [ "${NETPACT_ALLOW_NEW:-false}" = true ]; then
		echo "netpact: the change opens paths; approved (NETPACT_ALLOW_NEW=true)"
		plan=0
	fi
	;;
*)
	echo "netpact: plan failed (exit $plan)" >&2
	exit 1
	;;
esac
cat "$out/plan.md"

echo "== netpact test $scenarios"
"$netpact" test --junit "$out/junit.xml" "$scenarios"
test=$?

if [ "$test" -ne 0 ]; then
	echo "netpact: a scenario failed (exit $test): see $out/junit.xml" >&2
	exit 1
fi
if [ "$plan" -eq 3 ]; then
	echo "netpact: the change opens paths (newly allowed cells in $out/plan.md); a reviewer must approve them (NETPACT_ALLOW_NEW=true)" >&2
	exit 3
fi
echo "netpact: the gate passes"
