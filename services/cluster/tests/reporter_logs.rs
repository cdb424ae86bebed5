//! What the reporter logs while the API server is down and the Node not
//! yet registered. A file of its own: tracing caches per call site whether
//! anyone listens, and tests on other threads without this test's
//! subscriber would make its INFO lines vanish.

mod common;

use common::*;
use kelson_cluster::Reporter;
use kelson_pods::runtime::PodsStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Log lines, captured for one test.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

// One thread, so the reporter task logs to this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_down_api_server_and_a_missing_node_are_each_logged_once_while_retried() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // A port with nobody listening: connections are refused.
    let address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address").to_string()
    };
    let pki = pki();
    let (_pods_tx, pods_rx) = watch::channel(PodsStatus { pods: vec![running_pod("etcd")] });
    let (stop, stopped) = oneshot::channel::<()>();
    let reporter = Reporter::new(config(&pki, &format!("https://{address}"))).expect("reporter");
    let task = tokio::spawn(reporter.run(pods_rx, async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !logs.text().contains("API server unreachable") {
        assert!(tokio::time::Instant::now() < deadline, "no unreachable warning; logs: {}", logs.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Several more tries (20..100 ms apart) go by quietly.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let server = FakeApiServer::start_on(&pki, 5, &address).await;
    server.wait_for("a status patch", |seen| seen.iter().any(is_status_patch)).await;
    // The round that patched ends by saying it is back.
    while !logs.text().contains("reporting again") {
        assert!(tokio::time::Instant::now() < deadline, "no recovery message; logs: {}", logs.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).expect("reporter still running");
    tokio::time::timeout(PATIENCE, task).await.expect("reporter stops").expect("reporter task");

    let text = logs.text();
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("reading Node n1: API server unreachable"), 1, "{text}");
    assert_eq!(count("reading Node n1: not found yet (the kubelet registers it)"), 1, "{text}");
    assert_eq!(count("reporting again"), 1, "{text}");
    assert_eq!(count("Node n1 is registered"), 1, "{text}");
    assert_eq!(server.seen().iter().filter(|s| s.status == 404).count(), 5);
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}
