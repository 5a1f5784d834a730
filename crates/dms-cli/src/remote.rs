//! The commands answered by `dms serve` (serve.md "The CLI with a daemon"): each is one
//! request, and its answer is printed by the same renderers as the one-shot path
//! (`output.rs`), with the same exit codes.
//!
//! What differs, by nature: the documents come from the daemon's memory (`source`
//! `memory` or `both`, usage sampled over an interval, the `supervision` object), and a
//! helper started through the daemon gets the daemon's environment plus the `--env-file`
//! files (read by the daemon, at every start) and the `--env` items (sent inline, kept in
//! the daemon's memory only), not this process's environment: as `systemctl start` gives
//! a service the manager's environment, not the caller's.

use crate::cli::{AdoptArgs, CleanupArgs, EventsArgs, KillArgs, RestartArgs, StatusArgs};
use crate::client::Client;
use crate::output;
use crate::run::{detail_of, kill_exit, status_exit, stdout_error, CliError, Out, PreparedSpawn};
use dms_core::{CleanupReport, KillReport, ProcessInfo, Stats};
use dms_server::supervise::ReloadReport;
use hyper::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use std::io::Write;

/// The typed reading of a document of `dms serve` (`what` names it in the error).
fn typed<T: DeserializeOwned>(doc: &Value, what: &str) -> Result<T, CliError> {
    T::deserialize(doc).map_err(|e| {
        CliError::Failed(format!(
            "dms serve answered with {what} this dms cannot read ({e}); is the daemon the \
             same version as this dms?"
        ))
    })
}

/// An info object of `dms serve`, with the daemon's `detail` (words for the human
/// table, which the one-shot path's documents do not hold).
fn info_of(doc: &Value) -> Result<ProcessInfo, CliError> {
    let mut info: ProcessInfo = typed(doc, "an info object")?;
    info.detail = doc.get("detail").and_then(Value::as_str).map(str::to_owned);
    Ok(info)
}

/// The API path of `target` (and `action`). A target ID's alphabet,
/// [`dms_store::TARGET_ID_RULE`], is all unreserved URL characters: it needs no encoding.
fn target_path(target: &dms_store::TargetId, action: &str) -> String {
    match action {
        "" => format!("/v1/targets/{}", target.as_str()),
        a => format!("/v1/targets/{}/{a}", target.as_str()),
    }
}

/// A path or argument as the API's UTF-8 text, or a usage error that says how to go on.
fn utf8(what: &str, s: &std::ffi::OsStr) -> Result<String, CliError> {
    s.to_str().map(str::to_owned).ok_or_else(|| {
        CliError::Usage(format!(
            "{what} {:?} is not UTF-8, which the API of dms serve cannot carry; pass it with \
             --direct",
            s.to_string_lossy()
        ))
    })
}

/// A `PATH` given with `--env` with its relative entries made absolute against this
/// process's directory: the one-shot path looks a bare program name up from here, and
/// the daemon, which runs elsewhere, must find the same program.
fn absolute_path_list(path: &str) -> Result<String, CliError> {
    let here = std::env::current_dir().map_err(|e| {
        CliError::Usage(format!(
            "--env PATH has relative entries, and the current directory cannot be read to              resolve them ({e}); use absolute entries"
        ))
    })?;
    let entries: Vec<String> = path
        .split(':')
        .map(|e| {
            if e.starts_with('/') {
                e.to_owned()
            } else {
                here.join(e).display().to_string()
            }
        })
        .collect();
    Ok(entries.join(":"))
}

/// The spawn request of serve.md for a prepared `dms spawn`.
fn spawn_request(p: &PreparedSpawn) -> Result<Value, CliError> {
    let mut argv = vec![utf8("PROGRAM", &p.spec.program)?];
    for a in &p.spec.args {
        argv.push(utf8("argument", a)?);
    }
    let mut env = Map::new();
    for (k, v) in &p.inline_env {
        let mut v = utf8("--env value of", v)?;
        if k == "PATH" {
            v = absolute_path_list(&v)?;
        }
        env.insert(utf8("--env key", k)?, Value::String(v));
    }
    let files = p
        .env_files
        .iter()
        .map(|f| utf8("--env-file", f.as_os_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut req =
        json!({"argv": argv, "env": env, "env_files": files, "replace": p.spec.replace.is_some()});
    let o = req.as_object_mut().expect("an object");
    if let Some(m) = &p.spec.mount {
        o.insert("mount".into(), json!(utf8("--mount", m.as_os_str())?));
        if let Some(t) = p.spec.ready_timeout {
            o.insert("ready_timeout_secs".into(), json!(t.as_secs_f64()));
        }
    }
    if let Some(l) = &p.spec.log {
        o.insert("log".into(), json!(utf8("--log", l.as_os_str())?));
    }
    if let Some(g) = p.spec.replace {
        o.insert("grace_secs".into(), json!(g.as_secs_f64()));
    }
    if let Some(policy) = p.restart {
        o.insert("restart".into(), json!({"policy": policy.name()}));
    }
    Ok(req)
}

/// `spawn` through the daemon.
pub async fn spawn(c: &mut Client, p: PreparedSpawn, out: &Out) -> Result<u8, CliError> {
    let req = spawn_request(&p)?;
    let target = p.args.target.clone();
    let info = match c
        .json(Method::POST, &target_path(&target, "spawn"), Some(&req))
        .await
    {
        Ok(v) => v,
        // A refusal because a helper runs: worded as the one-shot path words it, with the
        // running helper's PID.
        Err(CliError::Conflict(m)) if p.spec.replace.is_none() => {
            let now = c.json(Method::GET, &target_path(&target, ""), None).await;
            let running = now
                .ok()
                .and_then(|v| info_of(&v).ok())
                .filter(|i| i.running);
            return Err(match running.and_then(|i| i.pid) {
                Some(pid) => CliError::Failed(format!(
                    "target {target} is already running (PID {pid}); stop it first with \
                     `dms kill {target}`, or start the new helper with `dms spawn {target} \
                     --replace`"
                )),
                None => CliError::Conflict(m),
            });
        }
        Err(e) => return Err(e),
    };
    let log = p.log_shown.display().to_string();
    let typed_info = info_of(&info)?;
    out.print_doc(&info, &typed_info, |i| output::spawn_line(i, &log))?;
    Ok(0)
}

/// `kill` through the daemon.
pub async fn kill(c: &mut Client, a: KillArgs, out: &Out) -> Result<u8, CliError> {
    let body = json!({"grace_secs": a.grace.as_secs_f64()});
    let v = c
        .json(Method::POST, &target_path(&a.target, "kill"), Some(&body))
        .await?;
    let report: KillReport = typed(&v, "a kill report")?;
    out.print_doc(&v, &report, output::kill_line)?;
    Ok(kill_exit(&report))
}

/// `restart` through the daemon: its info object, printed as `spawn` prints one.
pub async fn restart(c: &mut Client, a: RestartArgs, out: &Out) -> Result<u8, CliError> {
    let body = json!({"grace_secs": a.grace.as_secs_f64()});
    let info = c
        .json(
            Method::POST,
            &target_path(&a.target, "restart"),
            Some(&body),
        )
        .await?;
    let typed_info = info_of(&info)?;
    out.print_doc(&info, &typed_info, |i| {
        format!(
            "restarted {}: PID {}",
            i.target,
            i.pid.map_or_else(|| "-".to_owned(), |p| p.to_string())
        )
    })?;
    Ok(0)
}

/// An info document as `--json` prints it: without the daemon's `detail` (words for the
/// human table; the one-shot path's documents do not hold it either).
fn without_detail(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("detail");
    }
    v
}

/// `status` through the daemon.
pub async fn status(c: &mut Client, a: StatusArgs, out: &Out) -> Result<u8, CliError> {
    if let Some(target) = &a.target {
        let v = c.json(Method::GET, &target_path(target, ""), None).await?;
        let info = info_of(&v)?;
        let detail = detail_of(&info);
        out.print_doc(&without_detail(v), &info, |i| {
            output::status_table(std::slice::from_ref(i), &[detail])
        })?;
        return Ok(status_exit(&info));
    }
    let v = c.json(Method::GET, "/v1/targets", None).await?;
    let Value::Array(infos) = v else {
        return Err(CliError::Failed(
            "dms serve answered /v1/targets with something that is not an array; is the \
             daemon the same version as this dms?"
                .into(),
        ));
    };
    if out.json {
        let infos: Vec<Value> = infos.into_iter().map(without_detail).collect();
        out.write(Value::Array(infos).to_string())?;
    } else if infos.is_empty() {
        out.write("no helpers tracked".into())?;
    } else {
        let infos = infos.iter().map(info_of).collect::<Result<Vec<_>, _>>()?;
        let details: Vec<Option<String>> = infos.iter().map(detail_of).collect();
        out.write(output::escape_lines(output::status_table(&infos, &details)))?;
    }
    Ok(0)
}

/// `stats` through the daemon.
pub async fn stats(c: &mut Client, out: &Out) -> Result<u8, CliError> {
    let v = c.json(Method::GET, "/v1/stats", None).await?;
    let stats: Stats = typed(&v, "statistics")?;
    out.print_doc(&v, &stats, output::stats_line)?;
    Ok(0)
}

/// `cleanup` through the daemon.
pub async fn cleanup(c: &mut Client, a: CleanupArgs, out: &Out) -> Result<u8, CliError> {
    let body = json!({"all": a.all, "grace_secs": a.grace.as_secs_f64(), "mounts": a.mounts});
    let v = c.json(Method::POST, "/v1/cleanup", Some(&body)).await?;
    let report: CleanupReport = typed(&v, "a cleanup report")?;
    out.print_doc(&v, &report, output::cleanup_line)?;
    Ok(0)
}

/// `adopt` through the daemon.
pub async fn adopt(c: &mut Client, a: AdoptArgs, out: &Out) -> Result<u8, CliError> {
    let body = json!({"pid": a.pid.get()});
    let v = c
        .json(Method::POST, &target_path(&a.target, "adopt"), Some(&body))
        .await?;
    let info = info_of(&v)?;
    out.print_doc(&v, &info, output::adopt_line)?;
    Ok(0)
}

/// `reload` through the daemon.
pub async fn reload(c: &mut Client, out: &Out) -> Result<u8, CliError> {
    let v = c.json(Method::POST, "/v1/reload", None).await?;
    let report: ReloadReport = typed(&v, "a reload report")?;
    out.print_doc(&v, &report, reload_line)?;
    Ok(0)
}

/// `events`: follows the daemon's stream until it ends (the daemon stopped) or stdout
/// closes. `--json` prints each event as the daemon sent it; text is one line each.
pub async fn events(c: &mut Client, a: EventsArgs, out: &Out) -> Result<u8, CliError> {
    let path = match a.since {
        Some(seq) => format!("/v1/events?since={seq}"),
        None => "/v1/events".to_owned(),
    };
    let mut failure = None;
    let json = out.json;
    c.follow(&path, |line| {
        let text = if json {
            String::from_utf8_lossy(line).into_owned()
        } else {
            match serde_json::from_slice::<Value>(line) {
                Ok(v) => output::escape_lines(event_line(&v)),
                Err(_) => output::escape_lines(String::from_utf8_lossy(line).into_owned()),
            }
        };
        let mut stdout = std::io::stdout().lock();
        match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })
    .await?;
    // A closed pipe (`dms events | head -3`) ends the command without an error.
    failure.map_or(Ok(()), Err).or_else(stdout_error)?;
    Ok(0)
}

/// The one line of `reload`: `reloaded: started a, b; stopped c; restarted -; 3 unchanged`,
/// then one line per bad file.
fn reload_line(r: &ReloadReport) -> String {
    let names = |list: &[dms_store::TargetId]| {
        if list.is_empty() {
            "-".to_owned()
        } else {
            list.iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut text = format!(
        "reloaded: started {}; stopped {}; restarted {}; {} unchanged",
        names(&r.started),
        names(&r.stopped),
        names(&r.restarted),
        r.unchanged
    );
    for e in &r.errors {
        let line = e.line.map_or_else(String::new, |l| format!(":{l}"));
        text.push_str(&format!(
            "\nskipped {}{line}: {}",
            e.file.display(),
            e.message
        ));
    }
    text
}

/// One event as a line of text: `TIME #SEQ KIND TARGET PID N key=value...`. Every key
/// of the event is shown, so this reads the document by key (the keys differ per kind
/// and grow with the daemon) rather than as a type.
fn event_line(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let mut line = format!(
        "{} #{} {} {}",
        s("time"),
        v.get("seq").and_then(Value::as_u64).unwrap_or(0),
        s("kind"),
        s("target")
    );
    if let Some(pid) = v.get("pid").and_then(Value::as_u64) {
        line.push_str(&format!(" PID {pid}"));
    }
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            if matches!(k.as_str(), "seq" | "time" | "kind" | "target" | "pid") || x.is_null() {
                continue;
            }
            match x {
                Value::String(t) => line.push_str(&format!(" {k}={t}")),
                other => line.push_str(&format!(" {k}={other}")),
            }
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_one_line_each() {
        let v = json!({"seq": 7, "time": "2026-12-03T06:00:00Z", "kind": "exited",
                       "target": "t1", "pid": 42, "code": 1, "signal": null});
        assert_eq!(
            event_line(&v),
            "2026-12-03T06:00:00Z #7 exited t1 PID 42 code=1"
        );
        let hb = json!({"seq": 8, "time": "2026-12-03T06:00:15Z", "kind": "heartbeat",
                        "target": null, "pid": null});
        assert_eq!(event_line(&hb), "2026-12-03T06:00:15Z #8 heartbeat -");
    }

    #[test]
    fn reload_names_what_changed_and_each_bad_file() {
        let v = json!({"started": ["a", "b"], "stopped": [], "restarted": ["c"],
                       "unchanged": 3, "errors": [{"file": "/d/x.toml", "line": 2,
                       "message": "expected `=`"}]});
        let report: ReloadReport = typed(&v, "a reload report").unwrap();
        assert_eq!(
            reload_line(&report),
            "reloaded: started a, b; stopped -; restarted c; 3 unchanged\n\
             skipped /d/x.toml:2: expected `=`"
        );
    }
}
