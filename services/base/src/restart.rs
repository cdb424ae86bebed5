//! What happens after a process ends: restart or not, and after how long.
//! The supervisor's services and the static pods' containers share this
//! schedule. Pure functions, so it is tested without processes.

use crate::exit::Exit;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartMode {
    #[default]
    Always,
    /// Restart after a non-zero exit or a signal; an exit 0 is `completed`
    /// (a one-shot retried until it succeeds).
    OnFailure,
    /// Never restart: an exit 0 is `completed`, anything else `failed`.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    pub backoff: Backoff,
}

/// Exponential back-off between restarts: `initial`, then multiplied by
/// `factor` after each restart up to `cap`; a run that lasted
/// `reset_after` or longer starts the sequence again from `initial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub factor: u32,
    pub cap: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    /// 1 s, doubling, at most 60 s, reset after 60 s of running. A node
    /// daemon should come back quickly from a one-off crash (the kubelet's
    /// own CrashLoopBackOff starts at 10 s, which is long for containerd),
    /// while a crash loop settles at one attempt a minute.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            factor: 2,
            cap: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// Counts consecutive short runs to pick the next delay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackoffState {
    consecutive: u32,
}

impl BackoffState {
    /// The delay before the next start, given how long the last run lasted.
    /// A run of at least `reset_after` starts the sequence over.
    pub fn next_delay(&mut self, policy: &Backoff, ran_for: Duration) -> Duration {
        if ran_for >= policy.reset_after {
            self.consecutive = 0;
        }
        let factor = policy.factor.max(1);
        let mut delay = policy.initial;
        for _ in 0..self.consecutive {
            delay = delay.saturating_mul(factor);
            if delay >= policy.cap {
                break;
            }
        }
        self.consecutive = self.consecutive.saturating_add(1);
        delay.min(policy.cap)
    }
}

/// The end of one run, as the restart policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    Restart,
    /// Leave it completed: it exited 0 and the policy does not restart that.
    Completed,
    /// Leave it failed: it failed and the policy does not restart.
    Failed,
}

/// `exit` is `None` when the launcher lost track of the process; that
/// counts as a failure.
pub fn after_exit(policy: &RestartPolicy, exit: Option<Exit>) -> AfterExit {
    let success = exit.is_some_and(Exit::success);
    match (policy.mode, success) {
        (RestartMode::Always, _) | (RestartMode::OnFailure, false) => AfterExit::Restart,
        (RestartMode::OnFailure, true) | (RestartMode::Never, true) => AfterExit::Completed,
        (RestartMode::Never, false) => AfterExit::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn delays_double_from_the_initial_value_up_to_the_cap() {
        let policy = Backoff { initial: secs(10), factor: 2, cap: secs(300), reset_after: secs(600) };
        let mut state = BackoffState::default();
        let delays: Vec<u64> = (0..8).map(|_| state.next_delay(&policy, secs(1)).as_secs()).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn a_run_as_long_as_the_stable_period_resets_the_delay() {
        let policy = Backoff::default();
        let mut state = BackoffState::default();
        assert_eq!(state.next_delay(&policy, secs(0)), secs(1));
        assert_eq!(state.next_delay(&policy, secs(0)), secs(2));
        assert_eq!(state.next_delay(&policy, secs(59)), secs(4), "59 s is short of the 60 s stable period");
        assert_eq!(state.next_delay(&policy, secs(60)), secs(1));
        assert_eq!(state.next_delay(&policy, secs(3)), secs(2));
    }

    #[test]
    fn a_long_crash_loop_never_overflows() {
        let policy = Backoff { initial: secs(1), factor: 3, cap: secs(60), reset_after: secs(60) };
        let mut state = BackoffState { consecutive: u32::MAX - 1 };
        assert_eq!(state.next_delay(&policy, secs(0)), secs(60));
        assert_eq!(state.next_delay(&policy, secs(0)), secs(60));
    }

    #[test]
    fn restart_modes_decide_by_exit() {
        let policy = |mode| RestartPolicy { mode, backoff: Backoff::default() };
        let ok = Some(Exit::Code(0));
        let bad = Some(Exit::Code(3));
        let killed = Some(Exit::Signal(9));
        assert_eq!(after_exit(&policy(RestartMode::Always), ok), AfterExit::Restart);
        assert_eq!(after_exit(&policy(RestartMode::OnFailure), ok), AfterExit::Completed);
        assert_eq!(after_exit(&policy(RestartMode::OnFailure), killed), AfterExit::Restart);
        assert_eq!(after_exit(&policy(RestartMode::OnFailure), None), AfterExit::Restart);
        assert_eq!(after_exit(&policy(RestartMode::Never), ok), AfterExit::Completed);
        assert_eq!(after_exit(&policy(RestartMode::Never), bad), AfterExit::Failed);
    }
}
