#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A pod's status written to its file and read back the way the API
//! will read it.

use kelson_base::Exit;
use kelson_pods::manifest::{load, LoadOptions};
use kelson_pods::status::*;
use kelson_pods::Clock;
use kelson_pods::FakeClock;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn etcd() -> kelson_pods::PodSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/good/etcd.yaml");
    load(&path, &LoadOptions { node_name: Some("node1".to_owned()) }).unwrap()
}

#[test]
fn a_crash_looping_host_network_pod_is_written_as_json_named_after_namespace_and_name() {
    let spec = etcd();
    let clock = FakeClock::new();
    let dir = tempfile::tempdir().unwrap();
    let mut status = PodStatus::new(&spec, Some("10.0.0.10".to_owned()), clock.wall());
    let path = status.write(dir.path()).unwrap();
    assert_eq!(path, dir.path().join("kube-system_etcd-node1.json"));
    let first: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(first["phase"], "Pending");
    assert_eq!(first["containers"][0]["state"], json!({"waiting": {"reason": "ContainerCreating", "message": null}}));

    let etcd = status.container_mut("etcd").unwrap();
    etcd.set_running(clock.wall());
    clock.advance(Duration::from_secs(3));
    etcd.set_terminated(Exit::Code(1), false, clock.wall(), None);
    etcd.set_waiting(WaitingReason::CrashLoopBackOff, Some("back-off 10s restarting failed container".to_owned()));
    status.update_phase(spec.restart_policy);
    status.write(dir.path()).unwrap();

    let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        written,
        json!({
            "namespace": "kube-system",
            "name": "etcd-node1",
            "uid": spec.uid.0,
            "manifest": spec.manifest,
            "phase": "Running",
            "ready": false,
            "podIP": "10.0.0.10",
            "hostIP": "10.0.0.10",
            "startTime": "2023-11-14T22:13:20Z",
            "message": null,
            "containers": [{
                "name": "etcd",
                "image": "registry.k8s.io/etcd:3.5.15-0",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}},
                "lastState": {"terminated": {
                    "exitCode": 1,
                    "signal": null,
                    "reason": "Error",
                    "message": null,
                    "startedAt": "2023-11-14T22:13:20Z",
                    "finishedAt": "2023-11-14T22:13:23Z"
                }},
                "ready": false,
                "started": false,
                "restartCount": 0
            }]
        })
    );
    let back: PodStatus = serde_json::from_value(written).unwrap();
    assert_eq!(back.containers[0].state, status.containers[0].state, "the file reads back into the same status");

    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "no temporary file is left behind: {names:?}");
    remove_status(dir.path(), "kube-system", "etcd-node1").unwrap();
    assert!(!path.exists());
    remove_status(dir.path(), "kube-system", "etcd-node1").unwrap();
}

#[test]
fn a_ready_running_pod_is_ready_and_a_pod_on_its_own_network_waits_for_its_ip() {
    let spec = etcd();
    let clock = FakeClock::new();
    let mut status = PodStatus::new(&spec, None, clock.wall());
    let c = status.container_mut("etcd").unwrap();
    c.set_running(clock.wall());
    c.set_probed(true, true);
    status.update_phase(spec.restart_policy);
    assert_eq!((status.phase, status.ready), (PodPhase::Running, true));

    let mut own_network = spec.clone();
    own_network.host_network = false;
    let status = PodStatus::new(&own_network, Some("10.0.0.10".to_owned()), clock.wall());
    assert_eq!((status.pod_ip, status.host_ip.as_deref()), (None, Some("10.0.0.10")));
}

#[test]
fn a_status_directory_that_cannot_be_made_is_reported_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("pods");
    std::fs::write(&blocker, "a file where the directory should be").unwrap();
    let status = PodStatus::new(&etcd(), None, FakeClock::new().wall());
    let err = status.write(&blocker).unwrap_err();
    assert_eq!(err.to_string(), format!("writing pod status file {}/kube-system_etcd-node1.json", blocker.display()));
}
