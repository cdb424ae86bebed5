//! What happens when a container ends: the pod's restart policy decides
//! whether it starts again, and the kubelet's crash-loop back-off decides
//! when. Pure code over a [`Clock`], so the schedule is tested by moving a
//! [`crate::FakeClock`].

use kelson_base::restart::{after_exit, AfterExit, Backoff, BackoffState, RestartMode};
use kelson_base::Exit;
use std::time::{Duration, Instant};

use crate::spec::RestartPolicy;
use crate::Clock;

/// The kubelet's CrashLoopBackOff: 10 s, doubling, at most 5 minutes, and
/// back to 10 s once a container has run for 10 minutes.
pub const CRASH_LOOP_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(10),
    factor: 2,
    cap: Duration::from_secs(300),
    reset_after: Duration::from_secs(600),
};

/// What to do after a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Start it again once `delay` has passed (its status meanwhile is
    /// waiting with reason CrashLoopBackOff).
    Restart { delay: Duration },
    /// Leave it terminated: it succeeded, or failed under `Never`.
    Stay,
}

/// Whether `policy` restarts a container that ended with `exit` (`None`:
/// the shim lost track of it, which counts as a failure). A container
/// killed for failing its liveness probe ended by a signal: a failure.
pub fn should_restart(policy: RestartPolicy, exit: Option<Exit>) -> bool {
    let mode = match policy {
        RestartPolicy::Always => RestartMode::Always,
        RestartPolicy::OnFailure => RestartMode::OnFailure,
        RestartPolicy::Never => RestartMode::Never,
    };
    let policy = kelson_base::restart::RestartPolicy { mode, backoff: CRASH_LOOP_BACKOFF };
    after_exit(&policy, exit) == AfterExit::Restart
}

/// One container's run history: when its current run started, how many
/// times it has been restarted, and when it may start again.
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    backoff: BackoffState,
    started_at: Option<Instant>,
    restart_at: Option<Instant>,
    starts: u32,
}

impl RestartTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the container (re)started now.
    pub fn started(&mut self, clock: &dyn Clock) {
        self.started_at = Some(clock.now());
        self.restart_at = None;
        self.starts = self.starts.saturating_add(1);
    }

    /// Records that the container ended now, and says what comes next.
    pub fn exited(&mut self, policy: RestartPolicy, exit: Option<Exit>, clock: &dyn Clock) -> NextStep {
        let now = clock.now();
        let ran_for = self.started_at.take().map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        if !should_restart(policy, exit) {
            self.restart_at = None;
            return NextStep::Stay;
        }
        let delay = self.backoff.next_delay(&CRASH_LOOP_BACKOFF, ran_for);
        self.restart_at = Some(now + delay);
        NextStep::Restart { delay }
    }

    /// How long the container must still wait before its next start;
    /// `None` when it is not waiting to restart.
    pub fn backoff_remaining(&self, clock: &dyn Clock) -> Option<Duration> {
        self.restart_at.map(|at| at.saturating_duration_since(clock.now()))
    }

    /// Starts after the first: the `restartCount` of the status.
    pub fn restart_count(&self) -> u32 {
        self.starts.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FakeClock;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Runs the container for `ran` and has it exit with `code`.
    fn run(
        tracker: &mut RestartTracker,
        clock: &FakeClock,
        ran: Duration,
        code: i32,
        policy: RestartPolicy,
    ) -> NextStep {
        tracker.started(clock);
        clock.advance(ran);
        tracker.exited(policy, Some(Exit::Code(code)), clock)
    }

    #[test]
    fn a_crash_loop_waits_10s_doubling_to_five_minutes() {
        let clock = FakeClock::new();
        let mut tracker = RestartTracker::new();
        let mut delays = Vec::new();
        for _ in 0..8 {
            let NextStep::Restart { delay } = run(&mut tracker, &clock, secs(2), 1, RestartPolicy::Always) else {
                panic!("Always restarts");
            };
            delays.push(delay.as_secs());
            clock.advance(delay);
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(tracker.restart_count(), 7);
    }

    #[test]
    fn ten_minutes_of_running_resets_the_back_off() {
        let clock = FakeClock::new();
        let mut tracker = RestartTracker::new();
        for expected in [10, 20, 40] {
            assert_eq!(
                run(&mut tracker, &clock, secs(30), 1, RestartPolicy::Always),
                NextStep::Restart { delay: secs(expected) }
            );
        }
        assert_eq!(
            run(&mut tracker, &clock, secs(599), 1, RestartPolicy::Always),
            NextStep::Restart { delay: secs(80) },
            "9 min 59 s is not long enough"
        );
        assert_eq!(
            run(&mut tracker, &clock, secs(600), 1, RestartPolicy::Always),
            NextStep::Restart { delay: secs(10) }
        );
        assert_eq!(run(&mut tracker, &clock, secs(1), 1, RestartPolicy::Always), NextStep::Restart { delay: secs(20) });
    }

    #[test]
    fn the_remaining_back_off_counts_down_with_the_clock() {
        let clock = FakeClock::new();
        let mut tracker = RestartTracker::new();
        assert_eq!(tracker.backoff_remaining(&clock), None);
        run(&mut tracker, &clock, secs(1), 2, RestartPolicy::OnFailure);
        assert_eq!(tracker.backoff_remaining(&clock), Some(secs(10)));
        clock.advance(secs(4));
        assert_eq!(tracker.backoff_remaining(&clock), Some(secs(6)));
        clock.advance(secs(7));
        assert_eq!(tracker.backoff_remaining(&clock), Some(Duration::ZERO));
        tracker.started(&clock);
        assert_eq!(tracker.backoff_remaining(&clock), None);
    }

    #[test]
    fn restart_policies_decide_by_how_the_container_ended() {
        let ok = Some(Exit::Code(0));
        let failed = Some(Exit::Code(1));
        let killed = Some(Exit::Signal(9));
        for (policy, exit, restarts) in [
            (RestartPolicy::Always, ok, true),
            (RestartPolicy::Always, failed, true),
            (RestartPolicy::OnFailure, ok, false),
            (RestartPolicy::OnFailure, failed, true),
            (RestartPolicy::OnFailure, killed, true),
            (RestartPolicy::OnFailure, None, true),
            (RestartPolicy::Never, ok, false),
            (RestartPolicy::Never, failed, false),
            (RestartPolicy::Never, None, false),
        ] {
            assert_eq!(should_restart(policy, exit), restarts, "{policy:?} {exit:?}");
        }
        let clock = FakeClock::new();
        let mut tracker = RestartTracker::new();
        assert_eq!(run(&mut tracker, &clock, secs(1), 0, RestartPolicy::OnFailure), NextStep::Stay);
        assert_eq!(tracker.backoff_remaining(&clock), None);
        assert_eq!(tracker.restart_count(), 0);
    }
}
