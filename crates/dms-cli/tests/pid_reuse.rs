//! PIDs reused soon after a PID file was written, and PIDs that are threads or dms itself,
//! run through the `dms` binary inside a fresh PID namespace.
//!
//! Each scenario places a process at a chosen PID (`/proc/sys/kernel/ns_last_pid` is
//! writable by root inside the namespace): the PID file is written first, and an
//! unrelated `sleep` takes its PID 0.2 s later, as a stranger takes the PID of a helper
//! that died at once. `status`, `kill`, `cleanup --all` and `cleanup` (the startup rule
//! that adopts helpers proven ours) must all call it `foreign` and leave it running, on
//! both backends. A file naming dms's own PID, one of dms's own threads, or a thread of
//! another process reads foreign too. Everything runs inside the namespace, so even a
//! wrong signal could reach only the namespace's own processes; the script reports
//! whether each victim survived. Where `unshare` is not permitted, the test says why and
//! is skipped.

use serde_json::Value;
use std::process::Command;

/// Runs inside the namespace (as PID 1 there). `$DMS`, `$RD` (run dir), `$B` (backend).
/// Prints `key<TAB>value` lines for the test to check.
const SCRIPT: &str = r#"
set -u
export PATH=/usr/bin:/bin
dms() { "$DMS" --run-dir "$RD" --backend "$B" "$@"; }
mkdir -p "$RD/s3"
# The next free PID, well clear of what the shell and dms use meanwhile.
fresh() { echo $(( $(cat /proc/sys/kernel/ns_last_pid) + 20 )); }
# Writes the bare PID file of $1 naming $2, then waits until 0.2 s of wall time have
# passed since the file's mtime (a condition, not a sleep), then places `sleep` at $2.
victim() {
    printf '%s' "$2" > "$RD/s3/$1.pid"
    m=$(date -r "$RD/s3/$1.pid" +%s%N)
    while [ $(( $(date +%s%N) - m )) -lt 200000000 ]; do :; done
    echo $(( $2 - 1 )) > /proc/sys/kernel/ns_last_pid
    sleep 1000 </dev/null >/dev/null 2>&1 &
    [ "$!" = "$2" ] || { echo "misplaced	$!"; exit 90; }
}
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status"; }
report() { if alive "$1"; then echo "$2-survived	yes"; else echo "$2-survived	no"; fi; kill -9 "$1" 2>/dev/null; wait "$1" 2>/dev/null; rm -f "$RD/s3/$2.pid"; }

p=$(fresh); victim status "$p"
echo "status	$(dms --json status status)"
echo "status-text	$(dms status status | tail -n 1)"; report "$p" status

p=$(fresh); victim kill "$p"
out=$(dms --json kill kill --grace 1); echo "kill-code	$?"; echo "kill	$out"; report "$p" kill

p=$(fresh); victim all "$p"
echo "cleanup-all	$(dms --json cleanup --all --grace 1)"; report "$p" all

p=$(fresh); victim recover "$p"
echo "cleanup	$(dms --json cleanup)"; report "$p" recover

# dms's own PID and its threads: dms is exec'd at $n, its threads take $n+1, $n+2, ...
n=$(fresh)
for k in 0 1 2 3; do printf '%s\n' $(( n + k )) > "$RD/s3/self$k.pid"; done
echo $(( n - 1 )) > /proc/sys/kernel/ns_last_pid
( exec "$DMS" --run-dir "$RD" --backend "$B" --json status ) > "$RD/self.json"
echo $(( n - 1 )) > /proc/sys/kernel/ns_last_pid
( exec "$DMS" --run-dir "$RD" --backend "$B" status ) > "$RD/self.txt"
echo "self-status	$(cat "$RD/self.json")"
echo "self-text	$(tr '\n' '|' < "$RD/self.txt")"
rm -f "$RD"/s3/self*.pid

# A thread of another process: its thread ID, written after the thread started (so the
# bare-file rule alone would call it ours).
python3 -c 'import threading, time, sys
t = threading.Thread(target=time.sleep, args=(1000,), daemon=True); t.start()
print(t.native_id, flush=True); time.sleep(1000)' > "$RD/tid" &
py=$!
while [ ! -s "$RD/tid" ]; do :; done
tid=$(cat "$RD/tid")
printf '%s\n' "$tid" > "$RD/s3/thread.pid"
echo "thread-tid	$tid"
echo "thread-status	$(dms --json status thread)"
echo "thread-text	$(dms status thread | tail -n 1)"
out=$(dms --json kill thread --grace 1); echo "thread-kill-code	$?"
echo "thread-adopt	$(dms --json adopt adopted "$tid" 2>&1)"
report "$py" thread
exit 0
"#;

fn pid_ns_available() -> Result<(), String> {
    match Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "unshare --pid --fork --mount-proc failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run unshare: {e}")),
    }
}

/// Runs [`SCRIPT`] in a fresh PID namespace and returns its `key -> value` lines.
fn run_in_namespace(backend: &str) -> Option<Vec<(String, String)>> {
    if let Err(why) = pid_ns_available() {
        eprintln!("skipped: {why}");
        return None;
    }
    if Command::new("python3").arg("-V").output().is_err() {
        eprintln!("skipped: python3 is needed for the thread scenario");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "bash", "-c", SCRIPT])
        .env("DMS", env!("CARGO_BIN_EXE_dms"))
        .env("RD", dir.path().join("run"))
        .env("B", backend)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "namespace script failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        stdout
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

fn get<'a>(lines: &'a [(String, String)], key: &str) -> &'a str {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no line {key:?} in {lines:?}"))
}

fn json(lines: &[(String, String)], key: &str) -> Value {
    serde_json::from_str(get(lines, key))
        .unwrap_or_else(|e| panic!("{key}: not JSON ({e}): {}", get(lines, key)))
}

fn check(backend: &str) {
    let Some(l) = run_in_namespace(backend) else {
        return;
    };
    // status: foreign, with the time after the file's write in the detail.
    let status = json(&l, "status");
    assert_eq!(status["state"], "foreign", "{status}");
    let text = get(&l, "status-text");
    assert!(
        text.contains("foreign") && text.contains("ms after its PID file was written"),
        "{text}"
    );
    assert_eq!(get(&l, "status-survived"), "yes");
    // kill: nothing signalled; the entry is not the helper, so nothing was running.
    let kill = json(&l, "kill");
    assert_eq!(kill["was_running"], false, "{kill}");
    assert_eq!(kill["signal"], Value::Null, "{kill}");
    assert_eq!(get(&l, "kill-code"), "3");
    assert_eq!(get(&l, "kill-survived"), "yes");
    // cleanup --all: the file is removed as foreign, nothing is stopped.
    for key in ["cleanup-all", "cleanup"] {
        let report = json(&l, key);
        assert_eq!(report["stopped"], serde_json::json!([]), "{key}: {report}");
        let removed = report["removed"].as_array().unwrap();
        assert_eq!(removed.len(), 1, "{key}: {report}");
        assert_eq!(removed[0]["reason"], "foreign", "{key}: {report}");
    }
    assert_eq!(get(&l, "all-survived"), "yes");
    assert_eq!(get(&l, "recover-survived"), "yes");
    // dms's own PID and threads: never running; the PID itself and at least one of its
    // threads (the store's reader thread exists while the listing runs) read foreign.
    let me = json(&l, "self-status");
    let rows = me.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{me}");
    for row in rows {
        assert_ne!(row["state"], "running", "{row}");
        assert_ne!(row["running"], true, "{row}");
    }
    assert_eq!(rows[0]["state"], "foreign", "{me}");
    let text = get(&l, "self-text");
    let lines: Vec<&str> = text.split('|').collect();
    assert!(
        lines
            .iter()
            .any(|r| r.starts_with("self0 ") && r.contains("is dms itself")),
        "{text}"
    );
    assert!(
        lines.iter().any(|r| !r.starts_with("self0 ")
            && r.contains("foreign")
            && r.contains("is a thread of dms itself")),
        "no thread of dms read as such: {text}"
    );
    // Another process's thread: foreign, never signalled, never adopted.
    let tid = get(&l, "thread-tid");
    let thread = json(&l, "thread-status");
    assert_eq!(thread["state"], "foreign", "{thread}");
    let text = get(&l, "thread-text");
    assert!(text.contains("is a thread of process"), "{text}");
    assert_eq!(get(&l, "thread-kill-code"), "3");
    let adopt = get(&l, "thread-adopt");
    assert!(
        adopt.contains(&format!("cannot adopt PID {tid}")) && adopt.contains("thread"),
        "{adopt}"
    );
    assert_eq!(get(&l, "thread-survived"), "yes");
}

#[test]
fn reused_pids_threads_and_dms_itself_read_foreign_pidfile() {
    check("pidfile");
}

#[test]
fn reused_pids_threads_and_dms_itself_read_foreign_sqlite() {
    check("sqlite");
}
