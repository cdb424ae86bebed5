//! kelson-etcd against real etcd (Debian's etcd-server, 3.4) on 127.0.0.1
//! with client and peer certificate auth.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use kelson_etcd::{EtcdClient, EtcdError, JoinedAs, Retry};
use std::io::Write;
use std::process::Command;
use std::time::Duration;
use support::{program, EtcdMember, Join, MemberUrls, Pki};

/// Long enough for a joined member to count as active (etcd waits 5 s before it does).
const PATIENT: Retry = Retry { attempts: 60, interval: Duration::from_millis(250) };

fn start_one(pki: &Pki) -> EtcdMember {
    EtcdMember::start(pki, MemberUrls::pick("cp-1"), Join::New)
}

async fn client_of(pki: &Pki, member: &EtcdMember) -> EtcdClient {
    EtcdClient::connect(&pki.endpoint(&member.urls.client_url)).await.unwrap()
}

/// etcdctl against `member` with the member's own certificate (it is also a client certificate).
fn etcdctl(pki: &Pki, member: &EtcdMember, args: &[&str]) -> String {
    let dir = pki.dir.path();
    let output = Command::new(program("etcdctl", "etcd-client"))
        .arg(format!("--endpoints={}", member.urls.client_url))
        .arg(format!("--cacert={}", dir.join("ca.crt").display()))
        .arg(format!("--cert={}", dir.join("member.crt").display()))
        .arg(format!("--key={}", dir.join("member.key").display()))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn one_member_lists_itself_reports_its_status_and_no_alarms() {
    let pki = Pki::new();
    let member = start_one(&pki);
    let client = client_of(&pki, &member).await;

    let members = client.members().await.unwrap();
    let status = client.status().await.unwrap();
    let alarms = client.alarms().await.unwrap();

    assert_eq!(members.len(), 1, "{members:?}");
    let me = &members[0];
    assert_eq!(me.name, "cp-1");
    assert_eq!(me.peer_urls, [member.urls.peer_url.as_str()]);
    assert_eq!(me.client_urls, [member.urls.client_url.as_str()]);
    assert!(!me.is_learner);
    assert_eq!(status.member, me.id, "{status:?}");
    assert_eq!(status.leader, me.id, "a single member leads itself: {status:?}");
    assert!(status.version.starts_with("3."), "{status:?}");
    assert!(status.db_size_bytes > 0 && status.raft_term >= 1 && status.raft_index >= 1, "{status:?}");
    assert!(status.errors.is_empty() && !status.is_learner, "{status:?}");
    assert_eq!(alarms, []);
}

#[tokio::test]
async fn a_snapshot_streamed_into_a_file_is_a_database_etcdctl_restores() {
    let pki = Pki::new();
    let member = start_one(&pki);
    etcdctl(&pki, &member, &["put", "/kelson/test", "snapshotted"]);
    let client = client_of(&pki, &member).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etcd.db");

    let mut chunks = client.snapshot().await.unwrap();
    let mut file = std::fs::File::create(&path).unwrap();
    let mut count = 0;
    while let Some(chunk) = chunks.recv().await {
        file.write_all(&chunk.unwrap()).unwrap();
        count += 1;
    }
    drop(file);

    let bytes = std::fs::read(&path).unwrap();
    // bbolt's first meta page: a 16-byte page header, then the magic (little-endian).
    assert_eq!(bytes.get(16..20), Some(&0xED0C_DAEDu32.to_le_bytes()[..]), "{} bytes in {count} chunks", bytes.len());
    let status = etcdctl(&pki, &member, &["snapshot", "status", &path.display().to_string(), "--write-out=json"]);
    assert!(!status.contains("\"totalKey\":0"), "the key put before is in the snapshot: {status}");
    // restore checks the SHA-256 etcd appends to a snapshot it streams.
    let restored = dir.path().join("restored");
    etcdctl(
        &pki,
        &member,
        &["snapshot", "restore", &path.display().to_string(), &format!("--data-dir={}", restored.display())],
    );
    assert!(restored.join("member/snap/db").is_file());
}

#[tokio::test]
async fn a_second_member_joins_as_a_learner_is_promoted_in_sync_and_removed() {
    let pki = Pki::new();
    let first = start_one(&pki);
    let client = client_of(&pki, &first).await;
    let second_urls = MemberUrls::pick("cp-2");
    let peer_url = second_urls.peer_url.clone();

    let added = client.add_learner("cp-2", std::slice::from_ref(&peer_url)).await.unwrap();
    assert_eq!(
        added.initial_cluster,
        format!("cp-1={},cp-2={peer_url}", first.urls.peer_url),
        "the --initial-cluster the new member starts with"
    );
    let second = EtcdMember::start(&pki, second_urls, Join::Existing { initial_cluster: &added.initial_cluster });
    let learner = client.members().await.unwrap().into_iter().find(|m| m.id == added.id).unwrap();
    assert!(learner.is_learner && learner.name == "cp-2", "{learner:?}");

    client.promote(added.id, PATIENT).await.unwrap();

    let members = client.members().await.unwrap();
    assert!(members.iter().all(|m| !m.is_learner), "{members:?}");
    let health = client.member_health().await.unwrap();
    assert_eq!(health.len(), 2, "{health:?}");
    assert!(health.iter().all(|h| h.reachable && h.errors.is_empty()), "{health:?}");
    assert_eq!(health.iter().filter(|h| h.is_leader).count(), 1, "{health:?}");

    client.remove(added.id, PATIENT).await.unwrap();

    let names: Vec<String> = client.members().await.unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["cp-1"], "second's log:\n{}", second.log_text());
}

#[tokio::test]
async fn a_learner_that_never_starts_is_unreachable_and_promoting_it_gives_up_saying_why() {
    let pki = Pki::new();
    let member = start_one(&pki);
    let client = client_of(&pki, &member).await;
    let never_started = MemberUrls::pick("cp-2");
    let added = client.add_learner("cp-2", &[never_started.peer_url]).await.unwrap();

    let health = client.member_health().await.unwrap();
    let err = client.promote(added.id, Retry { attempts: 3, interval: Duration::from_millis(50) }).await.unwrap_err();

    let learner = health.iter().find(|h| h.id == added.id).unwrap();
    assert!(!learner.reachable && !learner.is_leader && !learner.errors.is_empty(), "{learner:?}");
    assert!(health.iter().any(|h| h.reachable && h.is_leader), "{health:?}");
    assert!(matches!(err, EtcdError::GaveUp { attempts: 3, .. }), "{err:?}");
    let message = kelson_base::error_chain(&err);
    assert!(message.contains(&added.id.to_string()) && message.contains("in sync with leader"), "{message}");
    client.remove(added.id, PATIENT).await.unwrap();
    assert_eq!(client.members().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_client_trusting_another_ca_fails_naming_the_endpoint() {
    let pki = Pki::new();
    let member = start_one(&pki);
    let stranger = Pki::new();
    let mut endpoint = pki.endpoint(&member.urls.client_url);
    endpoint.ca_pem = stranger.ca_pem();

    let client = EtcdClient::connect_with_timeout(&endpoint, Duration::from_secs(2)).await.unwrap();
    let err = client.members().await.unwrap_err();

    let message = kelson_base::error_chain(&err);
    assert!(matches!(err, EtcdError::Request { .. }), "refused at once, not timed out: {message}");
    assert!(message.contains(&member.urls.client_url) && message.contains("certificate"), "{message}");
}

#[tokio::test]
async fn a_listener_that_never_answers_times_out_naming_the_endpoint() {
    let pki = Pki::new();
    // Accepts connections (the kernel does) and never speaks TLS.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", silent.local_addr().unwrap());
    let client = EtcdClient::connect_with_timeout(&pki.endpoint(&url), Duration::from_millis(500)).await.unwrap();

    let started = std::time::Instant::now();
    let err = client.status().await.unwrap_err();

    let message = kelson_base::error_chain(&err);
    assert!(started.elapsed() < Duration::from_secs(5), "{message}");
    assert!(message.contains(&url), "{message}");
}

#[tokio::test]
async fn joining_again_reuses_a_learner_an_earlier_boot_added_and_never_started() {
    let pki = Pki::new();
    let first = start_one(&pki);
    let client = client_of(&pki, &first).await;
    let second_urls = MemberUrls::pick("cp-2");
    let peer_urls = vec![second_urls.peer_url.clone()];
    let earlier = client.add_learner("cp-2", &peer_urls).await.unwrap();

    let (again, how) = client.join_as_learner("cp-2", &peer_urls, PATIENT).await.unwrap();

    assert_eq!(how, JoinedAs::ReusedLearner);
    assert_eq!(again, earlier, "the same member and the same --initial-cluster");
    let _second = EtcdMember::start(&pki, second_urls, Join::Existing { initial_cluster: &again.initial_cluster });
    client.promote(again.id, PATIENT).await.unwrap();
    assert_eq!(client.members().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_voter_whose_data_is_gone_is_removed_and_the_node_added_again_as_a_learner() {
    let pki = Pki::new();
    let first = start_one(&pki);
    let client = client_of(&pki, &first).await;
    let mut running = Vec::new();
    let mut third_peer_url = String::new();
    for name in ["cp-2", "cp-3"] {
        let urls = MemberUrls::pick(name);
        third_peer_url = urls.peer_url.clone();
        let (added, how) = client.join_as_learner(name, std::slice::from_ref(&urls.peer_url), PATIENT).await.unwrap();
        assert_eq!(how, JoinedAs::Added);
        running.push(EtcdMember::start(&pki, urls, Join::Existing { initial_cluster: &added.initial_cluster }));
        client.promote(added.id, PATIENT).await.unwrap();
    }
    let stale = client.members().await.unwrap().into_iter().find(|m| m.name == "cp-3").unwrap();
    // cp-3's machine loses its disk: its etcd is gone with its data.
    drop(running.pop());

    let (added, how) = client.join_as_learner("cp-3", &[third_peer_url], PATIENT).await.unwrap();

    assert_eq!(how, JoinedAs::ReplacedVoter { stale: stale.id });
    assert_ne!(added.id, stale.id);
    let members = client.members().await.unwrap();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members.iter().any(|m| m.id == added.id && m.is_learner), "{members:?}");
    assert!(!members.iter().any(|m| m.id == stale.id), "{members:?}");
}
