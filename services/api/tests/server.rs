//! Config apply, reset, power, errors, both HTTP versions, TLS reload, the
//! audit log and the OpenAPI document, through a served FakeNode.

mod common;

use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use kelson_api::backend::{NodeError, Power};
use kelson_api::fake::{ClientTls, TestPki};
use kelson_api::TlsMaterial;
use std::collections::BTreeSet;

#[tokio::test]
async fn a_dry_run_returns_the_diff_and_changes_nothing() {
    let server = common::start().await;
    let before = server.node.state().config_yaml.clone();
    let request = r#"{"document":"node:\n  name: renamed\n","dryRun":true}"#;
    let (status, body) = server.request(Some(&server.admin()), Method::POST, "/v1/config", request).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let result = common::json(&body);
    assert_eq!(result["dryRun"], true);
    assert!(result["diff"].as_str().unwrap().contains("+  name: renamed"), "{result}");
    assert_eq!(server.node.state().config_yaml, before);

    let request = r#"{"document":"node:\n  name: renamed\n"}"#;
    let (status, _) = server.request(Some(&server.admin()), Method::POST, "/v1/config", request).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.node.state().config_yaml, "node:\n  name: renamed\n");
}

#[tokio::test]
async fn a_rejected_config_is_answered_422_with_its_problems() {
    let server = common::start().await;
    let before = server.node.state().config_yaml.clone();
    let request = r#"{"document":"invalid: true"}"#;
    let (status, body) = server.request(Some(&server.admin()), Method::POST, "/v1/config", request).await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let result = common::json(&body);
    assert_eq!(result["problems"].as_array().unwrap().len(), 1, "{result}");
    assert_eq!(result["dryRun"], false);
    assert_eq!(server.node.state().config_yaml, before);
}

#[tokio::test]
async fn bad_bodies_are_answered_400_and_large_ones_413() {
    let server = common::start().await;
    let admin = server.admin();
    for body in ["", "{", r#"{"dryRun":true}"#, "[1]"] {
        let (status, answer) = server.request(Some(&admin), Method::POST, "/v1/config", body).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}: {answer:?}");
        assert_eq!(common::json(&answer)["code"], "bad-request");
    }
    let huge = format!(r#"{{"document":"{}"}}"#, "x".repeat(1024 * 1024));
    let (status, answer) = server.request(Some(&admin), Method::POST, "/v1/config", huge).await.unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer:?}");
    assert!(!server.node.calls().iter().any(|call| call.starts_with("apply_config")));
}

#[tokio::test]
async fn reset_needs_the_node_name_and_power_answers_202_before_acting() {
    let server = common::start().await;
    let admin = server.admin();
    let (status, body) =
        server.request(Some(&admin), Method::POST, "/v1/reset", r#"{"confirm":"other-node"}"#).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
    assert_eq!(server.node.state().resets, 0);
    let (status, body) =
        server.request(Some(&admin), Method::POST, "/v1/reset", r#"{"confirm":"fake-node"}"#).await.unwrap();
    assert_eq!((status, common::json(&body)["action"].clone()), (StatusCode::ACCEPTED, "reset".into()));
    assert_eq!(server.node.state().resets, 1);

    let (status, body) = server.request(Some(&admin), Method::POST, "/v1/shutdown", "").await.unwrap();
    assert_eq!((status, common::json(&body)["action"].clone()), (StatusCode::ACCEPTED, "shutdown".into()));
    let (status, _) = server.request(Some(&admin), Method::POST, "/v1/reboot", "").await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(server.node.state().power, [Power::PowerOff, Power::Reboot]);
}

#[tokio::test]
async fn node_errors_become_their_status_codes() {
    let server = common::start().await;
    let admin = server.admin();
    let cases = [
        (NodeError::NotFound("x".into()), StatusCode::NOT_FOUND, "not-found"),
        (NodeError::BadRequest("x".into()), StatusCode::BAD_REQUEST, "bad-request"),
        (NodeError::Conflict("x".into()), StatusCode::CONFLICT, "conflict"),
        (NodeError::Unavailable("supervisor not up".into()), StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (NodeError::Internal("x".into()), StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    ];
    for (error, status, code) in cases {
        server.node.fail_next("services", error.clone());
        let (answered, body) = server.request(Some(&admin), Method::GET, "/v1/services", "").await.unwrap();
        let body = common::json(&body);
        assert_eq!((answered, body["code"].as_str().unwrap()), (status, code), "{error:?}");
        assert_eq!(body["message"], error.to_string());
    }
    let (status, body) = server.request(Some(&admin), Method::GET, "/v1/nothing", "").await.unwrap();
    assert_eq!((status, common::json(&body)["code"].clone()), (StatusCode::NOT_FOUND, "not-found".into()));
    let (status, _) = server.request(Some(&admin), Method::DELETE, "/v1/config", "").await.unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = server.request(Some(&admin), Method::POST, "/v1/services/kubelet/explode", "").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_resumed_session_keeps_the_client_certificate_and_its_role() {
    let server = common::start().await;
    for (client, status) in [(server.read_only(), StatusCode::FORBIDDEN), (server.admin(), StatusCode::OK)] {
        let tls = ClientTls::new(&server.pki.ca_pem, Some(&client), "127.0.0.1", &["h2"]).unwrap();
        // The first connection gets the session ticket the second resumes.
        let mut first = tls.connect(server.addr).await.unwrap();
        assert!(!first.resumed);
        let answer = first.send(Method::GET, "/v1/version", "").await.unwrap();
        answer.into_body().collect().await.unwrap();
        let mut second = tls.connect(server.addr).await.unwrap();
        assert!(second.resumed, "the second handshake was a full one");
        let response = second.send(Method::POST, "/v1/services/kubelet/restart", "").await.unwrap();
        assert_eq!(response.status(), status);

        let mut full = tls.clone().without_resumption().connect(server.addr).await.unwrap();
        assert!(!full.resumed);
        let response = full.send(Method::POST, "/v1/services/kubelet/restart", "").await.unwrap();
        assert_eq!(response.status(), status);
    }
}

#[tokio::test]
async fn http2_and_http1_both_answer() {
    let server = common::start().await;
    for alpn in ["h2", "http/1.1"] {
        let mut connection =
            common::connect(server.addr, &server.pki.ca_pem, Some(&server.admin()), &[alpn]).await.unwrap();
        assert_eq!(connection.protocol, alpn);
        for _ in 0..2 {
            let response = connection.send(Method::GET, "/v1/version", "").await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{alpn}");
        }
    }
}

#[tokio::test]
async fn new_tls_material_serves_new_connections_and_bad_material_keeps_the_last() {
    let server = common::start().await;
    let old_admin = server.admin();
    let replacement = TestPki::generate("replacement CA").unwrap();
    let new_admin = replacement.client("carol", Some(kelson_api::ROLE_ADMIN)).unwrap();

    server.tls.send_replace(Some(replacement.tls_material()));
    // The accept loop takes the change when it next wakes; no signal says
    // when, so try a bounded number of fresh connections.
    let mut served = false;
    for _ in 0..100 {
        if let Ok(mut connection) = common::connect(server.addr, &replacement.ca_pem, Some(&new_admin), &["h2"]).await {
            if connection.send(Method::GET, "/v1/version", "").await.is_ok() {
                served = true;
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    assert!(served, "the new CA and certificate were not used");
    let old = server.request(Some(&old_admin), Method::GET, "/v1/version", "").await;
    assert!(old.is_err(), "a client of the old CA was served: {old:?}");

    let broken = TlsMaterial { key_pem: "not a key".to_owned(), ..replacement.tls_material() };
    server.tls.send_replace(Some(broken));
    server.tls.send_replace(None);
    let mut connection = common::connect(server.addr, &replacement.ca_pem, Some(&new_admin), &["h2"]).await.unwrap();
    let response = connection.send(Method::GET, "/v1/version", "").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_tls_material_connections_are_refused() {
    let pki = TestPki::generate("test CA").unwrap();
    let (_tls, changes) = tokio::sync::watch::channel(None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = std::sync::Arc::new(kelson_api::fake::FakeNode::new());
    let task = tokio::spawn(kelson_api::serve(listener, node, changes, Default::default()));
    let admin = pki.client("alice", Some(kelson_api::ROLE_ADMIN)).unwrap();
    assert!(common::connect(addr, &pki.ca_pem, Some(&admin), &["h2"]).await.is_err());
    task.abort();
}

#[tokio::test]
async fn writes_are_audited_allowed_or_refused_without_config_bodies() {
    let server = common::start().await;
    let secret_document = r#"{"document":"token: s3cr3t-t0ken","dryRun":true}"#;
    let (status, _) = server.request(Some(&server.admin()), Method::POST, "/v1/config", secret_document).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        server.request(Some(&server.read_only()), Method::POST, "/v1/services/kubelet/restart", "").await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server.request(Some(&server.admin()), Method::GET, "/v1/services", "").await.unwrap();
    assert_eq!(status, StatusCode::OK);

    let text = std::fs::read_to_string(&server.audit_log).unwrap();
    assert!(!text.contains("s3cr3t"), "a config body reached the audit log: {text}");
    let lines = common::audit_lines(&server);
    assert_eq!(lines.len(), 2, "one line per write, none for reads: {text}");
    assert_eq!(lines[0]["subject"], "alice");
    assert_eq!(lines[0]["role"], kelson_api::ROLE_ADMIN);
    assert_eq!(lines[0]["method"], "POST");
    assert_eq!(lines[0]["path"], "/v1/config");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["what"], "dryRun=true");
    assert!(lines[0]["atUnixMs"].as_u64().unwrap() > 0);
    assert!(!lines[0]["serial"].as_str().unwrap().is_empty());
    assert_eq!(lines[1]["subject"], "bob");
    assert_eq!(lines[1]["role"], kelson_api::ROLE_READ_ONLY);
    assert_eq!(lines[1]["status"], 403);
    assert_eq!(lines[1]["what"], serde_json::Value::Null);
}

#[test]
fn the_openapi_document_describes_exactly_the_served_routes() {
    let document = serde_json::to_value(kelson_api::openapi()).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("responses").is_some() {
                documented.insert((method.to_uppercase(), path.clone()));
                assert!(operation["responses"].get("403").is_some(), "{method} {path} lacks its 403");
            }
        }
    }
    let served: BTreeSet<_> =
        kelson_api::served_routes().map(|(method, path)| (method.to_owned(), path.to_owned())).collect();
    assert_eq!(documented, served);
    assert_eq!(document["components"]["securitySchemes"]["mutualTls"]["type"], "mutualTLS");
    let logs = &document["paths"]["/v1/logs/kernel"]["get"]["responses"]["200"]["content"];
    assert!(logs.get("application/x-ndjson").is_some(), "{logs}");
    let snapshot = &document["paths"]["/v1/etcd/snapshot"]["get"]["responses"]["200"]["content"];
    assert!(snapshot.get("application/octet-stream").is_some(), "{snapshot}");
}

#[tokio::test]
async fn the_served_document_is_the_openapi_document() {
    let server = common::start().await;
    let (status, body) = server.request(Some(&server.read_only()), Method::GET, "/v1/openapi.json", "").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(common::json(&body), serde_json::to_value(kelson_api::openapi()).unwrap());
}
