//! What the retrying tasks (reporter, node watcher, addon applier) say
//! about failed API requests: each problem once when it starts or changes,
//! once more when it clears, never once per retry. The API server is one
//! of the static pods, so every node spends its first minute or so being
//! refused, and PID 1's log is read by people.

use std::time::Duration;
use tracing::{info, warn};

/// A failed request: `summary` decides whether it is news, `detail` is
/// what gets logged.
pub(crate) struct ApiProblem {
    pub summary: String,
    pub detail: String,
    /// The API server answered 404.
    pub not_found: bool,
}

impl ApiProblem {
    /// `action` says what was being done to what ("reading Node n1").
    pub fn new(action: &str, error: kube::Error) -> Self {
        match &error {
            kube::Error::Api(status) if status.code == 404 => ApiProblem {
                summary: format!("{action}: not found"),
                detail: format!("{action}: not found"),
                not_found: true,
            },
            kube::Error::Api(status) => ApiProblem {
                summary: format!("{action}: HTTP {} {}", status.code, status.reason),
                detail: format!(
                    "{action}: the API server answered {} {}: {}",
                    status.code, status.reason, status.message
                ),
                not_found: false,
            },
            // Connection refused, TLS, timeouts: the API server is not
            // (yet) serving.
            other => ApiProblem {
                summary: format!("{action}: API server unreachable"),
                detail: format!("{action}: API server unreachable: {}", error_chain(other)),
                not_found: false,
            },
        }
    }

    pub fn timed_out(action: &str, limit: Duration) -> Self {
        ApiProblem {
            summary: format!("{action}: API server unreachable"),
            detail: format!("{action}: API server unreachable: no answer within {} s", limit.as_secs()),
            not_found: false,
        }
    }
}

/// The last problem a task logged, named by the task (`who`, the start of
/// each line).
pub(crate) struct QuietRetries {
    who: String,
    logged: Option<String>,
}

impl QuietRetries {
    pub fn new(who: impl Into<String>) -> Self {
        QuietRetries { who: who.into(), logged: None }
    }

    /// Logs `detail` unless `summary` is the problem logged last.
    pub fn failed(&mut self, summary: &str, detail: &str) {
        if self.logged.as_deref() != Some(summary) {
            warn!("{}: {detail}; retrying quietly", self.who);
            self.logged = Some(summary.to_owned());
        }
    }

    /// After a failure, logs `news` with the problem it ends.
    pub fn recovered(&mut self, news: &str) {
        if let Some(was) = self.logged.take() {
            info!("{}: {news} (was: {was})", self.who);
        }
    }

    pub fn failing(&self) -> bool {
        self.logged.is_some()
    }
}

/// An error with its sources, each cause once.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
