//! Restart policies and the delay rule of serve.md ("Supervision"): restart n waits
//! `initial_delay_secs * 2^(n-1)`, at most `max_delay_secs`, with ±10 % jitter; n counts
//! the exits that led to a restart since the helper last ran for `reset_after_secs`;
//! `max_failures` such exits within `window_secs` give up.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// When a helper is started again after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never: the exit is only recorded.
    #[default]
    Never,
    /// After an exit with a non-zero status or by a signal, or a stale mount.
    OnFailure,
    /// After any exit.
    Always,
}

impl RestartPolicy {
    /// Its name in documents (`never`, `on-failure`, `always`).
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

/// A restart policy with its delays and bounds (durations in seconds, as in the spawn
/// request and the declared targets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// When to restart.
    pub policy: RestartPolicy,
    /// The delay before the first restart of a series (0: at once).
    pub initial_delay_secs: f64,
    /// The longest delay.
    pub max_delay_secs: f64,
    /// A run this long ends a series: the next restart waits the initial delay again.
    pub reset_after_secs: f64,
    /// This many counted exits within [`Policy::window_secs`] give up (state `failed`).
    pub max_failures: u32,
    /// The window of [`Policy::max_failures`].
    pub window_secs: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            policy: RestartPolicy::Never,
            initial_delay_secs: 1.0,
            max_delay_secs: 60.0,
            reset_after_secs: 60.0,
            max_failures: 10,
            window_secs: 600.0,
        }
    }
}

/// The longest duration a policy may name (a day): longer is surely a mistake.
pub const MAX_POLICY_SECS: f64 = 86_400.0;

impl Policy {
    /// Checks the numbers; the error names the field (prefixed by `prefix`, e.g.
    /// `restart.`) and the allowed range.
    pub fn check(&self, prefix: &str) -> Result<(), String> {
        for (name, v) in [
            ("initial_delay_secs", self.initial_delay_secs),
            ("max_delay_secs", self.max_delay_secs),
            ("reset_after_secs", self.reset_after_secs),
            ("window_secs", self.window_secs),
        ] {
            if !(v.is_finite() && (0.0..=MAX_POLICY_SECS).contains(&v)) {
                return Err(format!(
                    "field `{prefix}{name}`: seconds must be a number from 0 to \
                     {MAX_POLICY_SECS} (decimals allowed)"
                ));
            }
        }
        if self.max_failures == 0 {
            return Err(format!(
                "field `{prefix}max_failures`: must be at least 1 (the number of counted \
                 exits within window_secs that give up)"
            ));
        }
        Ok(())
    }

    /// Whether this policy supervises at all (anything but `never`).
    pub fn supervises(&self) -> bool {
        self.policy != RestartPolicy::Never
    }

    /// Whether an exit counts (leads to a restart) under this policy: `failed` is a
    /// non-zero status, a signal, an unknown status or a stale mount.
    pub fn counts(&self, failed: bool) -> bool {
        match self.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Always => true,
        }
    }

    /// The delay before restart `attempt` (from 1), before jitter:
    /// `initial * 2^(attempt-1)`, at most `max`.
    pub fn base_delay(&self, attempt: u32) -> f64 {
        let exp = attempt.saturating_sub(1).min(62) as i32;
        (self.initial_delay_secs * 2f64.powi(exp)).min(self.max_delay_secs)
    }

    /// [`Policy::base_delay`] with jitter: `jitter` in `[-1, 1]` moves it by up to 10 %.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let d = self.base_delay(attempt) * (1.0 + 0.1 * jitter.clamp(-1.0, 1.0));
        Duration::from_secs_f64(d.max(0.0))
    }
}

/// A uniform jitter in `[-1, 1]`.
pub fn jitter() -> f64 {
    fastrand::f64() * 2.0 - 1.0
}

/// What follows an exit.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not restarted (policy `never`, or a clean exit under `on-failure`).
    Stay,
    /// Restart `attempt` after `delay`.
    Restart {
        /// The delay.
        delay: Duration,
        /// n of the delay rule.
        attempt: u32,
    },
    /// `failures` counted exits within the window: give up.
    GiveUp {
        /// How many.
        failures: u32,
    },
}

/// The exits of one helper that the rule counts: n of the delay rule and the times
/// (seconds on any one clock, e.g. Unix time) of the counted exits within the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Series {
    /// n: counted exits since the last stable run.
    pub attempt: u32,
    /// When the counted exits within the window happened.
    pub failures: VecDeque<f64>,
}

impl Series {
    /// Counts an exit at `now` after a run of `ran_for` (`None`: unknown, e.g. the helper
    /// never started) and decides; `failed` as in [`Policy::counts`].
    pub fn on_exit(
        &mut self,
        policy: &Policy,
        failed: bool,
        ran_for: Option<Duration>,
        now: f64,
        jitter: f64,
    ) -> Decision {
        if ran_for.is_some_and(|r| r.as_secs_f64() >= policy.reset_after_secs) {
            self.attempt = 0;
        }
        if !policy.counts(failed) {
            return Decision::Stay;
        }
        self.attempt = self.attempt.saturating_add(1);
        self.failures.push_back(now);
        while self
            .failures
            .front()
            .is_some_and(|&t| t <= now - policy.window_secs)
        {
            self.failures.pop_front();
        }
        let failures = self.failures.len() as u32;
        if failures >= policy.max_failures {
            return Decision::GiveUp { failures };
        }
        Decision::Restart {
            delay: policy.delay(self.attempt, jitter),
            attempt: self.attempt,
        }
    }

    /// Forgets everything (a new `spawn` or an explicit `restart`).
    pub fn reset(&mut self) {
        *self = Series::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_failure() -> Policy {
        Policy {
            policy: RestartPolicy::OnFailure,
            ..Policy::default()
        }
    }

    fn delay_of(d: Decision) -> f64 {
        match d {
            Decision::Restart { delay, .. } => delay.as_secs_f64(),
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = Policy {
            max_delay_secs: 5.0,
            ..on_failure()
        };
        let mut s = Series::default();
        let got: Vec<f64> = (0..5)
            .map(|i| delay_of(s.on_exit(&p, true, Some(Duration::ZERO), i as f64, 0.0)))
            .collect();
        assert_eq!(got, [1.0, 2.0, 4.0, 5.0, 5.0]);
        assert_eq!(s.attempt, 5);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let p = on_failure();
        for attempt in 1..8 {
            for j in [-1.0, -0.5, 0.0, 0.7, 1.0, 5.0, -5.0] {
                let d = p.delay(attempt, j).as_secs_f64();
                let base = p.base_delay(attempt);
                assert!(
                    d >= base * 0.9 - 1e-9 && d <= base * 1.1 + 1e-9,
                    "{d} vs {base}"
                );
            }
        }
        let spread: Vec<f64> = (0..200)
            .map(|_| p.delay(1, jitter()).as_secs_f64())
            .collect();
        let (lo, hi) = spread
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &d| (l.min(d), h.max(d)));
        assert!(
            lo >= 0.9 && hi <= 1.1 && hi - lo > 0.1,
            "jitter spreads: {lo}..{hi}"
        );
    }

    #[test]
    fn a_stable_run_resets_the_series() {
        let p = Policy {
            reset_after_secs: 10.0,
            ..on_failure()
        };
        let mut s = Series::default();
        assert_eq!(
            delay_of(s.on_exit(&p, true, Some(Duration::from_secs(1)), 0.0, 0.0)),
            1.0
        );
        assert_eq!(
            delay_of(s.on_exit(&p, true, Some(Duration::from_secs(1)), 2.0, 0.0)),
            2.0
        );
        assert_eq!(
            delay_of(s.on_exit(&p, true, Some(Duration::from_secs(11)), 20.0, 0.0)),
            1.0
        );
        assert_eq!(s.attempt, 1);
    }

    #[test]
    fn gives_up_after_max_failures_within_the_window() {
        let p = Policy {
            max_failures: 3,
            window_secs: 100.0,
            ..on_failure()
        };
        let mut s = Series::default();
        assert!(matches!(
            s.on_exit(&p, true, None, 0.0, 0.0),
            Decision::Restart { attempt: 1, .. }
        ));
        assert!(matches!(
            s.on_exit(&p, true, None, 1.0, 0.0),
            Decision::Restart { attempt: 2, .. }
        ));
        assert_eq!(
            s.on_exit(&p, true, None, 2.0, 0.0),
            Decision::GiveUp { failures: 3 }
        );
        // Spread beyond the window: the old failures leave it.
        let mut s = Series::default();
        for t in [0.0, 60.0, 120.0, 180.0] {
            assert!(
                matches!(s.on_exit(&p, true, None, t, 0.0), Decision::Restart { .. }),
                "{t}"
            );
        }
        assert_eq!(s.failures.len(), 2);
    }

    #[test]
    fn policies_decide_which_exits_count() {
        let mut s = Series::default();
        assert_eq!(
            s.on_exit(&on_failure(), false, None, 0.0, 0.0),
            Decision::Stay
        );
        let never = Policy::default();
        assert_eq!(s.on_exit(&never, true, None, 0.0, 0.0), Decision::Stay);
        let always = Policy {
            policy: RestartPolicy::Always,
            ..Policy::default()
        };
        assert!(matches!(
            s.on_exit(&always, false, None, 0.0, 0.0),
            Decision::Restart { attempt: 1, .. }
        ));
        assert_eq!(s.failures.len(), 1);
    }

    #[test]
    fn zero_initial_delay_restarts_at_once_and_checks_refuse_nonsense() {
        let p = Policy {
            initial_delay_secs: 0.0,
            ..on_failure()
        };
        let mut s = Series::default();
        assert_eq!(delay_of(s.on_exit(&p, true, None, 0.0, 1.0)), 0.0);
        assert!(p.check("restart.").is_ok());
        let bad = Policy {
            max_failures: 0,
            ..p.clone()
        };
        assert!(bad
            .check("restart.")
            .unwrap_err()
            .contains("restart.max_failures"));
        let bad = Policy {
            max_delay_secs: f64::NAN,
            ..p
        };
        assert!(bad.check("").unwrap_err().contains("max_delay_secs"));
    }
}
