#!/usr/bin/env bash
# Whole-process comparisons for dms, with hyperfine, on a tmpfs run directory.
#
#  1. start + stop of 100 `sleep` helpers with PID files: dms against Debian's
#     start-stop-daemon. Each side runs in its own PID namespace with bash as its init
#     (`unshare --pid --fork --mount-proc bash side.sh`), so killed helpers are reaped
#     as on a real host. Both sides wait for each helper to be gone: `dms kill` always
#     does; start-stop-daemon does with `--retry TERM/10/KILL/5`. start-stop-daemon
#     without `--retry` (send SIGTERM, do not wait) is timed too, for reference.
#  2. `dms status` over 1,000, 10,000 and 30,000 PID files, 5 % naming live helpers,
#     against the floor (`floor_scan`: readdir; open, read, close each file;
#     kill(pid, 0); /proc/PID/stat of the live ones). `dms status` only reads (it
#     removes no stale file; `dms cleanup` does), so the floor is the whole job; the
#     set is restored (hard links) before every run all the same. In one PID namespace,
#     whose init is the shell that starts the helpers. Beside the Rust floor, a C floor
#     (benches/floor_scan.c, gcc -O2: the same system calls without Rust's process
#     start); both ratios are reported, with min/median/max at 10,000 files.
#  3. peak RSS of `dms status` over 10,000 PID files (/usr/bin/time -v).
#  4. memory per tracked helper with 100,000 targets in the Manager (mem_per_helper).
#
# Installs nothing. Needs: hyperfine (Debian package hyperfine), start-stop-daemon
# (dpkg), unshare (util-linux), /usr/bin/time (time), gcc (gcc), cargo; root (for unshare).
# Usage: benches/compare.sh   (RUNS=N: hyperfine runs, default 10; SIZES_OVERRIDE="1000 10000":
#                              the PID-file counts of part 2, default "1000 10000 30000")
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "compare.sh: $1 not found; install the Debian package $2 (apt-get install -y $2)" >&2
        exit 1
    fi
}
need hyperfine hyperfine
need start-stop-daemon dpkg
need unshare util-linux
need cargo "rustup (https://rustup.rs)"
need gcc gcc
if [[ ! -x /usr/bin/time ]]; then
    echo "compare.sh: /usr/bin/time not found; install the Debian package time" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "compare.sh: run as root (unshare --pid needs it)" >&2
    exit 1
fi

RUNS=${RUNS:-10}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
echo "== building dms and the bench programs (release)"
cargo build --release --locked -p dms-cli -p dms-benches --bins
BIN=$TARGET_DIR/release
DMS=$BIN/dms
FLOOR=$BIN/floor_scan
SET=$BIN/pidfile_set
MEM=$BIN/mem_per_helper
SSD=$(command -v start-stop-daemon)
SLEEP=$(command -v sleep)

WORK=$(mktemp -d /dev/shm/dms-compare.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
CFLOOR=$WORK/floor_scan_c
gcc -O2 -o "$CFLOOR" benches/floor_scan.c
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
echo "== work directory (tmpfs): $WORK"

# median (seconds) of the row of hyperfine CSV $1 whose command name is $2
median() { awk -F, -v name="$2" 'NR > 1 && $1 == name { print $4; exit }' "$1"; }
# median wall time (seconds) in status.csv of the command containing $1 (and not $3)
# for n = $2; with $4 = cpu, the mean CPU time (user + system) instead
status_median() {
    awk -F, -v pat="$1" -v n="$2" -v not="${3:-}" -v cpu="${4:-}" \
        'NR > 1 && index($1, pat) && !(not != "" && index($1, not)) && $NF == n {
            if (cpu == "cpu") print $5 + $6; else print $4; exit }' \
        "$WORK/status.csv"
}
# column $3 (hyperfine CSV: 4 median, 7 min, 8 max) of the status.csv row of the
# command starting with $1 for n = $2
status_col() {
    awk -F, -v pat="$1" -v n="$2" -v col="$3" \
        'NR > 1 && index($1, pat) == 1 && $NF == n { print $col; exit }' "$WORK/status.csv"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
ms() { awk -v s="$1" 'BEGIN { printf "%.1f ms", s * 1000 }'; }

# --- 1. start + stop of 100 helpers ------------------------------------------------
N_HELPERS=100
cat >"$WORK/side-dms.sh" <<EOF
set -euo pipefail
run=$WORK/run-dms
rm -rf "\$run"
for i in \$(seq -w 1 $N_HELPERS); do "$DMS" --run-dir "\$run" spawn "t\$i" -- "$SLEEP" 3600 >/dev/null; done
for i in \$(seq -w 1 $N_HELPERS); do "$DMS" --run-dir "\$run" kill "t\$i" >/dev/null; done
left=\$(find "\$run/s3" -name '*.pid' | wc -l)
[[ \$left -eq 0 ]] || { echo "dms side: \$left PID files left" >&2; exit 1; }
EOF
cat >"$WORK/side-ssd.sh" <<EOF
set -euo pipefail
run=$WORK/run-ssd
rm -rf "\$run"; mkdir -p "\$run/s3"
for i in \$(seq -w 1 $N_HELPERS); do
    "$SSD" --start --quiet --background --make-pidfile --pidfile "\$run/s3/t\$i.pid" --exec "$SLEEP" -- 3600
done
for i in \$(seq -w 1 $N_HELPERS); do
    "$SSD" --stop --quiet --pidfile "\$run/s3/t\$i.pid" --exec "$SLEEP" --retry TERM/10/KILL/5 --remove-pidfile
done
left=\$(find "\$run/s3" -name '*.pid' | wc -l)
[[ \$left -eq 0 ]] || { echo "start-stop-daemon side: \$left PID files left" >&2; exit 1; }
EOF
sed -e 's| --retry TERM/10/KILL/5 --remove-pidfile| --remove-pidfile|' -e 's|run-ssd|run-ssd-nowait|' \
    "$WORK/side-ssd.sh" >"$WORK/side-ssd-nowait.sh"

echo
echo "== 1. start + stop of $N_HELPERS sleep helpers (each side in its own PID namespace)"
hyperfine --warmup 1 --runs "$RUNS" --export-csv "$WORK/startstop.csv" \
    -n dms "unshare --pid --fork --mount-proc bash $WORK/side-dms.sh" \
    -n start-stop-daemon "unshare --pid --fork --mount-proc bash $WORK/side-ssd.sh" \
    -n start-stop-daemon-nowait "unshare --pid --fork --mount-proc bash $WORK/side-ssd-nowait.sh"
T_DMS=$(median "$WORK/startstop.csv" dms)
T_SSD=$(median "$WORK/startstop.csv" start-stop-daemon)
T_SSD_NOWAIT=$(median "$WORK/startstop.csv" start-stop-daemon-nowait)

# --- 2. + 3. status over N PID files ------------------------------------------------
SIZES=(${SIZES_OVERRIDE:-1000 10000 30000})
MAX=${SIZES[-1]}
SIZES_CSV=$(IFS=,; echo "${SIZES[*]}")
cat >"$WORK/status.sh" <<EOF
set -euo pipefail
# This shell is the init of a fresh PID namespace: the helpers are its children, and
# PIDs above those it hands out are dead.
pids=()
for _ in \$(seq 1 $((MAX / 20))); do "$SLEEP" 3600 & pids+=(\$!); done
for n in ${SIZES[*]}; do
    printf '%s\n' "\${pids[@]:0:\$((n / 20))}" >"$WORK/alive-\$n.txt"
    "$SET" "$WORK/tpl-\$n/s3" "\$n" "$WORK/alive-\$n.txt"
done
cat >"$WORK/restore.sh" <<'EOR'
set -e
rm -rf "$WORK/run/s3"; mkdir -p "$WORK/run/locks"
cp -al "$WORK/tpl-\$1/s3" "$WORK/run/s3"
EOR
hyperfine --warmup 1 --runs $RUNS --export-csv "$WORK/status.csv" -L n $SIZES_CSV \
    --prepare "bash $WORK/restore.sh {n}" \
    "$DMS --run-dir $WORK/run status" \
    "$FLOOR $WORK/run/s3" \
    "$CFLOOR $WORK/run/s3"
bash "$WORK/restore.sh" 10000
/usr/bin/time -v "$DMS" --run-dir "$WORK/run" status 2>"$WORK/time-dms.txt" >/dev/null
bash "$WORK/restore.sh" 10000
/usr/bin/time -v "$FLOOR" "$WORK/run/s3" 2>"$WORK/time-floor.txt" >/dev/null
kill "\${pids[@]}"
wait
EOF

echo
echo "== 2. dms status over ${SIZES[*]} PID files (5 % alive) against the floor, one PID namespace"
unshare --pid --fork --mount-proc bash "$WORK/status.sh"
RSS_KB=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$WORK/time-dms.txt")
RSS_FLOOR_KB=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$WORK/time-floor.txt")

# --- 4. memory per tracked helper ---------------------------------------------------
echo
echo "== 4. memory per tracked helper, 100,000 targets (FakeSpawner + MemoryStore)"
MEM_LINE=$(unshare --pid --fork --mount-proc "$MEM" 100000)
echo "$MEM_LINE"
MEM_PER=$(sed -E 's/.* ([0-9]+) bytes per tracked helper.*/\1/' <<<"$MEM_LINE")

# --- summary ---------------------------------------------------------------------------
echo
echo "== summary (medians of $RUNS runs)"
printf '%-62s %s\n' "goal" "measured"
printf '%-62s %s (dms %s, start-stop-daemon --retry %s; without --retry %s)\n' \
    "start+stop of 100 helpers <= 0.5x start-stop-daemon" \
    "$(ratio "$T_DMS" "$T_SSD")x" "$(ms "$T_DMS")" "$(ms "$T_SSD")" "$(ms "$T_SSD_NOWAIT")"
for n in "${SIZES[@]}"; do
    d=$(status_median "$DMS --run-dir" "$n")
    f=$(status_median "$FLOOR $WORK/run/s3" "$n")
    dc=$(status_median "$DMS --run-dir" "$n" "" cpu)
    fc=$(status_median "$FLOOR $WORK/run/s3" "$n" "" cpu)
    printf '%-62s %sx floor (dms %s, floor %s; %s per 1,000 files)\n' \
        "dms status over $n files (5 % alive) <= 1.3x floor, linear" \
        "$(ratio "$d" "$f")" "$(ms "$d")" "$(ms "$f")" \
        "$(awk -v s="$d" -v n="$n" 'BEGIN { printf "%.2f ms", s * 1e6 / n }')"
    printf '%-62s %sx floor (dms %s, floor %s)\n' \
        "  the same in CPU time (user + system)" \
        "$(ratio "$dc" "$fc")" "$(ms "$dc")" "$(ms "$fc")"
    c=$(status_median "$CFLOOR $WORK/run/s3" "$n")
    cc=$(status_median "$CFLOOR $WORK/run/s3" "$n" "" cpu)
    printf '%-62s %sx C floor wall, %sx in CPU time (C floor %s, CPU %s)\n' \
        "  against the C floor (gcc -O2) <= 1.3x" \
        "$(ratio "$d" "$c")" "$(ratio "$dc" "$cc")" "$(ms "$c")" "$(ms "$cc")"
done
if [[ " ${SIZES[*]} " == *" 10000 "* ]]; then
    echo
    echo "== dms status over 10,000 PID files: min / median / max of $RUNS runs (wall)"
    for side in "dms:$DMS --run-dir" "Rust floor:$FLOOR $WORK/run/s3" "C floor:$CFLOOR $WORK/run/s3"; do
        name=${side%%:*} pat=${side#*:}
        printf '%-12s %s / %s / %s\n' "$name" "$(ms "$(status_col "$pat" 10000 7)")" \
            "$(ms "$(status_col "$pat" 10000 4)")" "$(ms "$(status_col "$pat" 10000 8)")"
    done
    for f in "Rust floor:$FLOOR $WORK/run/s3" "C floor:$CFLOOR $WORK/run/s3"; do
        name=${f%%:*} pat=${f#*:}
        # Each ratio divides one statistic by the same statistic of the other side (the
        # maxima too), so the last can be below the median's.
        printf 'dms / %-10s of the mins %s  of the medians %s  of the maxima %s\n' "$name" \
            "$(ratio "$(status_col "$DMS --run-dir" 10000 7)" "$(status_col "$pat" 10000 7)")" \
            "$(ratio "$(status_col "$DMS --run-dir" 10000 4)" "$(status_col "$pat" 10000 4)")" \
            "$(ratio "$(status_col "$DMS --run-dir" 10000 8)" "$(status_col "$pat" 10000 8)")"
    done
fi
printf '%-62s %s KiB = %.1f MiB (floor_scan: %s KiB)\n' "peak RSS of dms status over 10,000 files <= 16 MiB" \
    "$RSS_KB" "$(awk -v k="$RSS_KB" 'BEGIN { print k / 1024 }')" "$RSS_FLOOR_KB"
printf '%-62s %s bytes\n' "memory per tracked helper at 100,000 targets <= 512 bytes" "$MEM_PER"
echo "(is_running from memory <= 1 us: cargo bench -p dms-benches --bench lookup)"
