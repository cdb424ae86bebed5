//! What probe results mean for a running container, as the kubelet reads
//! them: a result counts only after `successThreshold` / `failureThreshold`
//! in a row; the startup probe gates the others; liveness or startup
//! failure restarts the container; readiness only changes its status.
//! Pure: the runner executes probes on each `period` after
//! `initialDelay` and feeds the results in.

use crate::spec::{ContainerSpec, ProbeSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

/// Consecutive results of one probe, turned into a settled result once a
/// threshold is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeCounter {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
}

impl ProbeCounter {
    pub fn new(spec: &ProbeSpec) -> Self {
        ProbeCounter {
            success_threshold: spec.success_threshold.max(1),
            failure_threshold: spec.failure_threshold.max(1),
            last: None,
            run: 0,
        }
    }

    /// Records one attempt; `Some(result)` once enough attempts in a row
    /// agree (and again on each attempt after that, while they agree).
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok { self.success_threshold } else { self.failure_threshold };
        (self.run >= threshold).then_some(ok)
    }
}

/// What the container's owner must do after a probe result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeVerdict {
    Nothing,
    /// The startup probe passed: liveness and readiness probes begin.
    Started,
    /// Readiness changed; update the status.
    Ready(bool),
    /// Liveness or startup failed: kill the container (grace period from
    /// the probe or the pod), then let the restart policy decide.
    Restart(ProbeKind),
}

/// The probes of one run of a container. Made anew for each run.
#[derive(Debug, Clone)]
pub struct ContainerProbes {
    startup: Option<ProbeCounter>,
    liveness: Option<ProbeCounter>,
    readiness: Option<ProbeCounter>,
    started: bool,
    ready: bool,
    /// After a restart verdict nothing more is probed in this run.
    failed: bool,
}

impl ContainerProbes {
    pub fn new(container: &ContainerSpec) -> Self {
        ContainerProbes {
            started: container.startup.is_none(),
            startup: container.startup.as_ref().map(ProbeCounter::new),
            liveness: container.liveness.as_ref().map(ProbeCounter::new),
            // Without a readiness probe a started container is ready.
            ready: container.readiness.is_none(),
            readiness: container.readiness.as_ref().map(ProbeCounter::new),
            failed: false,
        }
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// Ready only once started, as the kubelet reports it.
    pub fn ready(&self) -> bool {
        self.started && self.ready && !self.failed
    }

    /// Whether `kind` should be run now: the startup probe until it
    /// passes, the others only after.
    pub fn active(&self, kind: ProbeKind) -> bool {
        !self.failed
            && match kind {
                ProbeKind::Startup => self.startup.is_some() && !self.started,
                ProbeKind::Liveness => self.liveness.is_some() && self.started,
                ProbeKind::Readiness => self.readiness.is_some() && self.started,
            }
    }

    pub fn record(&mut self, kind: ProbeKind, ok: bool) -> ProbeVerdict {
        if !self.active(kind) {
            return ProbeVerdict::Nothing;
        }
        let counter = match kind {
            ProbeKind::Startup => self.startup.as_mut(),
            ProbeKind::Liveness => self.liveness.as_mut(),
            ProbeKind::Readiness => self.readiness.as_mut(),
        };
        let Some(settled) = counter.and_then(|c| c.record(ok)) else {
            return ProbeVerdict::Nothing;
        };
        match (kind, settled) {
            (ProbeKind::Startup, true) => {
                self.started = true;
                ProbeVerdict::Started
            }
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                self.failed = true;
                ProbeVerdict::Restart(kind)
            }
            (ProbeKind::Liveness, true) => ProbeVerdict::Nothing,
            (ProbeKind::Readiness, ready) if ready != self.ready => {
                self.ready = ready;
                ProbeVerdict::Ready(ready)
            }
            (ProbeKind::Readiness, _) => ProbeVerdict::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ProbeAction;
    use std::time::Duration;

    fn probe(success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            action: ProbeAction::TcpSocket { host: None, port: 80 },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
            termination_grace_period: None,
        }
    }

    fn container(
        startup: Option<ProbeSpec>,
        liveness: Option<ProbeSpec>,
        readiness: Option<ProbeSpec>,
    ) -> ContainerSpec {
        let text = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"x:1"}]}}"#;
        let pod = crate::manifest::parse(std::path::Path::new("p.json"), text.as_bytes(), &Default::default()).unwrap();
        ContainerSpec { startup, liveness, readiness, ..pod.containers[0].clone() }
    }

    #[test]
    fn a_result_counts_only_after_its_threshold_in_a_row() {
        let mut c = ProbeCounter::new(&probe(2, 3));
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), None, "a success breaks the run of failures");
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(false));
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(true));
        assert_eq!(c.record(true), Some(true));
    }

    #[test]
    fn the_startup_probe_gates_liveness_and_readiness() {
        let mut p = ContainerProbes::new(&container(Some(probe(1, 3)), Some(probe(1, 2)), Some(probe(1, 1))));
        assert!(!p.started() && !p.ready());
        assert!(p.active(ProbeKind::Startup) && !p.active(ProbeKind::Liveness) && !p.active(ProbeKind::Readiness));
        assert_eq!(
            p.record(ProbeKind::Liveness, false),
            ProbeVerdict::Nothing,
            "liveness does not run before startup passes"
        );
        assert_eq!(p.record(ProbeKind::Liveness, false), ProbeVerdict::Nothing);
        assert_eq!(p.record(ProbeKind::Startup, false), ProbeVerdict::Nothing);
        assert_eq!(p.record(ProbeKind::Startup, true), ProbeVerdict::Started);
        assert!(p.started() && !p.ready(), "not ready before the readiness probe passes");
        assert!(!p.active(ProbeKind::Startup) && p.active(ProbeKind::Liveness));
        assert_eq!(p.record(ProbeKind::Readiness, true), ProbeVerdict::Ready(true));
        assert!(p.ready());
        assert_eq!(p.record(ProbeKind::Readiness, true), ProbeVerdict::Nothing, "no change, nothing to report");
        assert_eq!(p.record(ProbeKind::Readiness, false), ProbeVerdict::Ready(false));
        assert_eq!(p.record(ProbeKind::Liveness, false), ProbeVerdict::Nothing);
        assert_eq!(p.record(ProbeKind::Liveness, false), ProbeVerdict::Restart(ProbeKind::Liveness));
        assert!(
            !p.active(ProbeKind::Liveness) && !p.active(ProbeKind::Readiness),
            "nothing is probed after the verdict"
        );
    }

    #[test]
    fn a_startup_probe_that_keeps_failing_restarts_the_container() {
        let mut p = ContainerProbes::new(&container(Some(probe(1, 2)), None, None));
        assert_eq!(p.record(ProbeKind::Startup, false), ProbeVerdict::Nothing);
        assert_eq!(p.record(ProbeKind::Startup, false), ProbeVerdict::Restart(ProbeKind::Startup));
        assert!(!p.started() && !p.ready());
    }

    #[test]
    fn without_probes_a_running_container_is_started_and_ready() {
        let p = ContainerProbes::new(&container(None, None, None));
        assert!(p.started() && p.ready());
        assert!(!p.active(ProbeKind::Startup) && !p.active(ProbeKind::Liveness) && !p.active(ProbeKind::Readiness));
    }
}
