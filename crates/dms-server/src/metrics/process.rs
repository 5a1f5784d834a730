//! The daemon's own `process_*` series, the standard names of the Prometheus client
//! libraries. `prometheus-client` (the Rust client) has no process collector, so this
//! small [`Collector`] reads them from `/proc/self` at each scrape, as the Go client's
//! process collector does.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Reads `/proc/self/stat`, `/proc/self/fd` and `/proc/self/limits` at each scrape;
/// a value that cannot be read is left out (logged at debug level), never a failed
/// scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let help = format!("{help}.");
    let m = ConstGauge::new(value);
    m.encode(enc.encode_descriptor(name, &help, None, MetricType::Gauge)?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let me = match procfs::process::Process::myself() {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "cannot open /proc/self");
                return Ok(());
            }
        };
        match me.stat() {
            Ok(stat) => {
                let tps = procfs::ticks_per_second().max(1) as f64;
                let cpu = (stat.utime + stat.stime) as f64 / tps;
                ConstCounter::new(cpu).encode(enc.encode_descriptor(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds.",
                    None,
                    MetricType::Counter,
                )?)?;
                gauge(
                    &mut enc,
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    stat.rss.saturating_mul(procfs::page_size()) as f64,
                )?;
                gauge(
                    &mut enc,
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes",
                    stat.vsize as f64,
                )?;
                match procfs::boot_time_secs() {
                    Ok(boot) => gauge(
                        &mut enc,
                        "process_start_time_seconds",
                        "Start time of the process since unix epoch in seconds",
                        boot as f64 + stat.starttime as f64 / tps,
                    )?,
                    Err(e) => tracing::debug!(error = %e, "cannot read the boot time"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read /proc/self/stat"),
        }
        match me.fd_count() {
            Ok(n) => gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors",
                n as f64,
            )?,
            Err(e) => tracing::debug!(error = %e, "cannot count /proc/self/fd"),
        }
        match me.limits() {
            Ok(l) => {
                if let procfs::process::LimitValue::Value(n) = l.max_open_files.soft_limit {
                    gauge(
                        &mut enc,
                        "process_max_fds",
                        "Maximum number of open file descriptors",
                        n as f64,
                    )?;
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read /proc/self/limits"),
        }
        Ok(())
    }
}
