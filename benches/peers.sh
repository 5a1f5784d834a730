#!/usr/bin/env bash
# dms serve against its peers, supervisord and s6 (s6-svscan over service directories),
# from one run on one machine. Each supervisor runs in its own PID namespace
# (`unshare --pid --fork --mount-proc`, a bash script as its init) and supervises the
# same helpers: `sleeper`, a C program that only sleeps (built here with gcc -O2), so
# that no side pays for a shell or for parsing arguments; restart delays as low as each
# allows (supervisord: autorestart=true, startsecs=0; s6: none to set, s6-supervise
# restarts at once a service that ran over a second; dms: restart policy `always` with
# initial_delay_secs 0, once the daemon accepts restart policies).
#
#  (a) bring-up of N helpers: from the supervisor's start (dms: the daemon is up, then
#      N spawn requests, 32 at a time, over its socket with one curl) until N run;
#  (b) K helpers SIGKILLed at once: until K new ones run (and the killed ones are gone);
#  (c) the supervisor's own RSS with N helpers (s6: s6-svscan plus every s6-supervise);
#  (d) the supervisor's CPU time (user + system, in clock ticks of 10 ms) over IDLE idle
#      seconds with N helpers.
# Also (c') the PSS of the same processes, where shared pages count once in all.
#
# Prints a markdown table with the ratios dms/supervisord and dms/s6.
# Installs nothing: checks for what it needs and says what to install.
# Usage: benches/peers.sh           full run: N=1000 K=100 IDLE=60 (about 5 minutes)
#        QUICK=1 benches/peers.sh   quick run: N=100 K=20 IDLE=10
#        N=.. K=.. IDLE=.. override each; ONLY="dms s6" runs some sides only.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (Debian package $2)"); }
need supervisord supervisor
need s6-svscan s6
need unshare util-linux
need curl curl
need gcc gcc
need cargo "rustup (https://rustup.rs)"
if ((${#missing[@]})); then
    echo "peers.sh: missing: ${missing[*]}; install them (apt-get install -y ...) and run again" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "peers.sh: run as root (unshare --pid needs it)" >&2
    exit 1
fi

if [[ -n ${QUICK:-} ]]; then
    N=${N:-100} K=${K:-20} IDLE=${IDLE:-10}
else
    N=${N:-1000} K=${K:-100} IDLE=${IDLE:-60}
fi
ONLY=${ONLY:-"dms supervisord s6"}
LIMIT=${LIMIT:-300} # seconds a side may take to bring its helpers up, or back
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
echo "== building dms (release)"
# The same packages as compare.sh builds, so that one build serves both scripts.
cargo build --release --locked -p dms-cli -p dms-benches --bins
DMS=$TARGET_DIR/release/dms

WORK=$(mktemp -d /dev/shm/dms-peers.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
SLEEPER=$WORK/sleeper
PCOUNT=$WORK/pcount
cat >"$WORK/sleeper.c" <<'EOF'
/* The helper every side supervises: sleeps until killed. */
#include <unistd.h>
int main(void) { for (;;) pause(); }
EOF
cat >"$WORK/pcount.c" <<'EOF'
/* pcount EXE [list]: how many live processes (not zombies) run EXE, by /proc/PID/exe;
 * with "list", their PIDs, one a line. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    char path[64], link[4096];
    long n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%s/exe", e->d_name);
        ssize_t len = readlink(path, link, sizeof link - 1);
        if (len < 0) continue;
        link[len] = 0;
        if (strcmp(link, argv[1]) != 0) continue;
        n++;
        if (argc > 2) printf("%s\n", e->d_name);
    }
    if (argc <= 2) printf("%ld\n", n);
    return 0;
}
EOF
gcc -O2 -o "$SLEEPER" "$WORK/sleeper.c"
gcc -O2 -o "$PCOUNT" "$WORK/pcount.c"

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== N=$N helpers, K=$K killed, IDLE=$IDLE s; supervisord $(supervisord --version), s6 $(dpkg-query -W -f '${Version}' s6 2>/dev/null || echo '?'), dms $("$DMS" --version | cut -d' ' -f2)"

# The part every side shares: waiting, killing, measuring. Sourced by each side script,
# inside its PID namespace.
cat >"$WORK/common.sh" <<EOF
SLEEPER=$SLEEPER PCOUNT=$PCOUNT N=$N K=$K IDLE=$IDLE LIMIT=$LIMIT
TCK=\$(getconf CLK_TCK)
now() { date +%s%N; }
secs() { awk -v a="\$1" -v b="\$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
# waits until \$1 sleepers run; 1 when LIMIT passes
wait_count() {
    local deadline=\$((\$(date +%s) + LIMIT))
    while [[ \$("\$PCOUNT" "\$SLEEPER") -lt \$1 ]]; do
        [[ \$(date +%s) -lt \$deadline ]] || return 1
        sleep 0.02
    done
}
# user + system CPU ticks of the PIDs given
ticks() {
    local t=0 p
    for p in "\$@"; do
        t=\$((t + \$(sed 's/.*) //' "/proc/\$p/stat" | awk '{ print \$12 + \$13 }')))
    done
    echo \$t
}
# RSS in KiB of the PIDs given
rss() {
    local t=0 p
    for p in "\$@"; do t=\$((t + \$(awk '/^VmRSS/ { print \$2 }' "/proc/\$p/status"))); done
    echo \$t
}
# PSS in KiB of the PIDs given (shared pages divided among their users: a sum of RSS
# counts the shared libraries of every s6-supervise again)
pss() {
    local t=0 p
    for p in "\$@"; do t=\$((t + \$(awk '/^Pss:/ { print \$2 }' "/proc/\$p/smaps_rollup"))); done
    echo \$t
}
# (b): SIGKILL K sleepers at once, wait until they are gone and N run again
kill_and_wait() {
    local victims
    mapfile -t victims < <("\$PCOUNT" "\$SLEEPER" list | head -n "\$K")
    local t0; t0=\$(now)
    kill -KILL "\${victims[@]}"
    local deadline=\$((\$(date +%s) + LIMIT)) p
    for p in "\${victims[@]}"; do
        while [[ -e /proc/\$p/exe ]] && [[ \$(readlink "/proc/\$p/exe" 2>/dev/null) == "\$SLEEPER" ]]; do
            [[ \$(date +%s) -lt \$deadline ]] || { echo "restart timeout"; return; }
            sleep 0.005
        done
    done
    if wait_count "\$N"; then secs "\$t0" "\$(now)"; else echo "timeout"; fi
}
# (d): CPU ticks of the PIDs (re-read by the function \$1) over IDLE seconds, in ms
idle_cpu() {
    local a b
    a=\$(ticks \$(\$1))
    sleep "\$IDLE"
    b=\$(ticks \$(\$1))
    awk -v d=\$((b - a)) -v tck="\$TCK" 'BEGIN { printf "%.0f", d * 1000 / tck }'
}
EOF

# --- dms serve ---------------------------------------------------------------------
cat >"$WORK/side-dms.sh" <<EOF
set -euo pipefail
. $WORK/common.sh
run=$WORK/run-dms
"$DMS" --run-dir "\$run" serve 2>"$WORK/dms-serve.log" &
daemon=\$!
s=\$run/dms.sock
until curl -sf --unix-socket "\$s" http://dms/v1/health >/dev/null; do sleep 0.01; done
# Restart policies: probe with one spawn (a daemon without supervision answers 400).
code=\$(curl -s -o "$WORK/probe.json" -w '%{http_code}' --unix-socket "\$s" -H 'Content-Type: application/json' \\
    -d '{"argv": ["$SLEEPER"], "restart": {"policy": "always", "initial_delay_secs": 0}}' \\
    http://dms/v1/targets/probe/spawn)
if [[ \$code == 201 ]]; then
    body='{"argv": ["$SLEEPER"], "restart": {"policy": "always", "initial_delay_secs": 0}}'
    curl -s -o /dev/null --unix-socket "\$s" -H 'Content-Type: application/json' -d '{"grace_secs": 1}' \\
        -X DELETE http://dms/v1/targets/probe
    supervised=1
else
    body='{"argv": ["$SLEEPER"]}'
    supervised=0
fi
t0=\$(now)
curl -s --no-progress-meter --parallel --parallel-max 32 --unix-socket "\$s" -H 'Content-Type: application/json' -d "\$body" \\
    -w '%{http_code}\n' -o /dev/null "http://dms/v1/targets/t[1-$N]/spawn" >"$WORK/dms-codes.txt"
if wait_count "$N"; then echo "a \$(secs "\$t0" "\$(now)")"; else echo "a timeout"; fi
ok=\$(grep -c '^201\$' "$WORK/dms-codes.txt" || true)
[[ \$ok -eq $N ]] || echo "note dms: \$ok of $N spawns answered 201 (see $WORK/dms-codes.txt)" >&2
if [[ \$supervised == 1 ]]; then
    echo "b \$(kill_and_wait)"
else
    echo "b skipped"
    echo "dms: needs restart policies (the daemon answered \$code to a spawn with restart policy always: \$(cat "$WORK/probe.json")); (b) skipped for dms" >&2
fi
echo "c \$(rss \$daemon)"
echo "p \$(pss \$daemon)"
# Not a comparison: what one GET /metrics costs with N helpers (5 scrapes, seconds each).
echo "scrape \$(for _ in 1 2 3 4 5; do curl -s -o /dev/null -w '%{time_total} ' --unix-socket "\$s" http://dms/metrics; done)"
echo "d \$(idle_cpu "echo \$daemon")"
kill -TERM \$daemon; wait \$daemon || true
EOF

# --- supervisord -------------------------------------------------------------------
{
    echo "[supervisord]"
    echo "nodaemon=true"
    echo "logfile=$WORK/supervisord.log"
    echo "pidfile=$WORK/supervisord.pid"
    echo "minfds=$(ulimit -Hn)"
    echo "minprocs=$((N * 2 + 200))"
    for i in $(seq 1 "$N"); do
        echo "[program:t$i]"
        echo "command=$SLEEPER"
        echo "autostart=true"
        echo "autorestart=true"
        echo "startsecs=0"
        echo "stdout_logfile=NONE"
        echo "stderr_logfile=NONE"
    done
} >"$WORK/supervisord.conf"
cat >"$WORK/side-supervisord.sh" <<EOF
set -euo pipefail
. $WORK/common.sh
t0=\$(now)
supervisord -c "$WORK/supervisord.conf" >"$WORK/supervisord.out" 2>&1 &
sup=\$!
if wait_count "$N"; then echo "a \$(secs "\$t0" "\$(now)")"; else echo "a timeout"; fi
echo "b \$(kill_and_wait)"
echo "c \$(rss \$sup)"
echo "p \$(pss \$sup)"
echo "d \$(idle_cpu "echo \$sup")"
kill -TERM \$sup; wait \$sup || true
EOF

# --- s6 ----------------------------------------------------------------------------
mkdir -p "$WORK/scan"
for i in $(seq 1 "$N"); do
    mkdir "$WORK/scan/t$i"
    ln -s "$SLEEPER" "$WORK/scan/t$i/run"
done
cat >"$WORK/side-s6.sh" <<EOF
set -euo pipefail
. $WORK/common.sh
s6_pids() { pgrep -x 's6-svscan|s6-supervise'; }
t0=\$(now)
s6-svscan -c $((N + 16)) "$WORK/scan" >"$WORK/s6.log" 2>&1 &
scan=\$!
if wait_count "$N"; then echo "a \$(secs "\$t0" "\$(now)")"; else echo "a timeout"; fi
echo "b \$(kill_and_wait)"
echo "c \$(rss \$(s6_pids))"
echo "p \$(pss \$(s6_pids))"
echo "d \$(idle_cpu s6_pids)"
echo "procs \$(s6_pids | wc -l)"
s6-svscanctl -t "$WORK/scan" || kill -TERM \$scan
wait \$scan || true
EOF

declare -A A B C P D
for side in $ONLY; do
    echo "== $side"
    out=$(unshare --pid --fork --mount-proc bash "$WORK/side-$side.sh")
    echo "$out" | sed 's/^/   /'
    A[$side]=$(awk '$1 == "a" { print $2 }' <<<"$out")
    B[$side]=$(awk '$1 == "b" { print $2 }' <<<"$out")
    C[$side]=$(awk '$1 == "c" { print $2 }' <<<"$out")
    P[$side]=$(awk '$1 == "p" { print $2 }' <<<"$out")
    D[$side]=$(awk '$1 == "d" { print $2 }' <<<"$out")
done

num() { [[ ${1:-} =~ ^[0-9.]+$ ]]; }
ratio() { if num "${1:-}" && num "${2:-}" && [[ $2 != 0 && $2 != 0.000 ]]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; else echo "n/a"; fi; }
mib() { if num "${1:-}"; then awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; else echo "${1:-n/a}"; fi; }
sec() { if num "${1:-}"; then echo "$1 s"; else echo "${1:-n/a}"; fi; }
msv() { if num "${1:-}"; then echo "$1 ms"; else echo "${1:-n/a}"; fi; }
row() { # label, fmt, array name, goal
    local -n arr=$3
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$($2 "${arr[dms]:-}")" \
        "$($2 "${arr[supervisord]:-}")" "$($2 "${arr[s6]:-}")" \
        "$(ratio "${arr[dms]:-}" "${arr[supervisord]:-}")" "$(ratio "${arr[dms]:-}" "${arr[s6]:-}")" "$4"
}
echo
echo "| measure ($(nproc) CPUs, N=$N) | dms | supervisord | s6 | dms/supervisord | dms/s6 | goal |"
echo "|---|---|---|---|---|---|---|"
row "(a) bring-up of $N helpers, until all run" sec A "≤ 0.2x supervisord, ≤ 1.0x s6"
row "(b) $K SIGKILLed at once, until all run again" sec B "≤ 0.2x supervisord, ≤ 1.0x s6"
row "(c) supervisor RSS with $N helpers" mib C "≤ 0.25x supervisord, ≤ 1.0x s6 (sum)"
row "(c') the same as PSS (shared pages divided)" mib P "(not a goal)"
row "(d) supervisor CPU over $IDLE idle s" msv D "≤ either"
