#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The doubles on their own: recording, /healthz, exit codes, crash, hang.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KUBELET: &str = env!("CARGO_BIN_EXE_kubelet-double");
const KUBE_PROXY: &str = env!("CARGO_BIN_EXE_kube-proxy-double");

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn wait_for_health(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(answer) = get(port, "/healthz") {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing answered on {port}");
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_kubelet_double_records_argv_and_config_and_serves_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let port = free_port();
    std::fs::write(&config, format!("kind: KubeletConfiguration\nhealthzPort: {port}\n")).unwrap();
    let record = dir.path().join("record");
    let child = Command::new(KUBELET)
        .arg(format!("--config={}", config.display()))
        .args(["--hostname-override=n1", "--v=2"])
        .env("KELSON_DOUBLE_RECORD_DIR", &record)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Killed(child);
    let answer = wait_for_health(port);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    assert!(get(port, "/metrics").unwrap().starts_with("HTTP/1.1 404"));
    let argv = std::fs::read_to_string(record.join("kubelet-double.argv")).unwrap();
    assert_eq!(argv, format!("{KUBELET}\n--config={}\n--hostname-override=n1\n--v=2\n", config.display()));
    assert_eq!(std::fs::read(record.join("kubelet-double.config")).unwrap(), std::fs::read(&config).unwrap());
}

#[test]
fn the_kube_proxy_double_takes_its_port_from_healthz_bind_address_and_records_next_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kp.yaml");
    let port = free_port();
    std::fs::write(&config, format!("kind: KubeProxyConfiguration\nhealthzBindAddress: 0.0.0.0:{port}\n")).unwrap();
    let child =
        Command::new(KUBE_PROXY).args(["--config", config.to_str().unwrap()]).stdout(Stdio::null()).spawn().unwrap();
    let _guard = Killed(child);
    assert!(wait_for_health(port).starts_with("HTTP/1.1 200 OK"));
    assert!(dir.path().join("kube-proxy-double.config").exists());
}

#[test]
fn told_an_exit_code_it_exits_with_it_at_once_or_after_the_crash_delay() {
    let status = Command::new(KUBELET).arg("--double-exit-code=7").stdout(Stdio::null()).status().unwrap();
    assert_eq!(status.code(), Some(7));
    let began = Instant::now();
    let status = Command::new(KUBE_PROXY)
        .args(["--double-crash-after=0.3", "--double-exit-code=3"])
        .arg(format!("--double-healthz-port={}", free_port()))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(began.elapsed() >= Duration::from_millis(300));
}

#[test]
fn told_to_hang_it_survives_sigterm() {
    use std::os::unix::process::ExitStatusExt;
    let port = free_port();
    let child = Command::new(KUBELET)
        .arg(format!("--double-healthz-port={port}"))
        .env("KELSON_DOUBLE_IGNORE_SIGTERM", "1")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Killed(child);
    wait_for_health(port);
    let pid = guard.0.id() as i32;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(guard.0.try_wait().unwrap().is_none(), "the double died of SIGTERM");
    guard.0.kill().unwrap();
    assert_eq!(guard.0.wait().unwrap().signal(), Some(libc::SIGKILL));
}
