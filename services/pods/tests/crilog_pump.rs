#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A container's stdout and stderr pipes pumped into one CRI log file.

use kelson_pods::crilog::{container_log_path, pump, ContainerLog, LogLimits, Stream};
use kelson_pods::manifest::{parse, LoadOptions};
use kelson_pods::{Clock, FakeClock};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[test]
fn logs_live_under_namespace_name_uid_then_container_and_restart_count() {
    let text = br#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "etcd", "namespace": "kube-system"},
        "spec": {"containers": [{"name": "etcd", "image": "etcd:1"}]}}"#;
    let pod = parse(Path::new("/etc/kubernetes/manifests/etcd.json"), text, &LoadOptions::default()).unwrap();
    assert_eq!(
        container_log_path(Path::new("/var/log/pods"), &pod, "etcd", 3),
        Path::new(&format!("/var/log/pods/kube-system_etcd_{}/etcd/3.log", pod.uid))
    );
}

#[tokio::test]
async fn both_streams_land_in_one_file_line_by_line_with_partials_for_long_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web/0.log");
    let limits = LogLimits { max_line_bytes: 8, ..LogLimits::default() };
    let log = Arc::new(Mutex::new(ContainerLog::open(path.clone(), limits).unwrap()));
    let clock: Arc<dyn Clock> = Arc::new(FakeClock::new());

    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    let mut out = File::from(out_w);
    out.write_all(b"hello\nwor").unwrap();
    out.write_all(b"ld\na line longer than eight\nno newline at the end").unwrap();
    drop(out);
    let stdout = pump(log.clone(), Stream::Stdout, out_r, clock.clone()).await;
    let mut err = File::from(err_w);
    err.write_all(b"warning\n").unwrap();
    drop(err);
    let stderr = pump(log.clone(), Stream::Stderr, err_r, clock).await;
    stdout.unwrap();
    stderr.unwrap();

    let written = std::fs::read_to_string(&path).unwrap();
    let ts = "2023-11-14T22:13:20Z";
    let expected: String = [
        "stdout F hello",
        "stdout F world",
        "stdout P a line l",
        "stdout P onger th",
        "stdout F an eight",
        "stdout P no newli",
        "stdout P ne at th",
        "stdout F e end",
        "stderr F warning",
    ]
    .iter()
    .map(|l| format!("{ts} {l}\n"))
    .collect();
    assert_eq!(written, expected);
}

#[tokio::test]
async fn a_log_that_cannot_be_written_still_drains_the_pipe_and_reports_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    let log =
        ContainerLog::open(path.clone(), LogLimits { max_file_bytes: 10, keep_files: 1, max_line_bytes: 100 }).unwrap();
    // The directory disappears under the log, so rotation cannot reopen it.
    std::fs::remove_dir_all(dir.path()).unwrap();
    let log = Arc::new(Mutex::new(log));
    let (r, w) = nix::unistd::pipe().unwrap();
    let writer = std::thread::spawn(move || {
        let mut w = File::from(w);
        // More than a pipe holds: it only fits if the pump keeps reading.
        for _ in 0..4096 {
            w.write_all(&[b'x'; 63]).unwrap();
            w.write_all(b"\n").unwrap();
        }
    });
    let result = pump(log, Stream::Stdout, r, Arc::new(FakeClock::new())).await;
    writer.join().unwrap();
    let err = result.unwrap_err();
    assert!(err.to_string().contains("0.log"), "{err}");
}
