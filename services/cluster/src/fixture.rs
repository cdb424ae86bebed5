//! Pod statuses for the unit tests, made the way the pod manager makes
//! them: a manifest parsed by kelson-pods, then its state transitions.

use kelson_base::Exit;
use kelson_pods::manifest::{parse, LoadOptions};
use kelson_pods::runtime::PodsStatus;
use kelson_pods::status::PodStatus;
use kelson_pods::RestartPolicy;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

/// A pending pod `<name>-n1` in kube-system with these containers.
pub fn pod(name: &str, containers: &[&str]) -> PodStatus {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: kube-system\nspec:\n  hostNetwork: true\n  containers:\n"
    );
    for c in containers {
        yaml.push_str(&format!("  - name: {c}\n    image: registry.k8s.io/{c}:v1.36.3\n"));
    }
    let path = format!("/etc/kubernetes/manifests/{name}.yaml");
    let options = LoadOptions { node_name: Some("n1".to_owned()) };
    let spec = parse(Path::new(&path), yaml.as_bytes(), &options).expect("test manifest parses");
    PodStatus::new(&spec, Some("10.0.0.1".to_owned()), at(0))
}

/// Every container running and ready since `secs`.
pub fn running(mut pod: PodStatus, secs: u64) -> PodStatus {
    let names: Vec<String> = pod.containers.iter().map(|c| c.name.clone()).collect();
    for name in names {
        let c = pod.container_mut(&name).expect("container exists");
        c.set_running(at(secs));
        c.set_probed(true, true);
    }
    pod.update_phase(RestartPolicy::Always);
    pod
}

/// `container` killed by `signal` at `secs`.
pub fn killed(pod: &mut PodStatus, container: &str, signal: i32, secs: u64) {
    pod.container_mut(container).expect("container exists").set_terminated(Exit::Signal(signal), false, at(secs), None);
    pod.update_phase(RestartPolicy::Always);
}

/// `container` running again (a restart after a termination) and ready.
pub fn rerun(pod: &mut PodStatus, container: &str, secs: u64) {
    let c = pod.container_mut(container).expect("container exists");
    c.set_running(at(secs));
    c.set_probed(true, true);
    pod.update_phase(RestartPolicy::Always);
}

/// `container` still running but its readiness probe failing.
pub fn unready(pod: &mut PodStatus, container: &str) {
    pod.container_mut(container).expect("container exists").set_probed(true, false);
    pod.update_phase(RestartPolicy::Always);
}

pub fn pods(pods: Vec<PodStatus>) -> PodsStatus {
    PodsStatus { pods }
}
