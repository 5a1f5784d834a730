//! The event log of the daemon: every manager event numbered (`seq`) and stamped
//! (`time`), the last [`KEPT_EVENTS`] kept for replay (`GET /v1/events?since=SEQ`), and
//! each one sent live to every open stream.

use dms_core::Event;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::broadcast;

/// How many events are kept for replay.
pub const KEPT_EVENTS: usize = 1000;

/// One numbered event, as the NDJSON line sent (with its final newline).
#[derive(Debug, Clone)]
pub struct Line {
    /// Its sequence number, from 1.
    pub seq: u64,
    /// The JSON object and `\n`.
    pub text: Arc<str>,
}

#[derive(Debug)]
struct Inner {
    last_seq: u64,
    kept: VecDeque<Line>,
    /// How many events of each kind were recorded since the daemon started (the
    /// `dms_events_total{kind}` counter); kinds are the fixed names of serve.md.
    counts: BTreeMap<String, u64>,
}

/// The numbered, kept and broadcast events of one daemon.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Line>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new()
    }
}

/// The current time as RFC 3339 (UTC, milliseconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The name of signal number `n` (`SIGTERM`), or its number when it has none.
pub fn signal_name(n: i32) -> String {
    nix::sys::signal::Signal::try_from(n)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| n.to_string())
}

/// The kind and fields of a manager event, without `seq` and `time`; `None` for kinds
/// this version does not know.
pub fn describe(event: &Event) -> Option<(&'static str, Map<String, Value>)> {
    let mut fields = Map::new();
    let kind = match event {
        Event::Spawned { .. } => "spawned",
        Event::Exited { status, .. } => {
            let (code, signal) = match status {
                dms_proc::ExitStatus::Code(c) => (json!(c), Value::Null),
                dms_proc::ExitStatus::Signaled(s) => (Value::Null, json!(signal_name(*s))),
                dms_proc::ExitStatus::Unknown => (Value::Null, Value::Null),
            };
            fields.insert("code".into(), code);
            fields.insert("signal".into(), signal);
            "exited"
        }
        Event::Killed { .. } => "killed",
        Event::Adopted { .. } => "adopted",
        Event::Untracked { .. } => "untracked",
        Event::Cleaned { reason, .. } => {
            fields.insert(
                "reason".into(),
                serde_json::to_value(reason).unwrap_or(Value::Null),
            );
            "cleaned"
        }
        _ => return None,
    };
    Some((kind, fields))
}

impl EventLog {
    /// An empty log.
    pub fn new() -> EventLog {
        EventLog {
            inner: Mutex::new(Inner {
                last_seq: 0,
                kept: VecDeque::with_capacity(KEPT_EVENTS),
                counts: BTreeMap::new(),
            }),
            // A stream that falls this far behind is ended; its client resumes with
            // `since`.
            live: broadcast::channel(KEPT_EVENTS).0,
        }
    }

    /// Records a manager event.
    pub fn push_event(&self, event: &Event) {
        if let Some((kind, fields)) = describe(event) {
            let target = serde_json::to_value(event.target()).unwrap_or(Value::Null);
            let pid = event.pid().map_or(Value::Null, |p| json!(p.get()));
            self.push(kind, target, pid, fields);
        }
    }

    /// Records an event of `kind` about `target` and `pid` with extra `fields`, numbered
    /// and stamped now; returns its `seq`.
    pub fn push(&self, kind: &str, target: Value, pid: Value, fields: Map<String, Value>) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.last_seq += 1;
        let seq = inner.last_seq;
        match inner.counts.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                inner.counts.insert(kind.to_owned(), 1);
            }
        }
        let text = line_text(seq, kind, target, pid, fields);
        let line = Line { seq, text };
        if inner.kept.len() == KEPT_EVENTS {
            inner.kept.pop_front();
        }
        inner.kept.push_back(line.clone());
        // Sent under the lock, so a stream that subscribes between two events sees
        // every event exactly once (replayed or live).
        let _ = self.live.send(line);
        seq
    }

    /// The kept events after `since`, the receiver of the later ones, and the last
    /// `seq` so far.
    pub fn subscribe(&self, since: u64) -> (Vec<Line>, broadcast::Receiver<Line>, u64) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.live.subscribe();
        let replay = inner
            .kept
            .iter()
            .filter(|l| l.seq > since)
            .cloned()
            .collect();
        (replay, rx, inner.last_seq)
    }

    /// How many events of each kind were recorded so far, sorted by kind (kinds never
    /// recorded are absent).
    pub fn counts(&self) -> Vec<(String, u64)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.counts.iter().map(|(k, n)| (k.clone(), *n)).collect()
    }

    /// The last `seq` so far (0 before the first event).
    pub fn last_seq(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_seq
    }
}

/// The NDJSON line of one event.
pub fn line_text(
    seq: u64,
    kind: &str,
    target: Value,
    pid: Value,
    fields: Map<String, Value>,
) -> Arc<str> {
    let mut obj = Map::new();
    obj.insert("seq".into(), json!(seq));
    obj.insert("time".into(), json!(now_rfc3339()));
    obj.insert("kind".into(), json!(kind));
    obj.insert("target".into(), target);
    obj.insert("pid".into(), pid);
    obj.extend(fields);
    let mut text = Value::Object(obj).to_string();
    text.push('\n');
    text.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_thousand_and_replays_after_since() {
        let log = EventLog::new();
        for _ in 0..1500 {
            log.push("heartbeat", Value::Null, Value::Null, Map::new());
        }
        let (replay, _rx, last) = log.subscribe(0);
        assert_eq!(last, 1500);
        assert_eq!(replay.len(), KEPT_EVENTS);
        assert_eq!(replay[0].seq, 501);
        let (replay, mut rx, _) = log.subscribe(1490);
        assert_eq!(
            replay.iter().map(|l| l.seq).collect::<Vec<_>>(),
            (1491..=1500).collect::<Vec<_>>()
        );
        log.push("killed", json!("t"), json!(42), Map::new());
        let live = rx.try_recv().unwrap();
        assert_eq!(live.seq, 1501);
        let v: Value = serde_json::from_str(&live.text).unwrap();
        assert_eq!(v["kind"], "killed");
        assert_eq!(v["target"], "t");
        assert_eq!(v["pid"], 42);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            log.counts(),
            vec![("heartbeat".to_owned(), 1500), ("killed".to_owned(), 1)]
        );
    }
}
