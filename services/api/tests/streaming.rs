//! Log streams: the tail of the backlog, lines pushed while following, the
//! end of the stream when the client goes away; the snapshot download and
//! the streamed upload.

mod common;

use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use kelson_api::types::{LogLine, LogSource};
use std::time::Duration;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

fn kubelet() -> LogSource {
    LogSource::Service("kubelet".to_owned())
}

fn texts(body: &[u8]) -> Vec<String> {
    std::str::from_utf8(body)
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str::<LogLine>(line).expect("a LogLine").text)
        .collect()
}

#[tokio::test]
async fn tail_gives_the_last_lines_of_the_backlog_as_ndjson() {
    let server = common::start().await;
    for text in ["one", "two", "three"] {
        server.node.push_log(&kubelet(), text);
    }
    let mut connection = server.connect(Some(&server.read_only())).await.unwrap();
    let response = connection.send(Method::GET, "/v1/logs/services/kubelet?tail=2", "").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(texts(&body), ["two", "three"]);

    let (status, body) = server.request(Some(&server.admin()), Method::GET, "/v1/logs/kernel", "").await.unwrap();
    assert_eq!((status, texts(&body).len()), (StatusCode::OK, 0));
}

#[tokio::test]
async fn bad_log_queries_are_answered_400() {
    let server = common::start().await;
    for query in ["tail=-1", "tail=many", "follow=yes", "tail=%zz"] {
        let path = format!("/v1/logs/init?{query}");
        let (status, body) = server.request(Some(&server.admin()), Method::GET, &path, "").await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(common::json(&body)["code"], "bad-request");
    }
    let (status, _) = server.request(Some(&server.admin()), Method::GET, "/v1/logs/services/nope", "").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Follows on each protocol: lines pushed after the request began arrive
/// in order, and closing the connection ends the server's stream.
#[tokio::test]
async fn a_follower_gets_new_lines_in_order_and_its_stream_ends_when_it_goes_away() {
    for alpn in ["h2", "http/1.1"] {
        let server = common::start().await;
        server.node.push_log(&kubelet(), "before");
        let mut connection =
            common::connect(server.addr, &server.pki.ca_pem, Some(&server.read_only()), &[alpn]).await.unwrap();
        assert_eq!(connection.protocol, alpn);
        let response = connection.send(Method::GET, "/v1/logs/services/kubelet?follow=true", "").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        timeout(LIMIT, server.node.wait_for_followers(&kubelet(), 1)).await.expect("the server follows the log");

        let mut body = response.into_body();
        let mut received = String::new();
        for text in ["first", "second", "third"] {
            server.node.push_log(&kubelet(), text);
        }
        while received.lines().count() < 4 {
            let frame = timeout(LIMIT, body.frame()).await.expect("a line within the limit").unwrap().unwrap();
            received.push_str(std::str::from_utf8(&frame.into_data().unwrap()).unwrap());
        }
        assert_eq!(texts(received.as_bytes()), ["before", "first", "second", "third"], "{alpn}");

        drop(body);
        drop(connection);
        timeout(LIMIT, server.node.wait_for_no_followers(&kubelet()))
            .await
            .unwrap_or_else(|_| panic!("{alpn}: the server still follows the log after the client went away"));
        assert_eq!(server.node.followers(&kubelet()), 0);
    }
}

#[tokio::test]
async fn a_follow_ends_when_the_source_closes() {
    let server = common::start().await;
    let mut connection = server.connect(Some(&server.admin())).await.unwrap();
    let response = connection.send(Method::GET, "/v1/logs/init?follow=true", "").await.unwrap();
    timeout(LIMIT, server.node.wait_for_followers(&LogSource::Init, 1)).await.unwrap();
    server.node.push_log(&LogSource::Init, "last words");
    server.node.close_logs();
    let body = timeout(LIMIT, response.into_body().collect()).await.expect("the stream ended").unwrap().to_bytes();
    assert_eq!(texts(&body), ["last words"]);
}

#[tokio::test]
async fn the_snapshot_is_streamed_as_octets() {
    let server = common::start().await;
    let mut connection = server.connect(Some(&server.admin())).await.unwrap();
    let response = connection.send(Method::GET, "/v1/etcd/snapshot", "").await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], kelson_api::fake::SNAPSHOT);
}

#[tokio::test]
async fn an_upload_reaches_the_node_whole_with_its_reboot_flag() {
    let server = common::start().await;
    let bundle: Vec<u8> = (0..3 * 1024 * 1024).map(|index| (index % 251) as u8).collect();
    let (status, body) =
        server.request(Some(&server.admin()), Method::POST, "/v1/upgrade?reboot=true", bundle.clone()).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(common::json(&body)["rebooting"], true);
    let upgrades = server.node.state().upgrades.clone();
    assert_eq!(upgrades.len(), 1);
    assert!(upgrades[0].reboot);
    assert!(upgrades[0].bundle == bundle, "the bundle arrived changed");
}
