//! Operators' requests on one service: what can be asked, and why a request
//! is refused.

use crate::status::ServiceState;

/// What [`crate::Supervisor::control`] does to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceAction {
    /// Start a stopped, failed or completed service (its requirements
    /// still apply), with a fresh back-off.
    Start,
    /// Stop it by its stop policy; it stays stopped until started.
    Stop,
    /// Stop it if it is active, then start it.
    Restart,
}

impl ServiceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
        }
    }
}

impl std::fmt::Display for ServiceAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot {action} service {service}: no service has that name")]
    UnknownService { service: String, action: ServiceAction },
    /// The request does not fit the service's state (stopping a stopped
    /// one, starting a running one, restarting an absent or blocked one).
    #[error("cannot {action} service {service}: it is {state}")]
    Conflict { service: String, action: ServiceAction, state: ServiceState },
    #[error("cannot {action} service {service}: the supervisor has not started its services yet")]
    NotStarted { service: String, action: ServiceAction },
    #[error("cannot {action} service {service}: the supervisor is shutting down")]
    ShuttingDown { service: String, action: ServiceAction },
}

/// Whether `action` fits a service in `state`. Stop fits an active
/// service (waiting, blocked, starting, running, healthy, backing off);
/// start fits one that is over (stopped, failed, completed); restart fits
/// both, but not a service that cannot run (absent, blocked).
pub(crate) fn allowed(action: ServiceAction, state: ServiceState) -> bool {
    let over = matches!(state, ServiceState::Stopped | ServiceState::Failed | ServiceState::Completed);
    let cannot_run = matches!(state, ServiceState::Absent | ServiceState::Blocked);
    match action {
        ServiceAction::Stop => !over && state != ServiceState::Absent,
        ServiceAction::Start => over,
        ServiceAction::Restart => !cannot_run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServiceState::*;

    #[test]
    fn each_action_fits_only_the_states_it_makes_sense_in() {
        let all = [Waiting, Starting, Running, Healthy, BackingOff, Stopped, Completed, Failed, Absent, Blocked];
        let fits = |action| all.iter().copied().filter(|s| allowed(action, *s)).collect::<Vec<_>>();
        assert_eq!(fits(ServiceAction::Stop), [Waiting, Starting, Running, Healthy, BackingOff, Blocked]);
        assert_eq!(fits(ServiceAction::Start), [Stopped, Completed, Failed]);
        assert_eq!(
            fits(ServiceAction::Restart),
            [Waiting, Starting, Running, Healthy, BackingOff, Stopped, Completed, Failed]
        );
    }

    #[test]
    fn a_refusal_names_the_action_the_service_and_its_state() {
        let err = ControlError::Conflict { service: "kubelet".into(), action: ServiceAction::Stop, state: Stopped };
        assert_eq!(err.to_string(), "cannot stop service kubelet: it is stopped");
    }
}
