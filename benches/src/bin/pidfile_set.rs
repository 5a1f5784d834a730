//! `pidfile_set PID_DIR N ALIVE_PIDS_FILE`: writes N bare PID files
//! `PID_DIR/target-00000.pid` ... as another tool would (`PID\n`). Every 20th names one
//! of the live PIDs listed (whitespace-separated) in ALIVE_PIDS_FILE, the others a PID
//! that no process holds (see [`dms_benches::fixture::dead_pids`]). Used by
//! `benches/compare.sh`, whose shell starts the live helpers.

use dms_store::Pid;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, n, alive_file] = args.as_slice() else {
        eprintln!("usage: pidfile_set PID_DIR N ALIVE_PIDS_FILE");
        return ExitCode::from(2);
    };
    let Ok(n) = n.parse::<usize>() else {
        eprintln!("pidfile_set: error: N must be a number, got {n:?}");
        return ExitCode::from(2);
    };
    let alive: Result<Vec<Pid>, String> = match std::fs::read_to_string(alive_file) {
        Ok(s) => s
            .split_whitespace()
            .map(|w| Pid::parse(w.as_bytes()).map_err(|e| format!("{w:?}: {e}")))
            .collect(),
        Err(e) => Err(format!("cannot read {alive_file}: {e}")),
    };
    let result = alive.and_then(|alive| {
        let plan = dms_benches::fixture::plan_with(n, &alive).map_err(|e| e.to_string())?;
        dms_benches::fixture::write_bare(&PathBuf::from(dir), &plan).map_err(|e| e.to_string())?;
        Ok(plan.iter().filter(|p| p.alive).count())
    });
    match result {
        Ok(alive) => {
            println!("wrote {n} PID files in {dir}, {alive} naming live helpers");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pidfile_set: error: {e}");
            ExitCode::from(1)
        }
    }
}
