//! The reporter against a fake API server on 127.0.0.1: real TLS (a CA,
//! a server certificate and the node's client certificate made with
//! rcgen, client certificates required), real HTTP, the real kube client.
//! The fake stands in for the transport only; the real API server's
//! behaviour (strategic merge, the Node authorizer) is checked by the QEMU
//! cluster test.

mod common;

use common::*;
use kelson_base::Exit;
use kelson_cluster::Reporter;
use kelson_pods::runtime::PodsStatus;
use kelson_pods::RestartPolicy;
use serde_json::{json, Value};
use std::time::SystemTime;
use tokio::sync::{oneshot, watch};

fn condition<'a>(patch: &'a Seen, type_: &str) -> &'a Value {
    patch.body["status"]["conditions"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} in {:#}", patch.body))
}

fn is_event_post(s: &Seen) -> bool {
    s.method == "POST" && s.path == "/api/v1/namespaces/default/events"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reporter_waits_for_the_node_then_patches_only_kelsons_conditions_and_posts_events() {
    let pki = pki();
    let server = FakeApiServer::start(&pki, 3).await;
    let (pods_tx, pods_rx) =
        watch::channel(PodsStatus { pods: vec![running_pod("etcd"), running_pod("kube-apiserver")] });
    let (stop, stopped) = oneshot::channel::<()>();
    let reporter = Reporter::new(config(&pki, &server.url)).expect("reporter");
    let task = tokio::spawn(reporter.run(pods_rx, async {
        let _ = stopped.await;
    }));

    let seen = server
        .wait_for("a status patch and two Started events", |seen| {
            seen.iter().any(is_status_patch) && seen.iter().filter(|s| is_event_post(s)).count() >= 2
        })
        .await;

    // Every request came over TLS with the node's certificate.
    for s in &seen {
        assert_eq!(s.client_cert.as_deref(), Some(pki.client_cert_der.as_slice()), "{} {}", s.method, s.path);
    }
    // It asked for the Node until it existed, and wrote nothing before.
    let first_found =
        seen.iter().position(|s| s.method == "GET" && s.status == 200).expect("a GET that found the Node");
    assert_eq!(seen.iter().filter(|s| s.method == "GET" && s.status == 404).count(), 3);
    assert!(seen[..first_found].iter().all(|s| s.method == "GET"), "{seen:#?}");

    let patch = seen.iter().find(|s| is_status_patch(s)).expect("status patch");
    assert_eq!(patch.content_type.as_deref(), Some("application/strategic-merge-patch+json"));
    let types: Vec<&str> = patch.body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, ["KelsonStaticPodsHealthy", "KelsonEtcdHealthy"], "only Kelson's conditions: {:#}", patch.body);
    assert_eq!(patch.body.as_object().map(|o| o.len()), Some(1), "only status: {:#}", patch.body);
    let pods = condition(patch, "KelsonStaticPodsHealthy");
    assert_eq!(pods["status"], "True");
    assert_eq!(pods["message"], "etcd-n1 running ready (restarts 0); kube-apiserver-n1 running ready (restarts 0)");
    // Still True as the Node already said: its transition time is kept.
    assert_eq!(pods["lastTransitionTime"], "2025-06-01T12:00:00Z");
    assert_eq!(condition(patch, "KelsonEtcdHealthy")["status"], "True");

    let posts: Vec<&Seen> = seen.iter().filter(|s| is_event_post(s)).collect();
    let event = &posts[0].body;
    // uid = the node's name, what `kubectl describe node` searches for.
    assert_eq!(event["involvedObject"], json!({"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE}));
    assert_eq!(event["source"], json!({"component": "kelson-init", "host": NODE}));
    assert_eq!(event["metadata"]["namespace"], "default");
    // RFC 3339 in whole seconds, as metav1.Time: `2026-12-07T04:32:30Z`.
    let first = event["firstTimestamp"].as_str().unwrap_or_default();
    assert!(first.len() == 20 && first.ends_with('Z') && first.as_bytes()[10] == b'T', "{first:?}");
    assert_eq!(event["lastTimestamp"], event["firstTimestamp"]);
    assert_eq!(event["count"], 1);
    assert_eq!((&event["type"], &event["reason"]), (&json!("Normal"), &json!("Started")));
    let messages: Vec<&str> = posts.iter().filter_map(|p| p.body["message"].as_str()).collect();
    assert_eq!(
        messages,
        [
            "Started container etcd of static pod kube-system/etcd-n1",
            "Started container kube-apiserver of static pod kube-system/kube-apiserver-n1"
        ]
    );

    // kill -9 of the API server, and its restart.
    let before = server.seen().len();
    pods_tx.send_modify(|status| {
        let pod = &mut status.pods[1];
        let c = pod.container_mut("kube-apiserver").expect("container");
        c.set_terminated(Exit::Signal(9), false, SystemTime::now(), None);
        c.set_running(SystemTime::now());
        pod.update_phase(RestartPolicy::Always);
    });
    let seen = server
        .wait_for("a Restarted event and the patch after it", |seen| {
            let new = &seen[before.min(seen.len())..];
            new.iter().any(|s| is_event_post(s) && s.body["reason"] == "Restarted") && new.iter().any(is_status_patch)
        })
        .await;
    let new = &seen[before..];
    let restarted = new.iter().find(|s| is_event_post(s) && s.body["reason"] == "Restarted").expect("Restarted event");
    assert_eq!(restarted.body["type"], "Warning");
    assert_eq!(
        restarted.body["message"],
        "Restarted container kube-apiserver of static pod kube-system/kube-apiserver-n1 (restart count 1); \
         last run ended: Error, exit code 137 (signal 9)"
    );
    let patch = new.iter().find(|s| is_status_patch(s)).expect("status patch");
    let pods = condition(patch, "KelsonStaticPodsHealthy");
    assert_eq!(pods["status"], "False", "running but not yet ready again: {pods:#}");
    assert_eq!(pods["message"], "etcd-n1 running ready (restarts 0); kube-apiserver-n1 running not ready (restarts 1)");
    assert_ne!(pods["lastTransitionTime"], "2025-06-01T12:00:00Z", "the status changed");

    stop.send(()).expect("reporter still running");
    tokio::time::timeout(PATIENCE, task).await.expect("reporter stops on shutdown").expect("reporter task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_event_within_ten_minutes_bumps_the_count_of_the_first() {
    let pki = pki();
    let server = FakeApiServer::start(&pki, 0).await;
    let (pods_tx, pods_rx) = watch::channel(PodsStatus { pods: vec![running_pod("etcd")] });
    let (stop, stopped) = oneshot::channel::<()>();
    let reporter = Reporter::new(config(&pki, &server.url)).expect("reporter");
    let task = tokio::spawn(reporter.run(pods_rx, async {
        let _ = stopped.await;
    }));
    let patches = |seen: &[Seen]| seen.iter().filter(|s| is_status_patch(s)).count();
    let mut expected = 1;
    server.wait_for("the first status patch", |seen| patches(seen) >= expected).await;
    // Readiness lost, back, lost again: each change is one status patch;
    // the two losses are the same event.
    for ready in [false, true, false] {
        pods_tx.send_modify(|status| {
            status.pods[0].container_mut("etcd").expect("container").set_probed(true, ready);
            status.pods[0].update_phase(RestartPolicy::Always);
        });
        expected += 1;
        server.wait_for("a status patch for the readiness change", |seen| patches(seen) >= expected).await;
    }
    let seen = server
        .wait_for("the repeated Unhealthy event", |seen| {
            seen.iter().any(|s| s.method == "PATCH" && s.path.starts_with("/api/v1/namespaces/default/events/"))
        })
        .await;
    let unhealthy: Vec<&Seen> = seen.iter().filter(|s| is_event_post(s) && s.body["reason"] == "Unhealthy").collect();
    assert_eq!(unhealthy.len(), 1, "posted once: {seen:#?}");
    let name = unhealthy[0].body["metadata"]["name"].as_str().expect("event name");
    assert!(name.starts_with("n1."), "{name}");
    let bump = seen.iter().find(|s| s.method == "PATCH" && s.path.contains("/events/")).expect("event patch");
    assert_eq!(bump.path, format!("/api/v1/namespaces/default/events/{name}"));
    assert_eq!(bump.body["count"], 2);
    assert!(bump.body["lastTimestamp"].is_string(), "{:#}", bump.body);

    stop.send(()).expect("reporter still running");
    tokio::time::timeout(PATIENCE, task).await.expect("reporter stops on shutdown").expect("reporter task");
}

#[test]
fn the_key_never_shows_in_debug_output_or_errors() {
    let secret = "-----BEGIN PRIVATE KEY-----\nTOPSECRET!KEY*MATERIAL\n-----END PRIVATE KEY-----\n";
    let pki = pki();
    let mut config = config(&pki, "https://127.0.0.1:6443");
    config.key_pem = secret.as_bytes().to_vec();
    assert!(!format!("{config:?}").contains("TOPSECRET"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _guard = runtime.enter();
    let error = Reporter::new(config).err().expect("a malformed key is refused");
    let text = error.to_string();
    assert!(text.starts_with("reading the node's client key: "), "{text}");
    assert!(!text.contains("TOPSECRET"), "{text}");
}

#[test]
fn a_pem_without_a_certificate_is_refused_naming_which() {
    let pki = pki();
    let mut config = config(&pki, "https://127.0.0.1:6443");
    config.ca_pem = b"not a certificate".to_vec();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _guard = runtime.enter();
    let error = Reporter::new(config).err().expect("refused");
    assert_eq!(error.to_string(), "reading the cluster CA: no CERTIFICATE block in the PEM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pod_changes_the_conditions_are_patched_again_as_a_heartbeat() {
    let pki = pki();
    let server = FakeApiServer::start(&pki, 0).await;
    let (_pods_tx, pods_rx) = watch::channel(PodsStatus { pods: vec![running_pod("etcd")] });
    let (stop, stopped) = oneshot::channel::<()>();
    let mut config = config(&pki, &server.url);
    config.timing.heartbeat = std::time::Duration::from_millis(100);
    let task = tokio::spawn(Reporter::new(config).expect("reporter").run(pods_rx, async {
        let _ = stopped.await;
    }));
    let seen =
        server.wait_for("three status patches", |seen| seen.iter().filter(|s| is_status_patch(s)).count() >= 3).await;
    let patches: Vec<&Seen> = seen.iter().filter(|s| is_status_patch(s)).collect();
    for patch in &patches {
        let c = condition(patch, "KelsonStaticPodsHealthy");
        assert_eq!(c["status"], "True");
        // Unchanged status: the Node's transition time stays.
        assert_eq!(c["lastTransitionTime"], "2025-06-01T12:00:00Z");
        assert!(c["lastHeartbeatTime"].is_string());
    }
    // One Started event, not one per heartbeat.
    assert_eq!(seen.iter().filter(|s| is_event_post(s)).count(), 1, "{seen:#?}");
    stop.send(()).expect("reporter still running");
    tokio::time::timeout(PATIENCE, task).await.expect("reporter stops on shutdown").expect("reporter task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deleted_under_the_reporter_is_waited_for_again() {
    let pki = pki();
    let server = FakeApiServer::start(&pki, 0).await;
    let (pods_tx, pods_rx) = watch::channel(PodsStatus { pods: vec![running_pod("etcd")] });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(Reporter::new(config(&pki, &server.url)).expect("reporter").run(pods_rx, async {
        let _ = stopped.await;
    }));
    server.wait_for("the first status patch", |seen| seen.iter().any(is_status_patch)).await;

    server.node_deleted.store(true, std::sync::atomic::Ordering::SeqCst);
    pods_tx.send_modify(|status| {
        status.pods[0].container_mut("etcd").expect("container").set_probed(true, false);
        status.pods[0].update_phase(RestartPolicy::Always);
    });
    let refused_patch = |s: &Seen| is_status_patch(s) && s.status == 404;
    server
        .wait_for("a GET of the Node after its status patch was refused", |seen| {
            seen.iter().position(refused_patch).is_some_and(|at| seen[at..].iter().any(|s| s.method == "GET"))
        })
        .await;
    server.node_deleted.store(false, std::sync::atomic::Ordering::SeqCst);
    let seen = server
        .wait_for("a status patch after the Node came back", |seen| {
            seen.iter()
                .position(refused_patch)
                .is_some_and(|at| seen[at..].iter().any(|s| is_status_patch(s) && s.status == 200))
        })
        .await;
    let patch = seen.iter().rev().find(|s| is_status_patch(s) && s.status == 200).expect("patch");
    assert_eq!(condition(patch, "KelsonEtcdHealthy")["status"], "False");
    stop.send(()).expect("reporter still running");
    tokio::time::timeout(PATIENCE, task).await.expect("reporter stops on shutdown").expect("reporter task");
}
