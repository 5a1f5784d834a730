//! The series that describe the helpers, taken at each scrape from the info documents of
//! `GET /v1/targets` (so they agree with it, and a removed target's series go with it).

use crate::error::ApiError;
use crate::handlers::info_doc;
use crate::Daemon;
use dms_core::{MountState, ProcessInfo, ProcessState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

/// The states of `dms_helpers{state}`: every state a listed entry can have (`absent` is
/// never listed), each reported, at 0 too, so a query need not guess which exist.
const HELPER_STATES: [(ProcessState, &str); 5] = [
    (ProcessState::Running, "running"),
    (ProcessState::Stale, "stale"),
    (ProcessState::Foreign, "foreign"),
    (ProcessState::Corrupt, "corrupt"),
    (ProcessState::Unverified, "unverified"),
];

/// The states of `dms_mounts{state}`, each reported, at 0 too.
const MOUNT_STATES: [(MountState, &str); 3] = [
    (MountState::Mounted, "mounted"),
    (MountState::Stale, "stale"),
    (MountState::Unmounted, "unmounted"),
];

/// One target's series.
#[derive(Debug)]
struct Row {
    target: String,
    up: bool,
    restarts: u64,
    start_time: Option<f64>,
    cpu_seconds: Option<f64>,
    rss_bytes: Option<u64>,
}

/// The helpers as one scrape sees them; a [`Collector`] of a registry made for that
/// scrape.
#[derive(Debug, Default)]
pub struct Snapshot {
    helpers: [u64; HELPER_STATES.len()],
    mounts: [u64; MOUNT_STATES.len()],
    rows: Vec<Row>,
    events: Vec<(String, u64)>,
}

/// `supervision.restarts` of an info document; 0 when the helper is not supervised
/// (`supervision` null) or the field is missing.
fn restarts_of(doc: &Value) -> u64 {
    doc.get("supervision")
        .and_then(|s| s.get("restarts"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

impl Snapshot {
    /// Lists every target (as `GET /v1/targets` does), and reads the CPU time of each
    /// running helper the daemon holds in memory (through its exact identity: a PID that
    /// was reused since is not read).
    pub async fn take(d: &Daemon) -> Result<Snapshot, ApiError> {
        // The listing shows the mounts of listed targets; the stats count every recorded
        // mount that is stale, also one whose helper is gone and no longer listed (a
        // SIGKILLed FUSE helper's mount, as `dms stats` and `cleanup --mounts` see it).
        // Both probe the mounts (2 s at most for hung ones): run together.
        let (infos, stats) = tokio::join!(d.manager.list(), d.manager.stats());
        let mut infos = infos?;
        let stale_mounts = stats?.stale_mounts.unwrap_or(0) as u64;
        infos.sort_by(|a, b| a.target.cmp(&b.target));
        let held: HashMap<_, _> = d.manager.memory_snapshot().into_iter().collect();
        let spawner = d.manager.spawner();
        let mut snap = Snapshot {
            events: d.events.counts(),
            ..Snapshot::default()
        };
        for info in &infos {
            let doc = info_doc(d, info)?;
            snap.count(info);
            let mut cpu_seconds = None;
            if info.running {
                if let Some(id) = held.get(&info.target).filter(|id| Some(id.pid) == info.pid) {
                    match spawner.usage(id, Duration::ZERO).await {
                        Ok(Some(u)) => cpu_seconds = Some(u.cpu_seconds),
                        Ok(None) => {}
                        Err(e) => tracing::debug!(target = %info.target, error = %e, "no CPU time"),
                    }
                }
            }
            snap.rows.push(Row {
                target: info.target.to_string(),
                up: info.running,
                restarts: restarts_of(&doc),
                start_time: info
                    .started_at
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64()),
                cpu_seconds,
                rss_bytes: info.rss_bytes,
            });
        }
        let stale = MOUNT_STATES
            .iter()
            .position(|(s, _)| *s == MountState::Stale)
            .unwrap_or(0);
        snap.mounts[stale] = snap.mounts[stale].max(stale_mounts);
        Ok(snap)
    }

    fn count(&mut self, info: &ProcessInfo) {
        if let Some(i) = HELPER_STATES.iter().position(|(s, _)| *s == info.state) {
            self.helpers[i] += 1;
        }
        if let Some(m) = info.mount_state {
            if let Some(i) = MOUNT_STATES.iter().position(|(s, _)| *s == m) {
                self.mounts[i] += 1;
            }
        }
    }
}

/// Writes one family: its descriptor, then one sample per `(label value, value)`.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    ty: MetricType,
    samples: impl IntoIterator<Item = (String, M)>,
) -> Result<(), std::fmt::Error> {
    // As the registry does for its own metrics: help ends with a full stop.
    let help = format!("{help}.");
    let mut metric = enc.encode_descriptor(name, &help, None, ty)?;
    for (value, m) in samples {
        let labels = [(label, value.as_str())];
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = MetricType::Gauge;
        let c = MetricType::Counter;
        family(
            &mut enc,
            "dms_helpers",
            "Targets listed, by state (running, stale, foreign, corrupt, unverified)",
            "state",
            g,
            HELPER_STATES
                .iter()
                .zip(self.helpers)
                .map(|((_, name), n)| ((*name).to_owned(), ConstGauge::new(n as i64))),
        )?;
        family(
            &mut enc,
            "dms_mounts",
            "Recorded mounts, by state (mounted; stale: its FUSE daemon is gone or does not answer, its helper listed or not; unmounted)",
            "state",
            g,
            MOUNT_STATES
                .iter()
                .zip(self.mounts)
                .map(|((_, name), n)| ((*name).to_owned(), ConstGauge::new(n as i64))),
        )?;
        let rows = &self.rows;
        let each = |f: fn(&Row) -> Option<f64>| {
            rows.iter()
                .filter_map(move |r| f(r).map(|v| (r.target.clone(), v)))
        };
        family(
            &mut enc,
            "dms_helper_up",
            "1 when the target's helper runs (alive and proven ours), else 0",
            "target",
            g,
            each(|r| Some(if r.up { 1.0 } else { 0.0 })).map(|(t, v)| (t, ConstGauge::new(v))),
        )?;
        family(
            &mut enc,
            "dms_helper_restarts",
            "Restarts of the target's helper by its restart policy (0 when not supervised)",
            "target",
            c,
            each(|r| Some(r.restarts as f64)).map(|(t, v)| (t, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "dms_helper_start_time_seconds",
            "When the target's running helper started, in seconds since the Unix epoch",
            "target",
            g,
            each(|r| r.start_time).map(|(t, v)| (t, ConstGauge::new(v))),
        )?;
        family(
            &mut enc,
            "dms_helper_cpu_seconds",
            "User and system CPU time of the target's running helper, in seconds",
            "target",
            c,
            each(|r| r.cpu_seconds).map(|(t, v)| (t, ConstCounter::new(v))),
        )?;
        family(
            &mut enc,
            "dms_helper_resident_memory_bytes",
            "Resident memory of the target's running helper, in bytes",
            "target",
            g,
            each(|r| r.rss_bytes.map(|b| b as f64)).map(|(t, v)| (t, ConstGauge::new(v))),
        )?;
        family(
            &mut enc,
            "dms_events",
            "Events recorded since the daemon started, by kind",
            "kind",
            c,
            self.events
                .iter()
                .map(|(k, n)| (k.clone(), ConstCounter::new(*n))),
        )?;
        Ok(())
    }
}
