//! Every route against every kind of client: refused at the handshake,
//! refused with 403, or served, exactly as the route table says.

mod common;

use hyper::{Method, StatusCode};
use kelson_api::fake::{ClientCert, TestPki};

/// A request to each route, and the fake's call it should cause (`None`:
/// the server answers alone).
fn requests() -> Vec<(Method, String, &'static str, Option<&'static str>)> {
    kelson_api::served_routes()
        .map(|(method, template)| {
            let path = template
                .replace("{name}", "kubelet")
                .replace("{action}", "stop")
                .replace("{namespace}", "kube-system")
                .replace("{pod}", "etcd-fake-node")
                .replace("{container}", "etcd");
            let body = match (method, template) {
                ("POST", "/v1/config") => r#"{"document":"node: {}","dryRun":true}"#,
                ("POST", "/v1/reset") => r#"{"confirm":"fake-node"}"#,
                ("POST", "/v1/upgrade") => "a bundle",
                _ => "",
            };
            let call = match template {
                "/v1/version" => Some("version"),
                "/v1/status" => Some("status"),
                "/v1/services" => Some("services"),
                "/v1/services/{name}/{action}" => Some("service_action kubelet stop"),
                "/v1/pods" => Some("pods"),
                "/v1/logs/services/{name}" => Some("logs service kubelet"),
                "/v1/logs/pods/{namespace}/{pod}/{container}" => Some("logs container kube-system/etcd-fake-node/etcd"),
                "/v1/logs/kernel" => Some("logs kernel"),
                "/v1/logs/init" => Some("logs init"),
                "/v1/config" if method == "GET" => Some("config"),
                "/v1/config" => Some("apply_config dryRun=true"),
                "/v1/reboot" => Some("power Reboot"),
                "/v1/shutdown" => Some("power PowerOff"),
                "/v1/reset" => Some("reset"),
                "/v1/etcd/members" => Some("etcd_members"),
                "/v1/etcd/status" => Some("etcd_status"),
                "/v1/etcd/alarms" => Some("etcd_alarms"),
                "/v1/etcd/snapshot" => Some("etcd_snapshot"),
                "/v1/upgrade" => Some("upgrade reboot=false"),
                "/v1/openapi.json" => None,
                other => panic!("no expectation for {other}"),
            };
            (Method::from_bytes(method.as_bytes()).expect("a method"), path, body, call)
        })
        .collect()
}

fn read_only_may(method: &Method, path: &str) -> bool {
    method == Method::GET && path != "/v1/etcd/snapshot"
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    HandshakeRefused,
    Forbidden,
    Allowed,
}

async fn check(
    server: &common::Server,
    who: &str,
    client: Option<&ClientCert>,
    expect: impl Fn(&Method, &str) -> Expect,
) {
    for (method, path, body, call) in requests() {
        // Each case with the kubelet running, so a stop does not find it stopped.
        {
            let mut state = server.node.state();
            state.calls.clear();
            for service in state.services.iter_mut().filter(|service| service.name == "kubelet") {
                service.state = "running".to_owned();
            }
        }
        let expected = expect(&method, &path);
        let answer = server.request(client, method.clone(), &path, body).await;
        let calls = server.node.calls();
        match expected {
            Expect::HandshakeRefused => {
                assert!(answer.is_err(), "{who} {method} {path}: served {answer:?}");
                assert!(calls.is_empty(), "{who} {method} {path}: the node saw {calls:?}");
            }
            Expect::Forbidden => {
                let (status, body) = answer.unwrap_or_else(|error| panic!("{who} {method} {path}: {error:#}"));
                assert_eq!(status, StatusCode::FORBIDDEN, "{who} {method} {path}: {body:?}");
                assert_eq!(common::json(&body)["code"], "forbidden");
                assert!(calls.is_empty(), "{who} {method} {path}: the node saw {calls:?}");
            }
            Expect::Allowed => {
                let (status, body) = answer.unwrap_or_else(|error| panic!("{who} {method} {path}: {error:#}"));
                assert!(status.is_success(), "{who} {method} {path}: {status} {body:?}");
                if let Some(call) = call {
                    assert!(calls.iter().any(|seen| seen == call), "{who} {method} {path}: the node saw {calls:?}");
                }
            }
        }
    }
}

#[tokio::test]
async fn every_route_answers_each_kind_of_client_as_the_table_says() {
    let server = common::start().await;
    let other_ca = TestPki::generate("another CA").unwrap();

    check(&server, "no certificate", None, |_, _| Expect::HandshakeRefused).await;
    let foreign = other_ca.client("mallory", Some(kelson_api::ROLE_ADMIN)).unwrap();
    check(&server, "another CA's admin", Some(&foreign), |_, _| Expect::HandshakeRefused).await;
    let expired = server.pki.expired_client("old", kelson_api::ROLE_ADMIN).unwrap();
    check(&server, "an expired admin", Some(&expired), |_, _| Expect::HandshakeRefused).await;
    let unknown = server.pki.client("eve", Some("system:masters")).unwrap();
    check(&server, "an unknown role", Some(&unknown), |_, _| Expect::Forbidden).await;
    let no_organisation = server.pki.client("nobody", None).unwrap();
    check(&server, "no organisation", Some(&no_organisation), |_, _| Expect::Forbidden).await;
    check(&server, "read-only", Some(&server.read_only()), |method, path| {
        if read_only_may(method, path) {
            Expect::Allowed
        } else {
            Expect::Forbidden
        }
    })
    .await;
    check(&server, "admin", Some(&server.admin()), |_, _| Expect::Allowed).await;
}
