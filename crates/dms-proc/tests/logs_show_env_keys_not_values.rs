//! Spawn logs name the environment keys but never their values (secrets travel in the
//! environment). Alone in its binary: tracing caches callsite interest process-wide.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::Spawner;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Collects every tracing event's fields as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut out = self.0.lock().unwrap();
        span.record(&mut Fields(&mut out));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().unwrap();
        event.record(&mut Fields(&mut out));
        out.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn logs_name_environment_keys_but_never_values() {
    let capture = Capture::default();
    let _default = tracing::subscriber::set_default(capture.clone());
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let (id, _guard) = start(&spawner, &spec(dir.path(), "sleep", &["60"])).await;
    assert!(
        spawner
            .terminate(&id, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
            .await
            .unwrap()
            .stopped
    );
    let logged = capture.0.lock().unwrap().clone();
    assert!(
        logged.contains("DMS_TEST_MARKER"),
        "keys are logged: {logged}"
    );
    assert!(logged.contains("helper created"), "{logged}");
    for (_, value) in env() {
        let value = value.to_str().unwrap();
        assert!(
            !logged.contains(value),
            "value {value:?} leaked into: {logged}"
        );
    }
}
