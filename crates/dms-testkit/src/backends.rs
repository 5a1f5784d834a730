//! [`per_backend!`](crate::per_backend): one test per backend from one scenario.

/// Runs each named scenario once per backend: `fn name(backend: B)` (or an `async fn`)
/// becomes the tests `<module>::name`, one module per backend value.
///
/// The kit knows no dms type: the caller names the modules and the values.
///
/// ```ignore
/// // dms-core: `async fn spawn_and_kill(backend: Backend)` -> two tokio tests,
/// // `pid_files::spawn_and_kill` and `sqlite::spawn_and_kill`.
/// dms_testkit::per_backend! {
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async;
///     pid_files => Backend::PidFile, sqlite => Backend::Sqlite;
///     [spawn_and_kill, restart_adopts_running_helper]
/// }
/// // dms-cli: plain tests, each run inside `via_daemon(|| ...)`.
/// dms_testkit::per_backend! {
///     #[test] via crate::common::via_daemon;
///     daemon_pidfile => Backend::Pidfile, daemon_sqlite => Backend::Sqlite;
///     [adopt_then_kill]
/// }
/// ```
#[macro_export]
macro_rules! per_backend {
    (#[$attr:meta]; $($module:ident => $value:expr),+ $(,)?; $names:tt $(,)?) => {
        $( $crate::per_backend!(@sync [$attr] $module, $value, $names); )+
    };
    (#[$attr:meta] async; $($module:ident => $value:expr),+ $(,)?; $names:tt $(,)?) => {
        $( $crate::per_backend!(@async [$attr] $module, $value, $names); )+
    };
    (#[$attr:meta] via $wrap:path; $($module:ident => $value:expr),+ $(,)?; $names:tt $(,)?) => {
        $( $crate::per_backend!(@via [$attr] [$wrap] $module, $value, $names); )+
    };
    (@sync [$attr:meta] $module:ident, $value:expr, [$($name:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $( #[$attr] fn $name() { super::$name($value) } )*
        }
    };
    (@async [$attr:meta] $module:ident, $value:expr, [$($name:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $( #[$attr] async fn $name() { super::$name($value).await } )*
        }
    };
    (@via [$attr:meta] [$wrap:path] $module:ident, $value:expr, [$($name:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $( #[$attr] fn $name() { $wrap(|| super::$name($value)) } )*
        }
    };
}
