//! The real kelsonctl binary against `kelson_api::serve` with FakeNodes on
//! 127.0.0.1, with the PKI and the kelsonconfig files `kelsonctl gen
//! cluster` writes: what an operator runs, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kelson_api::fake::{FakeNode, SNAPSHOT};
use kelson_api::types::{LogSource, Service};
use kelson_api::{serve, ServerSettings, TlsMaterial};
use kelsonctl::api::KelsonConfig;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::watch;

/// A cluster folder from `gen cluster` and a fake node serving each node's
/// management API certificate.
struct Cluster {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    runtime: tokio::runtime::Runtime,
    nodes: Vec<Served>,
}

struct Served {
    name: &'static str,
    fake: Arc<FakeNode>,
    address: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

const NODES: [&str; 2] = ["demo-cp-1", "demo-worker-1"];

fn gen_cluster(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_kelsonctl"))
        .args(["gen", "cluster", "--name", "demo", "--workers", "1", "--output"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `gen node` of worker `name` into the cluster folder `dir`.
fn gen_node(dir: &Path, name: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_kelsonctl"))
        .args(["gen", "node", "--name", name, "--cluster"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with_added(&[])
    }

    /// As [`Cluster::start`], with workers `added` by `gen node` afterwards
    /// and served too, after the others.
    fn start_with_added(added: &[&'static str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("demo");
        gen_cluster(&dir);
        for name in added {
            gen_node(&dir, name);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let ca_pem = std::fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
        let nodes = NODES
            .iter()
            .chain(added)
            .map(|&name| {
                let read = |file: &str| std::fs::read_to_string(dir.join("pki").join(name).join(file)).unwrap();
                let material = TlsMaterial {
                    ca_pem: ca_pem.clone(),
                    cert_pem: read("management-api.crt"),
                    key_pem: read("management-api.key"),
                };
                let fake = Arc::new(FakeNode::new());
                fake.state().version.node = name.to_owned();
                fake.state().status.node = name.to_owned();
                let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
                let address = listener.local_addr().unwrap();
                let (_keep, tls) = watch::channel(Some(material));
                let served = fake.clone();
                let server = runtime.spawn(async move {
                    // The sender lives as long as the server: the material stays.
                    let _keep = _keep;
                    serve(listener, served, tls, ServerSettings { audit_log: None }).await;
                });
                Served { name, fake, address, server }
            })
            .collect();
        Cluster { _tmp: tmp, dir, runtime, nodes }
    }

    /// `--nodes` naming node `i` at its fake's address.
    fn target(&self, i: usize) -> String {
        format!("{}=127.0.0.1:{}", self.nodes[i].name, self.nodes[i].address.port())
    }

    fn fake(&self, i: usize) -> &FakeNode {
        &self.nodes[i].fake
    }

    fn command(&self, config: &str, nodes: &[usize], args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kelsonctl"));
        let targets: Vec<String> = nodes.iter().map(|&i| self.target(i)).collect();
        command.args(args).arg("--kelsonconfig").arg(self.dir.join(config)).arg("--nodes").arg(targets.join(","));
        command.env_remove("KELSONCONFIG");
        command
    }

    /// kelsonctl as admin against node 0.
    fn admin(&self, args: &[&str]) -> Output {
        self.command("kelsonconfig", &[0], args).output().unwrap()
    }

    fn stop(&mut self, i: usize) {
        let server = &self.nodes[i].server;
        server.abort();
        let _ = self.runtime.block_on(async { (&mut self.nodes[i].server).await });
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status, stdout(out), stderr(out));
}

#[test]
fn status_services_and_a_restart_reach_the_node_verified_by_its_name() {
    let cluster = Cluster::start();
    let out = cluster.admin(&["status"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.lines().next().unwrap().starts_with("NODE"), "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with("demo-cp-1  ready"), "{text}");
    assert!(text.contains("demo-cp-1  network"), "{text}");

    let out = cluster.admin(&["services"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.starts_with("demo-cp-1  kubelet") && l.contains("running")), "{text}");

    let out = cluster.admin(&["restart", "kubelet", "-o", "json"]);
    assert_ok(&out);
    let restarted: Service = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((restarted.name.as_str(), restarted.restarts), ("kubelet", 1));
    assert!(cluster.fake(0).calls().contains(&"service_action kubelet restart".to_owned()));

    let out = cluster.admin(&["stop", "kube-proxy"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("demo-cp-1 (127.0.0.1:"), "{err}");
    assert!(err.contains("): stopping service kube-proxy: 409 Conflict (conflict): "), "{err}");
}

#[test]
fn logs_follow_prints_lines_pushed_while_following_and_ends_with_the_stream() {
    let cluster = Cluster::start();
    let kubelet = LogSource::Service("kubelet".into());
    cluster.fake(0).push_log(&kubelet, "before");
    let mut child =
        cluster.command("kelsonconfig", &[0], &["logs", "-f", "kubelet"]).stdout(Stdio::piped()).spawn().unwrap();
    let (lines, received) = mpsc::channel();
    let reader = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || received.recv_timeout(Duration::from_secs(20)).expect("a log line within 20 s");
    assert!(next().ends_with(" before"));
    cluster.runtime.block_on(cluster.fake(0).wait_for_followers(&kubelet, 1));
    cluster.fake(0).push_log(&kubelet, "first while following");
    cluster.fake(0).push_log(&kubelet, "second while following");
    assert_eq!(next(), "2023-11-14T22:13:20.000Z first while following");
    assert_eq!(next(), "2023-11-14T22:13:20.000Z second while following");
    cluster.fake(0).close_logs();
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_pod_container_log_is_read_from_kube_system() {
    let cluster = Cluster::start();
    let etcd = LogSource::Container {
        namespace: "kube-system".into(),
        pod: "etcd-fake-node".into(),
        container: "etcd".into(),
    };
    cluster.fake(0).push_log(&etcd, "etcd says hi");
    let out = cluster.admin(&["logs", "etcd-fake-node/etcd", "-o", "json"]);
    assert_ok(&out);
    let line: kelson_api::types::LogLine = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(line.text, "etcd says hi");
}

#[test]
fn config_apply_shows_the_dry_run_diff_and_every_problem_of_a_rejected_config() {
    let cluster = Cluster::start();
    let file = cluster.dir.join("patch.yaml");
    std::fs::write(&file, "apiVersion: kelson/v1\nkind: MachineConfig\nnode:\n  name: renamed\n").unwrap();
    let out = cluster.admin(&["config", "apply", file.to_str().unwrap(), "--dry-run"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.starts_with("dry run: nothing was changed\n"), "{text}");
    assert!(text.contains("+  name: renamed\n") && text.contains("-  name: fake-node\n"), "{text}");
    assert!(text.contains("would apply live: files\nreboot required for: none\n"), "{text}");
    assert!(cluster.fake(0).state().config_yaml.contains("fake-node"), "a dry run changed the config");

    std::fs::write(&file, "invalid: true\n").unwrap();
    let out = cluster.admin(&["config", "apply", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("applying config {}: the config was rejected with 1 problem(s)", file.display())),
        "{err}"
    );
    assert!(err.contains("\napi: : the fake rejects any document containing 'invalid'\n"), "{err}");
}

#[test]
fn several_nodes_answer_under_their_names_and_a_down_node_fails_the_run_by_name() {
    let mut cluster = Cluster::start();
    let out = cluster.command("kelsonconfig", &[0, 1], &["version"]).output().unwrap();
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("\ndemo-cp-1      0.0.0-fake  v1\ndemo-worker-1  0.0.0-fake  v1\n"), "{text}");

    let out = cluster.command("kelsonconfig", &[0, 1], &["version", "-o", "json"]).output().unwrap();
    assert_ok(&out);
    let map: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(map["demo-worker-1"]["node"], "demo-worker-1");

    let kubelet = LogSource::Service("kubelet".into());
    cluster.fake(0).push_log(&kubelet, "from cp");
    cluster.fake(1).push_log(&kubelet, "from worker");
    let out = cluster.command("kelsonconfig", &[0, 1], &["logs", "kubelet"]).output().unwrap();
    assert_ok(&out);
    let mut lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(
        lines,
        ["demo-cp-1: 2023-11-14T22:13:20.000Z from cp", "demo-worker-1: 2023-11-14T22:13:20.000Z from worker"]
    );

    cluster.stop(1);
    let out = cluster.command("kelsonconfig", &[0, 1], &["version"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("demo-cp-1  0.0.0-fake  v1"), "{}", stdout(&out));
    let err = stderr(&out);
    let down =
        format!("demo-worker-1 (127.0.0.1:{}): getting the version: connecting: ", cluster.nodes[1].address.port());
    assert!(err.contains(&down), "{err}");
    assert!(!err.contains("demo-cp-1"), "{err}");
}

#[test]
fn a_node_added_by_gen_node_answers_both_kelsonconfigs_verified_by_its_name() {
    let cluster = Cluster::start_with_added(&["demo-worker-2"]);
    for config in ["kelsonconfig", "kelsonconfig-read-only"] {
        let listed =
            KelsonConfig::from_yaml(Path::new(config), &std::fs::read_to_string(cluster.dir.join(config)).unwrap())
                .unwrap();
        let names: Vec<&str> = listed.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["demo-cp-1", "demo-worker-1", "demo-worker-2"], "{config}");
        let out = cluster.command(config, &[2], &["version"]).output().unwrap();
        assert_ok(&out);
        assert!(stdout(&out).contains("\ndemo-worker-2  0.0.0-fake  v1\n"), "{}", stdout(&out));
    }
    // Its certificate names it alone: presented as another node, it is refused.
    let port = cluster.nodes[2].address.port();
    let out = Command::new(env!("CARGO_BIN_EXE_kelsonctl"))
        .args(["version", "--kelsonconfig"])
        .arg(cluster.dir.join("kelsonconfig"))
        .args(["--nodes", &format!("demo-worker-1=127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let expected = format!(
        "demo-worker-1 (127.0.0.1:{port}): getting the version: the node's certificate is not issued to node name \
         demo-worker-1"
    );
    assert!(err.contains(&expected), "{err}");
}

#[test]
fn the_read_only_config_reads_but_is_refused_a_restart_with_its_role_named() {
    let cluster = Cluster::start();
    let out = cluster.command("kelsonconfig-read-only", &[0], &["services"]).output().unwrap();
    assert_ok(&out);
    let out = cluster.command("kelsonconfig-read-only", &[0], &["restart", "kubelet"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("restarting service kubelet: 403 Forbidden (forbidden)"), "{err}");
    assert!(err.contains("this kelsonconfig's client certificate is CN=read-only, O=kelson:read-only"), "{err}");
    assert!(!cluster.fake(0).calls().iter().any(|c| c.starts_with("service_action")));
}

#[test]
fn upgrade_streams_the_bundle_and_a_snapshot_lands_whole_in_its_file() {
    let cluster = Cluster::start();
    let bundle: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let path = cluster.dir.join("bundle.tar");
    std::fs::write(&path, &bundle).unwrap();
    let out = cluster.admin(&["upgrade", path.to_str().unwrap(), "--reboot"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("demo-cp-1  0.0.1-fake  kelson-usr-b  kelson-0.0.1-fake+3.efi  true"),
        "{}",
        stdout(&out)
    );
    let upgrades = cluster.fake(0).state().upgrades.clone();
    assert_eq!(upgrades.len(), 1);
    assert!(upgrades[0].reboot);
    assert!(upgrades[0].bundle == bundle, "the bundle arrived changed");

    let snapshot = cluster.dir.join("etcd.db");
    let out = cluster.admin(&["etcd", "snapshot", snapshot.to_str().unwrap()]);
    assert_ok(&out);
    assert_eq!(std::fs::read(&snapshot).unwrap(), SNAPSHOT);
    assert!(!cluster.dir.join("etcd.db.partial").exists());
}

#[test]
fn another_clusters_config_is_told_the_node_is_not_signed_by_its_ca() {
    let cluster = Cluster::start();
    let other = cluster.dir.parent().unwrap().join("other");
    gen_cluster(&other);
    let out = Command::new(env!("CARGO_BIN_EXE_kelsonctl"))
        .args(["version", "--kelsonconfig"])
        .arg(other.join("kelsonconfig"))
        .args(["--nodes", &cluster.target(0)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let expected = format!(
        "demo-cp-1 (127.0.0.1:{}): getting the version: the node's certificate is not signed by this config's CA",
        cluster.nodes[0].address.port()
    );
    assert!(err.contains(&expected), "{err}");
}

#[test]
fn the_config_is_found_through_the_environment_or_the_working_directory() {
    let cluster = Cluster::start();
    let target = cluster.target(0);
    let out = Command::new(env!("CARGO_BIN_EXE_kelsonctl"))
        .args(["version", "--nodes", &target])
        .env("KELSONCONFIG", cluster.dir.join("kelsonconfig"))
        .output()
        .unwrap();
    assert_ok(&out);
    let out = Command::new(env!("CARGO_BIN_EXE_kelsonctl"))
        .args(["version", "--nodes", &target])
        .env_remove("KELSONCONFIG")
        .current_dir(&cluster.dir)
        .output()
        .unwrap();
    assert_ok(&out);
    let out = Command::new(env!("CARGO_BIN_EXE_kelsonctl"))
        .args(["version"])
        .env_remove("KELSONCONFIG")
        .current_dir(cluster.dir.join("pki"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("tried --kelsonconfig (not given), $KELSONCONFIG (not set), ./kelsonconfig (not there)")
    );
}

#[test]
fn reset_is_refused_unless_it_names_the_node() {
    let cluster = Cluster::start();
    let out = cluster.admin(&["reset", "--confirm", "demo-worker-1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("resetting: 400 Bad Request (bad-request): "), "{}", stderr(&out));
    assert_eq!(cluster.fake(0).state().resets, 0);
    let out = cluster.admin(&["reset", "--confirm", "demo-cp-1"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "NODE       ACCEPTED\ndemo-cp-1  reset\n");
    assert_eq!(cluster.fake(0).state().resets, 1);
}

#[test]
fn a_client_certificate_from_another_ca_is_reported_as_refused_by_the_node() {
    let cluster = Cluster::start();
    let other = cluster.dir.parent().unwrap().join("other");
    gen_cluster(&other);
    let mut config: kelsonctl::api::KelsonConfig = {
        let path = cluster.dir.join("kelsonconfig");
        kelsonctl::api::KelsonConfig::from_yaml(&path, &std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    config.client.certificate = std::fs::read_to_string(other.join("pki/admin.crt")).unwrap();
    config.client.key = std::fs::read_to_string(other.join("pki/admin.key")).unwrap();
    let mixed = cluster.dir.join("kelsonconfig-mixed");
    std::fs::write(&mixed, config.to_yaml().unwrap()).unwrap();
    let out = cluster.command("kelsonconfig-mixed", &[0], &["services"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(
            "getting the version: the node refused this config's client certificate (signed by another CA, or expired)"
        ) || err.contains("listing services: the node refused this config's client certificate"),
        "{err}"
    );
    assert!(cluster.fake(0).calls().is_empty());
}
