#!/usr/bin/env bash
# Every figure of the README's Performance section, from one run of one build on one
# machine: the whole-process comparisons, the daemon against the one-shot CLI, the
# peers (supervisord, s6), the daemon's goal figures, the restart latency, the Python
# client, and the in-process lookup bench. Each step's output goes to $OUT (default
# /tmp/dms-figures.<time>) as <step>.log, with the machine, load and time of each step
# in $OUT/run.log, so every README table can name this one run.
#
# Installs nothing; needs what each script needs (compare.sh, daemon.sh, peers.sh), root,
# /dev/fuse, s3fs and moto_server in $DMS_VENV/bin (for the s3fs restart figure; skipped
# with a line in run.log without them), and python3.
# Usage: benches/figures.sh   (ONLY="compare peers" runs some steps only; steps:
#        compare daemon peers goal restart s3fs python lookup)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dms-figures.$(date -u +%Y%m%dT%H%M%S)}
ONLY=${ONLY:-"compare daemon peers goal restart s3fs python lookup"}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
mkdir -p "$OUT"
log() { echo "$(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg): $*" | tee -a "$OUT/run.log"; }

log "dms $(git log --oneline -1 | cut -c1-70)$(git diff --quiet || echo ' (+ uncommitted changes)')"
log "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
cargo build --release --locked -q -p dms-cli -p dms-benches --bins

step() {
    local name=$1
    shift
    [[ " $ONLY " == *" $name "* ]] || return 0
    log "start $name: $*"
    if "$@" >"$OUT/$name.log" 2>&1; then log "end $name"; else log "FAILED $name (see $OUT/$name.log)"; fi
}

figures_test() { cargo test --release --locked -q -p dms-cli --test "$1" -- --ignored --nocapture --test-threads 1 "$2"; }

step compare bash benches/compare.sh
step daemon bash benches/daemon.sh
step peers bash benches/peers.sh
step goal figures_test serve goal_figures
step restart figures_test supervise_figures restart_latency
if [[ -x ${DMS_VENV:-/nonexistent}/bin/moto_server ]] && command -v s3fs >/dev/null; then
    step s3fs figures_test supervise_figures s3fs_restart_latency
else
    log "skipped s3fs: needs s3fs and \$DMS_VENV/bin/moto_server"
fi
step python python3 python/bench/bench_client.py --dms "$TARGET_DIR/release/dms" --helpers 1000
step lookup cargo bench --locked -q -p dms-benches --bench lookup
log "done; logs in $OUT"
