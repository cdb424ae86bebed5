//! PID 1's etcd membership against real etcd processes (Debian's
//! etcd-server) on 127.0.0.1: a joining node's manifest is held back, its
//! member added as a learner, the manifest written back with etcd's
//! `--initial-cluster` (the test then plays the pod manager and starts
//! etcd from it), the learner promoted once in sync; members that cannot be
//! reached leave the manifest held back and the reason in the status; a
//! reset's leave removes the member through the other one.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../../services/etcd/tests/support/mod.rs"]
mod support;

use kelson_etcd::{EtcdClient, JoinedAs, Retry};
use kelson_init::etcd_join::{self, JoinPaths, Left, Pace, Prepared};
use kelson_init::kernel::{Kernel, LinuxKernel};
use kelson_init::status::{EtcdJoin, StatusPublisher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::{EtcdMember, Join, MemberUrls, Pki};

/// Quick back-off for the tests; within an attempt, patient enough for a
/// joined member to count as active (etcd waits 5 s).
const PACE: Pace = Pace {
    first_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_millis(400),
    request_timeout: Duration::from_secs(2),
    within_attempt: Retry { attempts: 60, interval: Duration::from_millis(250) },
};
/// The longest a test waits for something the join does.
const BOUND: Duration = Duration::from_secs(60);

/// A joining node's files in a temporary root: its etcd manifest (as
/// `kelsonctl gen node` writes it: every control-plane node it knows, and
/// `existing`), its etcd client certificate, where the manifest is held.
struct Node {
    root: tempfile::TempDir,
    paths: JoinPaths,
    config: kelson_config::MachineConfig,
}

impl Node {
    fn new(pki: &Pki, urls: &MemberUrls, members: &[&str]) -> Node {
        let root = tempfile::tempdir().unwrap();
        let paths = JoinPaths {
            manifest: root.path().join("manifests/etcd.yaml"),
            held: root.path().join("run/etcd.yaml"),
            pki_dir: root.path().join("pki"),
        };
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\n  namespace: kube-system\nspec:\n  containers:\n  \
             - name: etcd\n    image: registry.k8s.io/etcd:3.5.16-0\n    command:\n    - etcd\n    \
             - --data-dir={}\n    - --initial-advertise-peer-urls={peer}\n    \
             - --initial-cluster=cp-1=https://192.0.2.1:2380,{name}={peer}\n    \
             - --initial-cluster-state=existing\n    - --name={name}\n  hostNetwork: true\n",
            root.path().join("etcd-data").display(),
            peer = urls.peer_url,
            name = urls.name,
        );
        let kernel = LinuxKernel;
        kernel.install_file(&paths.manifest, manifest.as_bytes(), 0o644).unwrap();
        let client = pki.endpoint(&urls.client_url);
        kernel.install_file(&paths.pki_dir.join(kelson_etcd::ETCD_CA_FILE), client.ca_pem.as_bytes(), 0o644).unwrap();
        kernel
            .install_file(&paths.pki_dir.join(kelson_etcd::CLIENT_CERT_FILE), client.cert_pem.as_bytes(), 0o644)
            .unwrap();
        kernel
            .install_file(&paths.pki_dir.join(kelson_etcd::CLIENT_KEY_FILE), client.key_pem.as_bytes(), 0o600)
            .unwrap();
        let config = kelson_config::parse(
            "test",
            &format!(
                "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  role: control-plane\ncluster:\n  \
                 etcdJoin: true\n  etcdEndpoints: [{}]\nstaticPods:\n  - name: etcd.yaml\n    manifest: x\n",
                members.join(", ")
            ),
        )
        .unwrap();
        Node { root, paths, config }
    }

    fn prepare(&self) -> Box<etcd_join::Joiner> {
        match etcd_join::prepare(&LinuxKernel, &self.config, &self.paths).unwrap() {
            Prepared::Join(joiner) => joiner,
            other => panic!("expected to join: {other:?}"),
        }
    }
}

/// Polls (the test's stand-in for the pod manager's watch) until `ready`
/// gives a value.
async fn eventually<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(started.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn initial_cluster_of(manifest: &str) -> String {
    let line = manifest.lines().find(|l| l.contains("--initial-cluster=")).unwrap();
    line.split_once("--initial-cluster=").unwrap().1.trim().to_owned()
}

#[tokio::test]
async fn a_joining_node_is_added_as_a_learner_its_manifest_rewritten_and_it_is_promoted_once_in_sync() {
    let pki = Pki::new();
    let first = EtcdMember::start(&pki, MemberUrls::pick("cp-1"), Join::New);
    let urls = MemberUrls::pick("cp-2");
    let node = Node::new(&pki, &urls, &[&first.urls.client_url]);
    let status = StatusPublisher::default();

    let joiner = node.prepare();
    assert!(!node.paths.manifest.exists() && node.paths.held.exists(), "held back before anything else");
    let kernel: Arc<dyn Kernel + Send + Sync> = Arc::new(LinuxKernel);
    let join = tokio::spawn(joiner.run(kernel, status.clone(), PACE));

    let manifest = eventually("the manifest written back", || std::fs::read_to_string(&node.paths.manifest).ok()).await;
    let initial_cluster = initial_cluster_of(&manifest);
    assert_eq!(initial_cluster, format!("cp-1={},cp-2={}", first.urls.peer_url, urls.peer_url));
    assert!(manifest.contains("--initial-cluster-state=existing") && manifest.contains("hostNetwork: true"));
    assert!(!node.paths.held.exists(), "the held copy is gone");
    let client = EtcdClient::connect(&pki.endpoint(&first.urls.client_url)).await.unwrap();
    let learner = client.members().await.unwrap().into_iter().find(|m| m.peer_urls == [urls.peer_url.clone()]);
    assert!(learner.is_some_and(|m| m.is_learner), "a learner until its etcd has caught up");
    // The pod manager starts etcd from the manifest.
    let _second = EtcdMember::start(&pki, urls, Join::Existing { initial_cluster: &initial_cluster });

    let joined = tokio::time::timeout(BOUND, join).await.expect("promoted within the bound").unwrap();

    assert_eq!(joined.how, JoinedAs::Added);
    let members = client.members().await.unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().all(|m| !m.is_learner), "{members:?}");
    let etcd = status.current().etcd.unwrap();
    assert_eq!(etcd.join, Some(EtcdJoin::Member { id: joined.id.to_string() }));
    // The next boot finds the member's write-ahead log and leaves it alone.
    let wal = node.root.path().join("etcd-data/member/wal");
    std::fs::create_dir_all(&wal).unwrap();
    std::fs::write(&node.paths.manifest, &manifest).unwrap();
    assert!(matches!(
        etcd_join::prepare(&LinuxKernel, &node.config, &node.paths).unwrap(),
        Prepared::AlreadyMember { .. }
    ));
}

#[tokio::test]
async fn members_that_cannot_be_reached_leave_etcd_held_back_and_the_reason_in_the_status() {
    let pki = Pki::new();
    // A port nothing listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let unreachable = format!("https://{closed}");
    let node = Node::new(&pki, &MemberUrls::pick("cp-2"), &[&unreachable]);
    let status = StatusPublisher::default();
    let kernel: Arc<dyn Kernel + Send + Sync> = Arc::new(LinuxKernel);
    let join = tokio::spawn(node.prepare().run(kernel, status.clone(), PACE));

    let (attempts, reason) = eventually("two failed attempts", || match status.current().etcd?.join? {
        EtcdJoin::Adding { attempts, last_error: Some(reason) } if attempts >= 2 => Some((attempts, reason)),
        _ => None,
    })
    .await;
    join.abort();

    assert!(attempts >= 2);
    assert!(reason.starts_with(&format!("adding cp-2 as an etcd learner through {unreachable}: ")), "{reason}");
    assert!(!node.paths.manifest.exists(), "etcd must not start before it is added");
    assert!(node.paths.held.exists(), "the manifest waits, unchanged");
    let held = std::fs::read_to_string(&node.paths.held).unwrap();
    assert!(held.contains("--initial-cluster=cp-1=https://192.0.2.1:2380"), "{held}");
}

#[tokio::test]
async fn leaving_removes_the_member_through_the_other_one_and_the_last_member_stays() {
    let pki = Pki::new();
    let first = EtcdMember::start(&pki, MemberUrls::pick("cp-1"), Join::New);
    let client = EtcdClient::connect(&pki.endpoint(&first.urls.client_url)).await.unwrap();
    let urls = MemberUrls::pick("cp-2");
    let (added, _) =
        client.join_as_learner("cp-2", std::slice::from_ref(&urls.peer_url), PACE.within_attempt).await.unwrap();
    let second_client_url = urls.client_url.clone();
    let node = Node::new(&pki, &urls, &[&first.urls.client_url]);
    let _second = EtcdMember::start(&pki, urls, Join::Existing { initial_cluster: &added.initial_cluster });
    client.promote(added.id, PACE.within_attempt).await.unwrap();
    let manifest = std::fs::read(&node.paths.manifest).unwrap();
    // As a reset asks: the node's own etcd first, then the configured members.
    let endpoint =
        pki.endpoint(&second_client_url).with_endpoints(vec![second_client_url.clone(), first.urls.client_url.clone()]);

    let left = etcd_join::leave(Path::new("etcd.yaml"), &manifest, endpoint, PACE.within_attempt, PACE.request_timeout)
        .await
        .unwrap();

    assert_eq!(left, Left::Removed { id: added.id });
    let names: Vec<String> = client.members().await.unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["cp-1"]);

    // cp-1 alone: there is no one to remove it through.
    let only = Node::new(&pki, &first.urls, &[&first.urls.client_url]);
    let manifest = std::fs::read(&only.paths.manifest).unwrap();
    let left = etcd_join::leave(
        Path::new("etcd.yaml"),
        &manifest,
        pki.endpoint(&first.urls.client_url),
        PACE.within_attempt,
        PACE.request_timeout,
    )
    .await
    .unwrap();
    assert!(matches!(left, Left::LastMember { .. }), "{left:?}");
}
