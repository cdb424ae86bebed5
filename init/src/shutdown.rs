//! Ordered shutdown: stop every process (SIGTERM, a grace period, then
//! SIGKILL), sync, unmount /var, and only then ask the kernel to power off
//! or reboot. The steps are data run through [`ShutdownOps`], so their order
//! is tested without stopping anything.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PowerOff,
    Reboot,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::PowerOff => "power-off",
            Action::Reboot => "reboot",
        })
    }
}

/// How long processes get between SIGTERM and SIGKILL unless the command
/// line says otherwise (`kelson.shutdown_grace=SECONDS`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for SIGKILLed processes to be reaped.
pub const KILL_WAIT: Duration = Duration::from_secs(3);

/// What shutdown needs from the system.
pub trait ShutdownOps {
    /// Sends `signal` to every process but PID 1.
    fn signal_all(&mut self, signal: nix::sys::signal::Signal);
    /// Reaps until no process is left or `timeout` passes; returns how many
    /// processes are still running.
    fn wait_for_no_processes(&mut self, timeout: Duration) -> usize;
    fn sync(&mut self);
    fn unmount_var(&mut self) -> Result<(), String>;
    fn log(&mut self, line: &str);
    /// Does not return on success.
    fn finish(&mut self, action: Action) -> String;
}

/// Runs the whole sequence. Returns only if the final reboot(2) failed,
/// with the reason.
pub fn run(ops: &mut dyn ShutdownOps, action: Action, grace: Duration) -> String {
    use nix::sys::signal::Signal;
    ops.log(&format!("shutdown: begin action={action}"));
    ops.log(&format!("shutdown: stopping processes signal=SIGTERM grace_ms={}", grace.as_millis()));
    ops.signal_all(Signal::SIGTERM);
    let left = ops.wait_for_no_processes(grace);
    if left > 0 {
        ops.log(&format!("shutdown: grace period over, killing processes signal=SIGKILL remaining={left}"));
        ops.signal_all(Signal::SIGKILL);
        let still = ops.wait_for_no_processes(KILL_WAIT);
        if still > 0 {
            ops.log(&format!("shutdown: processes survived SIGKILL remaining={still}"));
        }
    }
    ops.log("shutdown: processes stopped");
    ops.log("shutdown: sync");
    ops.sync();
    match ops.unmount_var() {
        Ok(()) => ops.log("shutdown: unmounted /var"),
        Err(e) => ops.log(&format!("shutdown: /var not unmounted cleanly: {e}")),
    }
    ops.log(&format!("shutdown: {action}"));
    ops.finish(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[derive(Default)]
    struct Recorder {
        events: Vec<String>,
        /// Processes left after each wait, in turn.
        leftovers: Vec<usize>,
        unmount_fails: bool,
    }

    impl ShutdownOps for Recorder {
        fn signal_all(&mut self, signal: Signal) {
            self.events.push(format!("signal {signal}"));
        }
        fn wait_for_no_processes(&mut self, timeout: Duration) -> usize {
            self.events.push(format!("wait {}ms", timeout.as_millis()));
            if self.leftovers.is_empty() {
                0
            } else {
                self.leftovers.remove(0)
            }
        }
        fn sync(&mut self) {
            self.events.push("sync".into());
        }
        fn unmount_var(&mut self) -> Result<(), String> {
            self.events.push("umount /var".into());
            if self.unmount_fails {
                Err("busy".into())
            } else {
                Ok(())
            }
        }
        fn log(&mut self, _line: &str) {}
        fn finish(&mut self, action: Action) -> String {
            self.events.push(format!("finish {action}"));
            "reboot(2) failed".into()
        }
    }

    #[test]
    fn processes_stop_before_sync_before_unmount_before_power_off() {
        let mut r = Recorder::default();
        run(&mut r, Action::PowerOff, Duration::from_secs(5));
        assert_eq!(r.events, vec!["signal SIGTERM", "wait 5000ms", "sync", "umount /var", "finish power-off"]);
    }

    #[test]
    fn processes_that_outlive_the_grace_period_are_killed() {
        let mut r = Recorder { leftovers: vec![2, 0], ..Default::default() };
        run(&mut r, Action::Reboot, Duration::from_secs(1));
        assert_eq!(
            r.events,
            vec![
                "signal SIGTERM",
                "wait 1000ms",
                "signal SIGKILL",
                "wait 3000ms",
                "sync",
                "umount /var",
                "finish reboot"
            ]
        );
    }

    #[test]
    fn a_busy_var_does_not_stop_the_power_off() {
        let mut r = Recorder { unmount_fails: true, ..Default::default() };
        run(&mut r, Action::PowerOff, Duration::from_secs(1));
        assert_eq!(r.events.last().map(String::as_str), Some("finish power-off"));
    }
}
