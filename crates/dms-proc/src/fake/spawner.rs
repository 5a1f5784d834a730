//! The [`Spawner`] implementation of [`FakeSpawner`] and its start barrier.

use super::exit_watch::FakeExitWatch;
use super::*;

#[async_trait]
impl Spawner for FakeSpawner {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<Pending, ProcError> {
        let mut st = self.state();
        st.spawns += 1;
        let failure = st.spawn_failures.pop_front();
        let exec_failure = match failure {
            Some(SpawnFailure::Injected(what)) => return Err(ProcError::Injected(what)),
            Some(SpawnFailure::Log) => {
                return Err(ProcError::Log {
                    path: spec.log.clone(),
                    source: io::Error::from(io::ErrorKind::PermissionDenied),
                })
            }
            Some(SpawnFailure::NotFound) => Some(io::ErrorKind::NotFound),
            Some(SpawnFailure::PermissionDenied) => Some(io::ErrorKind::PermissionDenied),
            None => None,
        };
        let Some(identity) = self.allocate(&mut st) else {
            return Err(ProcError::Injected(format!(
                "no free PID in {}..={} (fork: EAGAIN)",
                self.inner.config.first_pid, self.inner.config.max_pid
            )));
        };
        self.insert(&mut st, identity.clone(), true, Some(spec.clone()));
        if let Some(p) = st.procs.get_mut(&identity.pid.get()) {
            p.exec_failure = exec_failure;
        }
        st.ours.insert(identity.clone());
        drop(st);
        self.bump();
        tracing::debug!(
            pid = %identity.pid,
            program = ?spec.program,
            env_keys = ?spec.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            "fake: spawned (held at the start barrier)"
        );
        Ok(Pending {
            identity: identity.clone(),
            gate: Box::new(FakeGate {
                fake: self.clone(),
                identity,
                program: spec.program.clone(),
                released: false,
            }),
        })
    }

    async fn probe(
        &self,
        pid: Pid,
        fields: ProbeFields,
    ) -> Result<(Probe, Option<Usage>), ProcError> {
        let mut probe = probe_table(self, pid)?;
        let Probe::Alive(info) = &mut probe else {
            return Ok((probe, None));
        };
        if !fields.exe {
            info.exe = None;
        }
        let usage = if fields.usage {
            match self.usage(&info.identity, Duration::ZERO).await {
                Ok(usage) => usage,
                Err(e) => {
                    tracing::debug!(pid = pid.get(), error = %e, "no usage");
                    None
                }
            }
        } else {
            None
        };
        Ok((probe, usage))
    }

    async fn signal(&self, who: &ProcIdentity, signal: Signal) -> Result<SignalOutcome, ProcError> {
        let mut st = self.state();
        if st.self_pid == Some(who.pid) {
            return Err(ProcError::SelfPid(who.pid));
        }
        let Some(p) = st.procs.get(&who.pid.get()) else {
            return Ok(SignalOutcome::Gone);
        };
        if p.identity != *who {
            return Ok(SignalOutcome::Mismatch);
        }
        if p.state == FakeState::Zombie {
            return Ok(SignalOutcome::Gone);
        }
        if p.deny_signal {
            return Err(denied(who.pid, signal.name()));
        }
        let record = SignalRecord {
            identity: p.identity.clone(),
            signal,
            ours: p.ours,
        };
        // A pending process has default dispositions: any signal kills it. A running
        // one may ignore SIGTERM.
        let dies = match signal {
            Signal::Kill => Some(SIGKILL),
            Signal::Term if p.state == FakeState::Running && p.ignores_term => None,
            Signal::Term => Some(SIGTERM),
        };
        st.signals.push(record);
        if let Some(signo) = dies {
            end_locked(&mut st, who.pid.get(), ExitStatus::Signaled(signo), false);
        }
        drop(st);
        self.bump();
        Ok(SignalOutcome::Delivered)
    }

    async fn wait_exit(
        &self,
        who: &ProcIdentity,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, ProcError> {
        let mut rx = self.inner.changed.subscribe();
        let wait = async {
            loop {
                // Mark the current version seen *before* looking, so no change is lost.
                rx.borrow_and_update();
                if let Some(status) = self.exited(who) {
                    return WaitOutcome::Exited(status);
                }
                if rx.changed().await.is_err() {
                    // The sender lives in `self.inner`, which we hold: cannot happen.
                    std::future::pending::<()>().await;
                }
            }
        };
        Ok(match timeout {
            None => wait.await,
            Some(limit) => tokio::time::timeout(limit, wait)
                .await
                .unwrap_or(WaitOutcome::TimedOut),
        })
    }

    async fn usage(
        &self,
        who: &ProcIdentity,
        interval: Duration,
    ) -> Result<Option<Usage>, ProcError> {
        let check = |st: &State| -> Result<Option<Usage>, ProcError> {
            match st.procs.get(&who.pid.get()) {
                Some(p) if p.identity == *who && p.state != FakeState::Zombie => {
                    if p.deny_probe {
                        Err(denied(who.pid, "read /proc/PID/stat"))
                    } else {
                        Ok(Some(p.usage.clone()))
                    }
                }
                _ => Ok(None),
            }
        };
        if check(&self.state())?.is_none() {
            return Ok(None);
        }
        tokio::time::sleep(interval).await;
        check(&self.state())
    }

    fn boot_id(&self) -> &str {
        &self.inner.config.boot_id
    }

    fn exit_watch(&self, exited: ExitSender) -> Result<Option<Box<dyn ExitWatch>>, ProcError> {
        Ok(Some(Box::new(FakeExitWatch::start(self.clone(), exited))))
    }

    /// The escalation for one process ([`crate::escalate`]): the fake has no process
    /// groups.
    async fn terminate(
        &self,
        who: &ProcIdentity,
        grace: Duration,
        kill_wait: Duration,
    ) -> Result<StopOutcome, ProcError> {
        crate::escalate(self, who, grace, kill_wait).await
    }
}

/// The fake start barrier.
struct FakeGate {
    fake: FakeSpawner,
    identity: ProcIdentity,
    program: OsString,
    released: bool,
}

#[async_trait]
impl StartGate for FakeGate {
    async fn release(mut self: Box<Self>) -> Result<(), ProcError> {
        self.released = true;
        let mut st = self.fake.state();
        let pid = self.identity.pid.get();
        let proc = st
            .procs
            .get_mut(&pid)
            .filter(|p| p.identity == self.identity && p.state == FakeState::Pending);
        let Some(p) = proc else {
            // Killed (or exited) while held at the barrier: the program never ran.
            return Err(ProcError::Exec {
                program: self.program.clone(),
                source: io::Error::other(format!(
                    "the helper (PID {pid}) died at the start barrier before its program ran"
                )),
            });
        };
        if let Some(kind) = p.exec_failure {
            end_locked(&mut st, pid, ExitStatus::Code(127), false);
            drop(st);
            self.fake.bump();
            return Err(ProcError::Exec {
                program: self.program.clone(),
                source: io::Error::from(kind),
            });
        }
        p.state = FakeState::Running;
        drop(st);
        self.fake.bump();
        Ok(())
    }
}

impl Drop for FakeGate {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let mut st = self.fake.state();
        let pending = st
            .procs
            .get(&self.identity.pid.get())
            .is_some_and(|p| p.identity == self.identity && p.state == FakeState::Pending);
        if pending {
            end_locked(
                &mut st,
                self.identity.pid.get(),
                ExitStatus::Code(GATE_DROPPED_EXIT_CODE),
                false,
            );
            drop(st);
            self.fake.bump();
        }
    }
}

/// What the process table holds at `pid` now, everything read.
fn probe_table(fake: &FakeSpawner, pid: Pid) -> Result<Probe, ProcError> {
    let st = fake.state();
    let Some(p) = st.procs.get(&pid.get()) else {
        return Ok(Probe::Gone);
    };
    if p.deny_probe {
        return Err(denied(pid, "read /proc/PID/stat"));
    }
    Ok(match p.state {
        FakeState::Zombie => Probe::Zombie(p.identity.clone()),
        FakeState::Pending | FakeState::Running => {
            let running = p.state == FakeState::Running;
            let spec = p.spec.as_ref().filter(|_| running);
            Probe::Alive(ProcInfo {
                identity: p.identity.clone(),
                started_at: fake.started_at(p.identity.start_ticks),
                pgid: pid.get(),
                sid: pid.get(),
                exe: spec.map(|s| PathBuf::from(&s.program)),
                cmdline: spec.map(|s| {
                    std::iter::once(&s.program)
                        .chain(&s.args)
                        .map(|a| a.to_string_lossy().into_owned())
                        .collect()
                }),
            })
        }
    })
}
