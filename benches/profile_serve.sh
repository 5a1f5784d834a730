#!/usr/bin/env bash
# Profiles of dms serve behind the peers.sh misses (benches/PERFORMANCE.md): the bring-up
# of N supervised helpers (system-wide perf, by command and symbol), the daemon's
# memory then (smaps_rollup, threads), and its CPU ticks 0-60 s and 60-100 s after the
# last request. Root (unshare --pid), perf, gcc, curl. Usage: N=1000 benches/profile_serve.sh
set -euo pipefail
N=${N:-1000}
cd "$(dirname "$0")/.."
DMS=${DMS:-$PWD/target/release/dms}
[[ -x $DMS ]] || { echo "profile_serve.sh: build it first: cargo build --release -p dms-cli" >&2; exit 1; }
command -v perf >/dev/null || { echo "profile_serve.sh: needs perf (Debian package linux-perf)" >&2; exit 1; }
W=$(mktemp -d /dev/shm/dms-prof.XXXXXX)
gcc -O2 -o $W/sleeper -x c - <<'C'
#include <unistd.h>
int main(void) { for (;;) pause(); }
C
cat > $W/side.sh <<S
set -euo pipefail
run=$W/run
$DMS --run-dir \$run serve 2>$W/serve.log &
d=\$!
until curl -sf --unix-socket \$run/dms.sock http://dms/v1/health >/dev/null; do sleep 0.01; done
body='{"argv": ["$W/sleeper"], "restart": {"policy": "always", "initial_delay_secs": 0}}'
perf record -q -a -g -F 499 -o $W/bringup.data -- \
  curl -s --no-progress-meter --parallel --parallel-max 32 --unix-socket \$run/dms.sock -H 'Content-Type: application/json' -d "\$body" -w '%{http_code}\n' -o /dev/null "http://dms/v1/targets/t[1-$N]/spawn" > $W/codes.txt
echo "201s: \$(grep -c '^201' $W/codes.txt)"
grep -E '^(Rss|Pss_Anon|Pss_File)' /proc/\$d/smaps_rollup
grep -E '^(RssAnon|RssFile|Threads)' /proc/\$d/status
tk() { sed 's/.*) //' /proc/\$d/stat | awk '{ print \$12 + \$13 }'; }
a=\$(tk); sleep 60; b=\$(tk)
echo "idle 0-60 s after the last request: \$(( (b - a) * 10 )) ms"
perf record -q -g -F 999 -p \$d -o $W/idle.data -- sleep 40 >/dev/null 2>&1 || true
c=\$(tk)
echo "idle 60-100 s: \$(( (c - b) * 10 )) ms"
kill -TERM \$d; wait \$d || true
S
unshare --pid --fork --mount-proc bash $W/side.sh
echo "== bring-up, by command"
perf report -i $W/bringup.data --no-children --sort comm --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
echo "== bring-up, by command and symbol"
perf report -i $W/bringup.data --no-children --sort comm,sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
echo "== idle, by symbol"
perf report -i $W/idle.data --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -20
rm -rf "$W"
