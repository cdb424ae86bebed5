//! The Node watcher against a fake API server on 127.0.0.1 that lists and
//! watches Nodes (real TLS with client certificates, real HTTP, the real
//! kube client and watcher). The fake stands in for the transport only;
//! the real API server and the routes it leads to are checked by the QEMU
//! cluster test.

mod common;

use common::{pki, tls_acceptor, PATIENCE};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use kelson_cluster::{ClusterView, NodeWatcher, ReporterConfig, Timing};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

const OWN: &str = "n1";

fn node(name: &str, pod_cidr: Option<&str>, address: &str) -> Value {
    let mut node = json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1"},
        "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}]}
    });
    if let Some(cidr) = pod_cidr {
        node["spec"] = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
    }
    node
}

/// The Nodes the fake serves, its resource version, every event (a watch
/// from a resource version gets those after it first, as the real server
/// replays them), the open watches, and the merge patches it was sent.
#[derive(Default)]
struct Cluster {
    nodes: Vec<Value>,
    version: u64,
    history: Vec<(u64, Value)>,
    watches: Vec<mpsc::UnboundedSender<Value>>,
    patches: Vec<(String, Value)>,
}

impl Cluster {
    /// Stores `node` (replacing one of its name) and tells every watch.
    fn put(&mut self, mut node: Value) {
        self.version += 1;
        node["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let name = node["metadata"]["name"].clone();
        let kind = match self.nodes.iter().position(|n| n["metadata"]["name"] == name) {
            Some(i) => {
                self.nodes[i] = node.clone();
                "MODIFIED"
            }
            None => {
                self.nodes.push(node.clone());
                "ADDED"
            }
        };
        self.tell(kind, node);
    }

    fn delete(&mut self, name: &str) {
        self.version += 1;
        let Some(i) = self.nodes.iter().position(|n| n["metadata"]["name"] == name) else { return };
        let mut node = self.nodes.remove(i);
        node["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.tell("DELETED", node);
    }

    fn tell(&mut self, kind: &str, node: Value) {
        let event = json!({"type": kind, "object": node});
        self.history.push((self.version, event.clone()));
        self.watches.retain(|watch| watch.send(event.clone()).is_ok());
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_body(status: u16, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("header"));
    response
}

async fn answer(request: Request<Incoming>, cluster: Arc<Mutex<Cluster>>) -> Response<Body> {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let watching = query.split('&').any(|p| p == "watch=true");
    let from: u64 =
        query.split('&').find_map(|p| p.strip_prefix("resourceVersion=")).and_then(|v| v.parse().ok()).unwrap_or(0);
    let bytes = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut cluster = cluster.lock().expect("lock");
    match (method.as_str(), path.as_str()) {
        ("GET", "/api/v1/nodes") if watching => {
            let (tx, rx) = mpsc::unbounded_channel::<Value>();
            for (_, event) in cluster.history.iter().filter(|(version, _)| *version > from) {
                let _ = tx.send(event.clone());
            }
            cluster.watches.push(tx);
            let lines = futures::stream::unfold(rx, |mut rx| async move {
                let event = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{event}\n")))), rx))
            });
            let mut response = Response::new(StreamBody::new(lines).boxed());
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("header"));
            response
        }
        ("GET", "/api/v1/nodes") => {
            let list = json!({"kind": "NodeList", "apiVersion": "v1",
                "metadata": {"resourceVersion": cluster.version.to_string()}, "items": cluster.nodes});
            json_body(200, &list)
        }
        ("PATCH", p) if p.starts_with("/api/v1/nodes/") => {
            let name = p.trim_start_matches("/api/v1/nodes/").to_owned();
            let patch: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            cluster.patches.push((name.clone(), patch.clone()));
            let Some(mut node) = cluster.nodes.iter().find(|n| n["metadata"]["name"] == name.as_str()).cloned() else {
                return json_body(404, &json!({"kind": "Status", "code": 404, "reason": "NotFound"}));
            };
            if let Some(spec) = patch.get("spec").and_then(Value::as_object) {
                for (key, value) in spec {
                    node["spec"][key] = value.clone();
                }
            }
            cluster.put(node.clone());
            json_body(200, &node)
        }
        _ => json_body(404, &json!({"kind": "Status", "code": 404, "reason": "NotFound"})),
    }
}

async fn serve(cluster: Arc<Mutex<Cluster>>) -> String {
    let acceptor = tls_acceptor(&PKI);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, cluster) = (acceptor.clone(), cluster.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |request| {
                    let cluster = cluster.clone();
                    async move { Ok::<_, Infallible>(answer(request, cluster).await) }
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    url
}

static PKI: std::sync::LazyLock<common::Pki> = std::sync::LazyLock::new(pki);

fn config(url: &str) -> ReporterConfig {
    ReporterConfig {
        api_server: url.to_owned(),
        ca_pem: PKI.ca_pem.clone().into_bytes(),
        cert_pem: PKI.client_cert_pem.clone().into_bytes(),
        key_pem: PKI.client_key_pem.clone().into_bytes(),
        node_name: OWN.to_owned(),
        timing: Timing { request_timeout: Duration::from_secs(10), ..Timing::default() },
    }
}

/// Waits until the published view satisfies `done`, and returns it.
async fn view_where(
    views: &mut watch::Receiver<Option<ClusterView>>,
    what: &str,
    done: impl Fn(&ClusterView) -> bool,
) -> ClusterView {
    let found = {
        let wait = views.wait_for(|view| view.as_ref().is_some_and(&done));
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(Ok(view)) => Some(view.clone().expect("a view")),
            Ok(Err(_)) => panic!("the watcher stopped before {what}"),
            Err(_) => None,
        }
    };
    found.unwrap_or_else(|| panic!("gave up waiting for {what}; the view is {:#?}", *views.borrow()))
}

fn peers(view: &ClusterView) -> Vec<String> {
    view.peers.iter().map(|p| format!("{} {} via {}", p.name, p.pod_cidr, p.address)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_nodes_joining_moving_and_leaving_and_a_pinned_cidr_is_written_once() {
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    {
        let mut c = cluster.lock().unwrap();
        c.put(node("cp-1", Some("10.244.0.0/24"), "192.168.100.10"));
        // Registered by the kubelet, without a pod CIDR yet.
        c.put(node(OWN, None, "192.168.100.11"));
    }
    let url = serve(cluster.clone()).await;
    let (views_tx, mut views) = watch::channel(None);
    let (stop, stopped) = oneshot::channel::<()>();
    let watcher = NodeWatcher::new(&config(&url), Some("10.244.1.0/24".parse().unwrap())).expect("watcher");
    let task = tokio::spawn(watcher.run(views_tx, async {
        let _ = stopped.await;
    }));

    let view = view_where(&mut views, "the first listing", |v| !v.peers.is_empty()).await;
    assert_eq!(peers(&view), ["cp-1 10.244.0.0/24 via 192.168.100.10"]);
    // The pinned CIDR is written into the node's own Node, and comes back
    // through the watch.
    let view = view_where(&mut views, "the own pod CIDR", |v| v.own_pod_cidr.is_some()).await;
    assert_eq!(view.own_pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
    let patches = cluster.lock().unwrap().patches.clone();
    assert_eq!(
        patches,
        [(OWN.to_owned(), json!({"spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}}))]
    );

    // A node joins: its route appears; one without a pod CIDR is not routed.
    cluster.lock().unwrap().put(node("w-2", Some("10.244.2.0/24"), "192.168.100.12"));
    cluster.lock().unwrap().put(node("w-3", None, "192.168.100.13"));
    let view = view_where(&mut views, "w-2's route", |v| v.peers.len() == 2).await;
    assert_eq!(peers(&view), ["cp-1 10.244.0.0/24 via 192.168.100.10", "w-2 10.244.2.0/24 via 192.168.100.12"]);
    // Its address changes: the route moves.
    cluster.lock().unwrap().put(node("w-2", Some("10.244.2.0/24"), "192.168.100.22"));
    let view = view_where(&mut views, "w-2's route moved", |v| peers(v).iter().any(|p| p.ends_with(".22"))).await;
    assert_eq!(peers(&view), ["cp-1 10.244.0.0/24 via 192.168.100.10", "w-2 10.244.2.0/24 via 192.168.100.22"]);
    // It is deleted: its route goes.
    cluster.lock().unwrap().delete("w-2");
    let view = view_where(&mut views, "w-2's route gone", |v| v.peers.len() == 1).await;
    assert_eq!(peers(&view), ["cp-1 10.244.0.0/24 via 192.168.100.10"]);
    assert_eq!(cluster.lock().unwrap().patches.len(), 1, "the pinned CIDR is written once");

    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, task).await.expect("the watcher stops when told").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_carrying_another_cidr_than_the_pinned_one_is_not_patched() {
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    cluster.lock().unwrap().put(node(OWN, Some("10.244.7.0/24"), "192.168.100.11"));
    let url = serve(cluster.clone()).await;
    let (views_tx, mut views) = watch::channel(None);
    let (_stop, stopped) = oneshot::channel::<()>();
    let watcher = NodeWatcher::new(&config(&url), Some("10.244.1.0/24".parse().unwrap())).expect("watcher");
    tokio::spawn(watcher.run(views_tx, async {
        let _ = stopped.await;
    }));
    let view = view_where(&mut views, "the first listing", |v| v.own_pod_cidr.is_some()).await;
    // The Node's value is the cluster's truth; spec.podCIDR cannot change.
    assert_eq!(view.own_pod_cidr, Some("10.244.7.0/24".parse().unwrap()));
    assert!(cluster.lock().unwrap().patches.is_empty());
}
