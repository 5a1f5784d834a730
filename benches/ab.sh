#!/usr/bin/env bash
# Before/after in one run: the in-process benches and the whole-process comparisons of a
# base revision and of the working tree, one after the other on the same machine, so a
# change of shape can show it changed no figure.
#
#  1. `git worktree add` of BASE in a temp dir (its own target dir: both builds stay);
#  2. criterion benches of dms-benches, dms-store and dms-proc at BASE, saved as the
#     baseline `base`, then the same benches here, compared with it (criterion prints
#     the change and whether it is significant), into one CRITERION_HOME;
#  3. `benches/compare.sh` at BASE, then here (its own same-machine ratios each time).
# Each step's output goes to $OUT (default /tmp/dms-ab.<time>) as base-*.log and
# head-*.log; the criterion comparison lines are collected in $OUT/criterion.txt.
#
# A bench that exists on one side only is run on that side only (criterion then reports
# no change for it). Installs nothing; needs what compare.sh needs, and root.
# Usage: benches/ab.sh BASE   (e.g. benches/ab.sh 41adcf8)
#        BENCHES="lookup roundtrip" (dms-benches benches, default: all four),
#        FILTER=regex (criterion filter, default: every bench), RUNS=N (compare.sh),
#        SKIP_COMPARE=1 (criterion only), BASE_DIR=DIR BASE_TARGET=DIR (an existing
#        worktree of BASE and its target dir, to reuse their build)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: benches/ab.sh BASE (a git revision)}
BENCHES=${BENCHES:-"scan lookup roundtrip write_through"}
FILTER=${FILTER:-}
OUT=${OUT:-/tmp/dms-ab.$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"
export CRITERION_HOME=$OUT/criterion
HEAD_DIR=$PWD
if [[ -n ${BASE_DIR:-} ]]; then
    # A worktree of BASE made earlier (its build kept in BASE_TARGET).
    [[ $(git -C "$BASE_DIR" rev-parse HEAD) == $(git rev-parse "$BASE^{commit}") ]] ||
        { echo "ab.sh: $BASE_DIR is not at $BASE" >&2; exit 1; }
else
    BASE_DIR=$(mktemp -d /tmp/dms-ab-base.XXXXXX)
    cleanup() { git -C "$HEAD_DIR" worktree remove --force "$BASE_DIR" >/dev/null 2>&1 || true; }
    trap cleanup EXIT
    git worktree add --detach "$BASE_DIR" "$BASE" >/dev/null
fi
BASE_TARGET=${BASE_TARGET:-$BASE_DIR.target}
echo "== base $(git -C "$BASE_DIR" log --oneline -1 | cut -c1-80)"
echo "== head $(git log --oneline -1 | cut -c1-80)$(git diff --quiet || echo ' (+ uncommitted changes)')"
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"

# criterion ARGS... in the current directory: every bench of the list that exists here.
benches() {
    local side=$1 baseline=$2
    for b in $BENCHES; do
        [[ -f benches/benches/$b.rs ]] || { echo "($side has no bench $b)"; continue; }
        cargo bench --locked -q -p dms-benches --bench "$b" -- $baseline ${FILTER:+"$FILTER"}
    done
    for pb in "dms-store list" "dms-proc spawn"; do
        set -- $pb
        [[ -f crates/$1/benches/$2.rs ]] || continue
        cargo bench --locked -q -p "$1" --bench "$2" -- $baseline ${FILTER:+"$FILTER"}
    done
}

echo "== criterion at base (saved as baseline 'base')"
(cd "$BASE_DIR" && CARGO_TARGET_DIR=$BASE_TARGET benches base "--save-baseline base") 2>&1 | tee "$OUT/base-criterion.log"
echo "== criterion here, against 'base'"
benches head "--baseline base" 2>&1 | tee "$OUT/head-criterion.log"
grep -E "^[a-z_]+/|time:|change:|Performance|No change|regressed|improved" "$OUT/head-criterion.log" >"$OUT/criterion.txt" || true

if [[ -z ${SKIP_COMPARE:-} ]]; then
    echo "== compare.sh at base"
    (cd "$BASE_DIR" && CARGO_TARGET_DIR=$BASE_TARGET bash benches/compare.sh) 2>&1 | tee "$OUT/base-compare.log"
    echo "== compare.sh here"
    bash benches/compare.sh 2>&1 | tee "$OUT/head-compare.log"
fi
echo "== logs in $OUT"
