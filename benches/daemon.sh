#!/usr/bin/env bash
# Whole-process `dms status` through a daemon against the one-shot `dms --direct status`,
# over the same run dir with N running helpers (issue 13's goal: at most 0.5x), and the
# daemon's RSS and idle CPU with those helpers.
#
# One PID namespace (`unshare --pid --fork --mount-proc`) holds the daemon and its
# helpers, so every helper is gone with it when the script ends. Installs nothing.
# Needs: hyperfine (Debian package hyperfine), unshare (util-linux), curl, cargo; root.
# Usage: benches/daemon.sh   (N=helpers, default 1000; RUNS=hyperfine runs, default 20;
#                             IDLE=seconds of the idle CPU sample, default 60)
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "daemon.sh: $1 not found; install the Debian package $2 (apt-get install -y $2)" >&2
        exit 1
    fi
}
need hyperfine hyperfine
need unshare util-linux
need curl curl
need cargo "rustup (https://rustup.rs)"
if [[ $(id -u) -ne 0 ]]; then
    echo "daemon.sh: run as root (unshare --pid needs it)" >&2
    exit 1
fi

N=${N:-1000}
RUNS=${RUNS:-20}
IDLE=${IDLE:-60}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
echo "== building dms (release)"
cargo build --release --locked -p dms-cli
DMS=$TARGET_DIR/release/dms
WORK=$(mktemp -d /dev/shm/dms-daemon.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"

cat >"$WORK/inside.sh" <<'EOF'
set -euo pipefail
run="$WORK/run"
"$DMS" --run-dir "$run" --backend sqlite serve 2>"$WORK/serve.log" &
serve=$!
until curl -s --unix-socket "$run/dms.sock" http://dms/v1/health >/dev/null; do sleep 0.05; done
echo "== spawning $N helpers through the daemon"
for i in $(seq 1 "$N"); do
    curl -s --unix-socket "$run/dms.sock" -H 'Content-Type: application/json' \
        -d '{"argv": ["/bin/sleep", "100000"]}' "http://dms/v1/targets/t$i/spawn" >/dev/null
done
running=$("$DMS" --run-dir "$run" --json stats | sed 's/.*"running":\([0-9]*\).*/\1/')
echo "== running: $running"
hyperfine -N --warmup 3 --runs "$RUNS" --export-markdown "$WORK/status.md" \
    -n "dms status (daemon)" "$DMS --run-dir $run status" \
    -n "dms --direct status" "$DMS --run-dir $run --direct status"
cat "$WORK/status.md"
rss=$(awk '/VmRSS/ {print $2}' "/proc/$serve/status")
echo "== daemon RSS with $N helpers: $((rss / 1024)) MiB ($rss kB)"
ticks() { awk '{print $14 + $15}' "/proc/$serve/stat"; }
before=$(ticks)
sleep "$IDLE"
after=$(ticks)
hz=$(getconf CLK_TCK)
echo "== daemon idle CPU over ${IDLE} s: $((after - before)) ticks of 1/$hz s = $(awk -v t=$((after - before)) -v hz="$hz" -v s="$IDLE" 'BEGIN { printf "%.3f", 100 * t / hz / s }') % of one core"
kill "$serve"
wait "$serve" || true
EOF
WORK=$WORK DMS=$DMS N=$N RUNS=$RUNS IDLE=$IDLE unshare --pid --fork --mount-proc bash "$WORK/inside.sh"
