//! `floor_scan PID_DIR [--clear LOCKS_DIR]`: the floor of a status scan as a whole
//! process, for hyperfine next to `dms status` (see `benches/compare.sh`).
//!
//! Does only what [`dms_benches::floor::floor_scan`] does (readdir; open, read, close
//! each `*.pid`; `kill(pid, 0)`; `/proc/PID/stat` of the live ones) and prints one line
//! of counts. With `--clear LOCKS_DIR` it also clears the dead entries the way the
//! startup rule must ([`dms_benches::floor::floor_scan_and_clear`]).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, clear) = match args.as_slice() {
        [dir] => (PathBuf::from(dir), None),
        [dir, flag, locks] if flag == "--clear" => (PathBuf::from(dir), Some(PathBuf::from(locks))),
        _ => {
            eprintln!("usage: floor_scan PID_DIR [--clear LOCKS_DIR]");
            return ExitCode::from(2);
        }
    };
    let counts = match &clear {
        None => dms_benches::floor::floor_scan(&dir),
        Some(locks) => dms_benches::floor::floor_scan_and_clear(&dir, locks),
    };
    match counts {
        Ok(c) => {
            println!(
                "files {} alive {} dead {} corrupt {} cleared {}",
                c.files, c.alive, c.dead, c.corrupt, c.cleared
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("floor_scan: error: {}: {e}", dir.display());
            ExitCode::from(1)
        }
    }
}
