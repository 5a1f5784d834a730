#!/usr/bin/env bash
# Fuzz smoke for CI: every target fuzzes for FUZZ_SECONDS, then its committed corpus is
# replayed. Exits non-zero if any target crashes, fails an assertion, times out on one
# input or runs out of memory. Works on the stable toolchain: sanitizers are off
# (`-s none`), so no -Z flag is needed.
#
# Usage (from anywhere):   fuzz/ci.sh                # 30 s per target
#                          FUZZ_SECONDS=60 fuzz/ci.sh
#                          fuzz/ci.sh pid_file target_id   # only these targets
#
# The committed corpora (fuzz/corpus/<target>/) are only read: new inputs found while
# fuzzing go to a throwaway directory (the first corpus argument, where libFuzzer
# writes). A failing input is saved under fuzz/artifacts/<target>/ (gitignored) and
# printed with the command that reproduces it; archive that directory in CI.
set -euo pipefail

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
# Longest a single input may run before libFuzzer reports it as a hang (a deadlock in
# the manager, for instance).
FUZZ_INPUT_TIMEOUT="${FUZZ_INPUT_TIMEOUT:-30}"

cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/ci.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/dms-fuzz-ci.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

cargo fuzz build -s none

failed=()
for t in "${targets[@]}"; do
    if [ ! -d "corpus/$t" ]; then
        echo "fuzz/ci.sh: no committed corpus for $t (expected fuzz/corpus/$t)" >&2
        failed+=("$t (no corpus)")
        continue
    fi
    mkdir -p "$scratch/$t"
    echo "=== $t: fuzzing for ${FUZZ_SECONDS}s"
    if ! cargo fuzz run -s none "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_INPUT_TIMEOUT" \
        -print_final_stats=1; then
        failed+=("$t (fuzzing)")
        continue
    fi
    echo "=== $t: replaying corpus/$t"
    if ! cargo fuzz run -s none "$t" "corpus/$t" -- -runs=0 -timeout="$FUZZ_INPUT_TIMEOUT"; then
        failed+=("$t (corpus replay)")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz/ci.sh: FAILED: ${failed[*]}; inputs are in fuzz/artifacts/" >&2
    exit 1
fi
echo "fuzz/ci.sh: all targets passed (${targets[*]})"
