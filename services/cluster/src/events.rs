//! Kubernetes Events for what changed between two snapshots of the pod
//! manager's status: a container started or restarted, readiness lost, a
//! pod gone. Pure: the reporter turns each [`EventSpec`] into a core/v1
//! Event about the Node (a Pod reference would point at an object the API
//! server does not have), so each message names the pod.

use crate::conditions::terminated_word;
use kelson_pods::runtime::PodsStatus;
use kelson_pods::status::{ContainerState, ContainerStatus, PodStatus};

/// As the kubelet uses them: `Warning` for what needs a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One event to post, before it is addressed to the Node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventSpec {
    pub type_: EventType,
    /// `Started`, `Restarted`, `Unhealthy` or `Killing`.
    pub reason: &'static str,
    pub message: String,
}

/// The events that take `previous` to `current`.
///
/// A pod is the same pod when namespace, name and uid match: a changed
/// manifest gives a new uid, so the old pod is reported stopped and the
/// new one's containers started. A restart (the restart count went up)
/// is reported as `Restarted` only, not also as `Started`.
pub fn events(previous: &PodsStatus, current: &PodsStatus) -> Vec<EventSpec> {
    let mut out = Vec::new();
    for pod in &current.pods {
        let before = previous.pods.iter().find(|p| same_pod(p, pod));
        for container in &pod.containers {
            let was = before.and_then(|p| p.containers.iter().find(|c| c.name == container.name));
            container_events(pod, container, was, &mut out);
        }
    }
    for gone in previous.pods.iter().filter(|p| !current.pods.iter().any(|c| same_pod(p, c))) {
        let containers = gone.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
        out.push(EventSpec {
            type_: EventType::Normal,
            reason: "Killing",
            message: format!(
                "Stopped static pod {}/{} (containers {containers}): its manifest was removed or changed",
                gone.namespace, gone.name
            ),
        });
    }
    out
}

fn same_pod(a: &PodStatus, b: &PodStatus) -> bool {
    a.namespace == b.namespace && a.name == b.name && a.uid == b.uid
}

fn container_events(pod: &PodStatus, now: &ContainerStatus, was: Option<&ContainerStatus>, out: &mut Vec<EventSpec>) {
    let subject = format!("container {} of static pod {}/{}", now.name, pod.namespace, pod.name);
    let restarted = was.is_some_and(|w| now.restart_count > w.restart_count);
    if restarted {
        out.push(EventSpec {
            type_: EventType::Warning,
            reason: "Restarted",
            message: format!(
                "Restarted {subject} (restart count {}); {}",
                now.restart_count,
                last_termination(now.last_state.as_ref())
            ),
        });
        return;
    }
    let started_at = |c: &ContainerStatus| match &c.state {
        ContainerState::Running { started_at } => Some(started_at.clone()),
        _ => None,
    };
    let (run_now, run_before) = (started_at(now), was.and_then(started_at));
    if run_now.is_some() && run_now != run_before {
        out.push(EventSpec { type_: EventType::Normal, reason: "Started", message: format!("Started {subject}") });
        return;
    }
    // Still the same run: only readiness can have changed.
    let same_run = run_now.is_some() && run_now == run_before;
    if same_run && was.is_some_and(|w| w.ready) && !now.ready {
        out.push(EventSpec {
            type_: EventType::Warning,
            reason: "Unhealthy",
            message: format!("Readiness probe failing for {subject}"),
        });
    }
}

/// `last run ended: Error, exit code 137 (signal 9)`.
fn last_termination(last: Option<&ContainerState>) -> String {
    match last {
        Some(ContainerState::Terminated { exit_code, signal, reason, .. }) => {
            let signal = signal.map(|s| format!(" (signal {s})")).unwrap_or_default();
            format!("last run ended: {}, exit code {exit_code}{signal}", terminated_word(*reason))
        }
        _ => "last run's end not recorded".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{killed, pod, pods, rerun, running, unready};

    fn one(list: Vec<EventSpec>) -> EventSpec {
        assert_eq!(list.len(), 1, "{list:?}");
        list.into_iter().next().unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn a_container_that_starts_running_gives_one_normal_started_event() {
        let pending = pods(vec![pod("etcd", &["etcd"])]);
        assert_eq!(events(&pods(vec![]), &pending), vec![], "a pending pod has started nothing");
        let started = pods(vec![running(pod("etcd", &["etcd"]), 1)]);
        let e = one(events(&pending, &started));
        assert_eq!((e.type_, e.reason), (EventType::Normal, "Started"));
        assert_eq!(e.message, "Started container etcd of static pod kube-system/etcd-n1");
        // Nothing changed, nothing to say.
        assert_eq!(events(&started, &started), vec![]);
    }

    #[test]
    fn pods_already_running_at_the_first_snapshot_are_reported_started() {
        let list = events(&pods(vec![]), &pods(vec![running(pod("web", &["app", "sidecar"]), 1)]));
        let messages: Vec<&str> = list.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "Started container app of static pod kube-system/web-n1",
                "Started container sidecar of static pod kube-system/web-n1"
            ]
        );
    }

    #[test]
    fn a_restart_is_a_warning_with_the_last_termination_and_not_also_started() {
        let before = running(pod("kube-apiserver", &["kube-apiserver"]), 1);
        let mut after = before.clone();
        killed(&mut after, "kube-apiserver", 9, 5);
        // The termination alone is not an event; the restart that follows is.
        assert_eq!(events(&pods(vec![before.clone()]), &pods(vec![after.clone()])), vec![]);
        let terminated = after.clone();
        rerun(&mut after, "kube-apiserver", 6);
        for previous in [before, terminated] {
            let e = one(events(&pods(vec![previous]), &pods(vec![after.clone()])));
            assert_eq!((e.type_, e.reason), (EventType::Warning, "Restarted"));
            assert_eq!(
                e.message,
                "Restarted container kube-apiserver of static pod kube-system/kube-apiserver-n1 (restart count 1); \
                 last run ended: Error, exit code 137 (signal 9)"
            );
        }
    }

    #[test]
    fn readiness_lost_in_the_same_run_is_an_unhealthy_warning() {
        let ready = running(pod("etcd", &["etcd"]), 1);
        let mut failing = ready.clone();
        unready(&mut failing, "etcd");
        let e = one(events(&pods(vec![ready]), &pods(vec![failing.clone()])));
        assert_eq!((e.type_, e.reason), (EventType::Warning, "Unhealthy"));
        assert_eq!(e.message, "Readiness probe failing for container etcd of static pod kube-system/etcd-n1");
        // Still failing: said once.
        assert_eq!(events(&pods(vec![failing.clone()]), &pods(vec![failing])), vec![]);
    }

    #[test]
    fn a_pod_gone_is_reported_stopped_naming_its_containers() {
        let web = running(pod("web", &["app", "sidecar"]), 1);
        let e = one(events(&pods(vec![web]), &pods(vec![])));
        assert_eq!((e.type_, e.reason), (EventType::Normal, "Killing"));
        assert_eq!(
            e.message,
            "Stopped static pod kube-system/web-n1 (containers app, sidecar): its manifest was removed or changed"
        );
    }

    #[test]
    fn a_pod_with_a_new_uid_is_the_old_one_stopped_and_the_new_one_started() {
        let old = running(pod("etcd", &["etcd"]), 1);
        let mut new = running(pod("etcd", &["etcd"]), 1);
        new.uid = kelson_pods::PodUid(format!("{}-changed", old.uid));
        let list = events(&pods(vec![old]), &pods(vec![new]));
        let reasons: Vec<&str> = list.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["Started", "Killing"], "{list:?}");
    }
}
