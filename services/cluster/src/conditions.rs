//! The Node conditions PID 1 keeps for its static pods, computed from the
//! pod manager's status alone (no I/O, no clock: `now` is an argument).

use k8s_openapi::api::core::v1::NodeCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kelson_pods::runtime::PodsStatus;
use kelson_pods::status::{ContainerState, PodPhase, PodStatus, TerminatedReason};
use std::time::{SystemTime, UNIX_EPOCH};

/// True when every static pod runs and is ready.
pub const STATIC_PODS_HEALTHY: &str = "KelsonStaticPodsHealthy";
/// True when this node's etcd static pod runs and is ready.
pub const ETCD_HEALTHY: &str = "KelsonEtcdHealthy";

/// Kelson's Node conditions for `pods` at `now`.
///
/// `previous` is what the Node carries now (or what was last sent): a
/// condition whose status does not change keeps its `lastTransitionTime`,
/// as Kubernetes means it. `lastHeartbeatTime` is always `now`.
///
/// `KelsonEtcdHealthy` is left out on a node that runs no etcd pod (a
/// worker) unless the Node already carries it: then it becomes Unknown
/// instead of keeping a stale True.
pub fn conditions(pods: &PodsStatus, previous: &[NodeCondition], now: SystemTime) -> Vec<NodeCondition> {
    let mut out = Vec::with_capacity(2);

    let healthy = pods.pods.iter().all(pod_healthy);
    let message = if pods.pods.is_empty() {
        "no static pods run on this node".to_owned()
    } else {
        pods.pods.iter().map(pod_summary).collect::<Vec<_>>().join("; ")
    };
    let reason = if healthy { "StaticPodsHealthy" } else { "StaticPodsUnhealthy" };
    out.push(condition(STATIC_PODS_HEALTHY, status_word(healthy), reason, message, previous, now));

    let etcd: Vec<&PodStatus> = pods.pods.iter().filter(|p| is_etcd(p)).collect();
    if !etcd.is_empty() {
        let healthy = etcd.iter().all(|p| pod_healthy(p));
        let message = etcd.iter().map(|p| pod_summary(p)).collect::<Vec<_>>().join("; ");
        let reason = if healthy { "EtcdReady" } else { "EtcdNotReady" };
        out.push(condition(ETCD_HEALTHY, status_word(healthy), reason, message, previous, now));
    } else if previous.iter().any(|c| c.type_ == ETCD_HEALTHY) {
        let message = "no etcd static pod runs on this node".to_owned();
        out.push(condition(ETCD_HEALTHY, "Unknown", "NoEtcdPod", message, previous, now));
    }
    out
}

/// An etcd pod: named `etcd` or `etcd-<node>` (kubeadm's static pod name;
/// the pod status carries no labels).
fn is_etcd(pod: &PodStatus) -> bool {
    pod.name == "etcd" || pod.name.starts_with("etcd-")
}

fn pod_healthy(pod: &PodStatus) -> bool {
    pod.phase == PodPhase::Running && pod.ready
}

fn status_word(healthy: bool) -> &'static str {
    if healthy {
        "True"
    } else {
        "False"
    }
}

/// `etcd-n1 running ready (restarts 0)`; several containers each get their
/// count (`(restarts app 0, sidecar 1)`), and a pod not ready names the
/// containers that are not running (`…; kube-apiserver CrashLoopBackOff`).
pub(crate) fn pod_summary(pod: &PodStatus) -> String {
    let phase = match pod.phase {
        PodPhase::Pending => "pending",
        PodPhase::Running => "running",
        PodPhase::Succeeded => "succeeded",
        PodPhase::Failed => "failed",
    };
    let ready = if pod.ready { "ready" } else { "not ready" };
    let restarts = match pod.containers.as_slice() {
        [only] => only.restart_count.to_string(),
        all => all.iter().map(|c| format!("{} {}", c.name, c.restart_count)).collect::<Vec<_>>().join(", "),
    };
    let mut detail = format!("restarts {restarts}");
    if !pod.ready {
        for c in &pod.containers {
            match &c.state {
                ContainerState::Running { .. } => {}
                ContainerState::Waiting { reason, .. } => detail.push_str(&format!("; {} {reason:?}", c.name)),
                ContainerState::Terminated { reason, exit_code, .. } => {
                    let reason = terminated_word(*reason);
                    detail.push_str(&format!("; {} terminated {reason} (exit code {exit_code})", c.name))
                }
            }
        }
        if let Some(message) = &pod.message {
            detail.push_str(&format!("; {message}"));
        }
    }
    format!("{} {phase} {ready} ({detail})", pod.name)
}

/// As `kubectl` spells it.
pub(crate) fn terminated_word(reason: TerminatedReason) -> &'static str {
    match reason {
        TerminatedReason::Completed => "Completed",
        TerminatedReason::Error => "Error",
        TerminatedReason::OomKilled => "OOMKilled",
    }
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    previous: &[NodeCondition],
    now: SystemTime,
) -> NodeCondition {
    let now = whole_seconds(now);
    let transition = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_heartbeat_time: Some(now),
        last_transition_time: Some(transition),
    }
}

/// A Kubernetes `Time`: whole seconds, as the API server stores it (so a
/// time read back compares equal to the one sent).
pub(crate) fn whole_seconds(t: SystemTime) -> Time {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or(k8s_openapi::jiff::Timestamp::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{at, killed, pod, pods, rerun, running, unready};

    fn find<'a>(list: &'a [NodeCondition], type_: &str) -> &'a NodeCondition {
        list.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} in {list:?}"))
    }

    fn control_plane() -> Vec<PodStatus> {
        ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
            .iter()
            .map(|name| running(pod(name, &[name]), 1))
            .collect()
    }

    #[test]
    fn all_pods_running_and_ready_are_healthy_and_named_with_restart_counts() {
        let list = conditions(&pods(control_plane()), &[], at(10));
        let c = find(&list, STATIC_PODS_HEALTHY);
        assert_eq!(c.status, "True");
        assert_eq!(c.reason.as_deref(), Some("StaticPodsHealthy"));
        assert_eq!(
            c.message.as_deref(),
            Some(
                "etcd-n1 running ready (restarts 0); kube-apiserver-n1 running ready (restarts 0); \
                 kube-controller-manager-n1 running ready (restarts 0); kube-scheduler-n1 running ready (restarts 0)"
            )
        );
        assert_eq!(c.last_heartbeat_time, Some(whole_seconds(at(10))));
        assert_eq!(c.last_transition_time, Some(whole_seconds(at(10))));
        let etcd = find(&list, ETCD_HEALTHY);
        assert_eq!((etcd.status.as_str(), etcd.reason.as_deref()), ("True", Some("EtcdReady")));
        assert_eq!(etcd.message.as_deref(), Some("etcd-n1 running ready (restarts 0)"));
    }

    #[test]
    fn a_restarted_apiserver_not_yet_ready_makes_the_pods_unhealthy_and_shows_its_restarts() {
        let mut all = control_plane();
        killed(&mut all[1], "kube-apiserver", 9, 5);
        rerun(&mut all[1], "kube-apiserver", 6);
        killed(&mut all[1], "kube-apiserver", 9, 7);
        rerun(&mut all[1], "kube-apiserver", 8);
        unready(&mut all[1], "kube-apiserver");
        let list = conditions(&pods(all), &[], at(10));
        let c = find(&list, STATIC_PODS_HEALTHY);
        assert_eq!((c.status.as_str(), c.reason.as_deref()), ("False", Some("StaticPodsUnhealthy")));
        let message = c.message.as_deref().unwrap_or_default();
        assert!(message.contains("kube-apiserver-n1 running not ready (restarts 2)"), "{message}");
        assert!(message.starts_with("etcd-n1 running ready (restarts 0); "), "{message}");
        // etcd itself is fine.
        assert_eq!(find(&list, ETCD_HEALTHY).status, "True");
    }

    #[test]
    fn a_terminated_container_is_named_with_its_reason_and_exit_code() {
        let mut etcd = running(pod("etcd", &["etcd"]), 1);
        killed(&mut etcd, "etcd", 9, 5);
        let list = conditions(&pods(vec![etcd]), &[], at(10));
        let e = find(&list, ETCD_HEALTHY);
        assert_eq!((e.status.as_str(), e.reason.as_deref()), ("False", Some("EtcdNotReady")));
        assert_eq!(
            e.message.as_deref(),
            Some("etcd-n1 running not ready (restarts 0; etcd terminated Error (exit code 137))")
        );
    }

    #[test]
    fn several_containers_each_show_their_restart_count() {
        let mut two = running(pod("web", &["app", "sidecar"]), 1);
        killed(&mut two, "sidecar", 15, 2);
        rerun(&mut two, "sidecar", 3);
        let list = conditions(&pods(vec![two]), &[], at(10));
        assert_eq!(
            find(&list, STATIC_PODS_HEALTHY).message.as_deref(),
            Some("web-n1 running ready (restarts app 0, sidecar 1)")
        );
    }

    #[test]
    fn transition_time_is_kept_while_the_status_stays_and_moves_when_it_changes() {
        let healthy = pods(control_plane());
        let first = conditions(&healthy, &[], at(10));
        let second = conditions(&healthy, &first, at(70));
        let c = find(&second, STATIC_PODS_HEALTHY);
        assert_eq!(c.last_transition_time, Some(whole_seconds(at(10))));
        assert_eq!(c.last_heartbeat_time, Some(whole_seconds(at(70))));

        let mut sick = control_plane();
        unready(&mut sick[0], "etcd");
        let third = conditions(&pods(sick), &second, at(130));
        for type_ in [STATIC_PODS_HEALTHY, ETCD_HEALTHY] {
            let c = find(&third, type_);
            assert_eq!(c.status, "False");
            assert_eq!(c.last_transition_time, Some(whole_seconds(at(130))), "{type_}");
        }
    }

    #[test]
    fn a_worker_without_etcd_gets_no_etcd_condition_and_an_empty_node_is_healthy() {
        let list = conditions(&pods(vec![]), &[], at(10));
        assert_eq!(list.len(), 1, "{list:?}");
        let c = find(&list, STATIC_PODS_HEALTHY);
        assert_eq!(c.status, "True");
        assert_eq!(c.message.as_deref(), Some("no static pods run on this node"));
    }

    #[test]
    fn an_etcd_condition_already_on_the_node_becomes_unknown_when_etcd_is_gone() {
        let before = conditions(&pods(control_plane()), &[], at(10));
        let after = conditions(&pods(vec![]), &before, at(20));
        let e = find(&after, ETCD_HEALTHY);
        assert_eq!((e.status.as_str(), e.reason.as_deref()), ("Unknown", Some("NoEtcdPod")));
        assert_eq!(e.last_transition_time, Some(whole_seconds(at(20))));
    }

    #[test]
    fn times_are_whole_seconds() {
        let t = at(5) + std::time::Duration::from_millis(750);
        assert_eq!(whole_seconds(t), whole_seconds(at(5)));
    }
}
