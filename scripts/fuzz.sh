#!/usr/bin/env bash
# fuzz.sh [TIME]: run every fuzz target of the module for TIME each
# (default 5s), one after the other. Targets are discovered with
# `go test -list`, so a new Fuzz* function is picked up without editing
# this file. A failing input is saved under the package's testdata/fuzz/
# (commit it: it becomes a regression case) and the script exits non-zero.
set -euo pipefail
time=${1:-5s}
go=${GO:-go}
cd "$(dirname "$0")/.."
# -list prints a package's matching names, then "ok <package> <time>".
# Only packages with a Fuzz function in a test file are listed: building
# every package's test binary would double the time.
mapfile -t pkgs < <(grep -rlE --include='*_test.go' '^func Fuzz[A-Z0-9_]' . | xargs -r -n1 dirname | sort -u)
if [ ${#pkgs[@]} -eq 0 ]; then
	echo "fuzz: no targets found" >&2
	exit 1
fi
listing=$($go test -list '^Fuzz' "${pkgs[@]}") # fails the script if a package does not build
mapfile -t lines < <(grep -E '^(Fuzz|ok )' <<<"$listing")
targets=()
names=()
for l in "${lines[@]}"; do
	case $l in
	Fuzz*) names+=("$l") ;;
	ok*)
		pkg=$(awk '{print $2}' <<<"$l")
		for n in "${names[@]}"; do targets+=("$pkg $n"); done
		names=()
		;;
	esac
done
if [ ${#targets[@]} -eq 0 ]; then
	echo "fuzz: no targets found" >&2
	exit 1
fi
# fuzz_one runs one target. Go 1.26's fuzz coordinator can fail a target
# with a bare "context deadline exceeded" as -fuzztime ends on a loaded
# machine (golang/go#75804, fixed in Go 1.27): no input is at fault and
# none is written. Such a run, and only such a run, is tried again (at
# most three runs); a written failing input, a panic or a test failure
# fails at once.
fuzz_one() {
	local pkg=$1 name=$2 log try
	log=$(mktemp)
	for try in 1 2 3; do
		if $go test "$pkg" -run '^$' -fuzz "^${name}\$" -fuzztime "$time" 2>&1 | tee "$log"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
			rm -f "$log"
			return 0
		fi
		if ! grep -q 'context deadline exceeded' "$log" || grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "$log"; then
			break
		fi
		echo "fuzz: $name: the coordinator's deadline race (golang/go#75804), no failing input (run $try of 3)"
	done
	rm -f "$log"
	return 1
}
start=$SECONDS
for t in "${targets[@]}"; do
	read -r pkg name <<<"$t"
	echo "fuzz: $name ($pkg) for $time"
	fuzz_one "$pkg" "$name"
done
echo "fuzz: ${#targets[@]} targets in $((SECONDS - start))s"
