//! The task that talks to the API server with the node's own credentials
//! (`system:node:<node>`): it waits for the kubelet to register the Node,
//! then keeps Kelson's conditions on `nodes/<node>/status` (a strategic
//! merge patch keyed by condition type, so the kubelet's own conditions
//! stay untouched) and posts an Event for each change the pods go through.
//!
//! The API server is one of the static pods: at boot it is down, and
//! later it may restart. Every failure is therefore retried with back-off
//! and logged once when the state changes, not on every try.

use crate::conditions::{conditions, whole_seconds, ETCD_HEALTHY, STATIC_PODS_HEALTHY};
use crate::events::{events, EventSpec};
use crate::problems::{ApiProblem, QuietRetries};
use base64::Engine;
use k8s_openapi::api::core::v1::{Event, Node, NodeCondition};
use kelson_pods::runtime::PodsStatus;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::client::ConfigExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The component named as the source of Kelson's events.
pub const COMPONENT: &str = "kelson-init";
/// Where events about a Node go, as the kubelet posts them.
const EVENT_NAMESPACE: &str = "default";
/// Events not yet posted while the API server is away; older ones are
/// dropped first.
const EVENT_QUEUE_LIMIT: usize = 256;
/// An identical event within this window bumps the earlier one's count,
/// as client-go's recorder does.
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);

/// How to reach the API server as this node.
#[derive(Clone)]
pub struct ReporterConfig {
    /// `https://host:6443`, the machine config's `cluster.apiServerEndpoint`.
    pub api_server: String,
    /// The cluster CA that signed the API server's certificate (PEM).
    pub ca_pem: Vec<u8>,
    /// The node's client certificate, `CN=system:node:<node>` (PEM).
    pub cert_pem: Vec<u8>,
    /// Its private key (PEM). Never logged: `Debug` leaves it out.
    pub key_pem: Vec<u8>,
    /// The Node object's name, the kubelet's `--hostname-override` or the
    /// hostname.
    pub node_name: String,
    pub timing: Timing,
}

impl std::fmt::Debug for ReporterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReporterConfig")
            .field("api_server", &self.api_server)
            .field("node_name", &self.node_name)
            .field("key_pem", &"<redacted>")
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

/// How often the reporter acts; the defaults suit a node, tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Pod status changes within this window are reported together.
    pub debounce: Duration,
    /// Conditions are patched at least this often, so their heartbeat
    /// time shows the reporter is alive.
    pub heartbeat: Duration,
    /// The first retry after a failed request; doubled up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// One request's limit (connecting, then the answer).
    pub request_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            debounce: Duration::from_secs(1),
            heartbeat: Duration::from_secs(60),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    #[error("API server address {url:?} is not a URL")]
    ApiServerUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("reading the cluster CA: {reason}")]
    Ca { reason: String },
    #[error("reading the node's client certificate: {reason}")]
    ClientCertificate { reason: String },
    /// Only the reason: the key's bytes never reach a message.
    #[error("reading the node's client key: {reason}")]
    ClientKey { reason: String },
    #[error("making an API client for {url}")]
    Client {
        url: String,
        #[source]
        source: kube::Error,
    },
}

/// The reporter, ready to [`run`](Reporter::run).
pub struct Reporter {
    client: kube::Client,
    node_name: String,
    timing: Timing,
}

impl Reporter {
    /// Checks the PEMs and the URL and makes the API client. Must be called
    /// within a tokio runtime (the client spawns its connection pool).
    pub fn new(config: ReporterConfig) -> Result<Self, ReporterError> {
        let client = node_client(&config)?;
        Ok(Reporter { client, node_name: config.node_name, timing: config.timing })
    }

    /// Reports until `shutdown` completes. Never fails: every error is
    /// logged and retried.
    pub async fn run(self, mut pods: watch::Receiver<PodsStatus>, shutdown: impl Future<Output = ()>) {
        let mut state = State::new(self);
        tokio::pin!(shutdown);
        let mut pods_open = true;
        // The first snapshot counts as a change: the pods running now were
        // started by this boot.
        let mut flush_at = Some(Instant::now());
        loop {
            let wake = [flush_at, Some(state.next_api_action)].into_iter().flatten().min();
            let wake = wake.unwrap_or_else(|| Instant::now() + state.reporter.timing.heartbeat);
            tokio::select! {
                () = &mut shutdown => break,
                changed = pods.changed(), if pods_open => match changed {
                    Ok(()) => {
                        flush_at.get_or_insert(Instant::now() + state.reporter.timing.debounce);
                    }
                    Err(_) => {
                        debug!("cluster reporter: the pod manager is gone; reporting its last status");
                        pods_open = false;
                    }
                },
                () = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            if flush_at.is_some_and(|at| at <= now) {
                flush_at = None;
                let snapshot = pods.borrow_and_update().clone();
                state.observe(snapshot, SystemTime::now());
            }
            if state.next_api_action <= now {
                // A request may wait out its timeout; shutdown need not.
                tokio::select! {
                    () = &mut shutdown => break,
                    () = state.talk() => {}
                }
            }
        }
        debug!("cluster reporter for node {}: stopped", state.reporter.node_name);
    }
}

/// What the reporter knows between wake-ups.
struct State {
    reporter: Reporter,
    /// The Node was found (and not since answered 404).
    node_seen: bool,
    /// Kelson's conditions as last computed (their transition times carry
    /// over); from the Node itself once it was read.
    conditions: Vec<NodeCondition>,
    pods: PodsStatus,
    /// The pods changed since the last patch.
    dirty: bool,
    next_heartbeat: Instant,
    next_api_action: Instant,
    retry: Duration,
    queue: VecDeque<(EventSpec, SystemTime)>,
    dropped_events: usize,
    /// Events posted within the aggregation window, by content.
    posted: HashMap<EventSpec, Posted>,
    problems: QuietRetries,
    /// The time part of the last event name, kept rising so that events
    /// posted within one clock tick still get distinct names.
    last_event_nanos: u128,
}

struct Posted {
    name: String,
    count: i32,
    last: SystemTime,
}

impl State {
    fn new(reporter: Reporter) -> Self {
        let retry = reporter.timing.retry_min;
        let problems = QuietRetries::new(format!("cluster reporter for node {}", reporter.node_name));
        State {
            reporter,
            node_seen: false,
            conditions: Vec::new(),
            pods: PodsStatus::default(),
            dirty: true,
            next_heartbeat: Instant::now(),
            next_api_action: Instant::now(),
            retry,
            queue: VecDeque::new(),
            dropped_events: 0,
            posted: HashMap::new(),
            problems,
            last_event_nanos: 0,
        }
    }

    fn observe(&mut self, snapshot: PodsStatus, now: SystemTime) {
        for event in events(&self.pods, &snapshot) {
            if self.queue.len() == EVENT_QUEUE_LIMIT {
                self.queue.pop_front();
                self.dropped_events += 1;
            }
            self.queue.push_back((event, now));
        }
        self.pods = snapshot;
        self.dirty = true;
        // Report now, unless waiting out a failure's back-off.
        if !self.problems.failing() {
            self.next_api_action = Instant::now();
        }
    }

    /// One round with the API server: find the Node, patch conditions when
    /// due, post queued events. A failure schedules the next round after
    /// the back-off.
    async fn talk(&mut self) {
        match self.round().await {
            Ok(()) => {
                self.problems.recovered("reporting again");
                self.retry = self.reporter.timing.retry_min;
                self.next_api_action = self.next_heartbeat;
            }
            Err(problem) => {
                self.problems.failed(&problem.summary, &problem.detail);
                self.next_api_action = Instant::now() + self.retry;
                self.retry = (self.retry * 2).min(self.reporter.timing.retry_max);
            }
        }
    }

    async fn round(&mut self) -> Result<(), ApiProblem> {
        let node_name = self.reporter.node_name.clone();
        // Untyped objects: typed Node and Event (de)serializers added 62 KB
        // to PID 1's release build for fields never read.
        let nodes: Api<DynamicObject> = Api::all_with(self.reporter.client.clone(), &ApiResource::erase::<Node>(&()));
        if !self.node_seen {
            let node =
                self.call(&format!("reading Node {node_name}"), nodes.get(&node_name)).await.map_err(|mut p| {
                    if p.not_found {
                        p.detail.push_str(" yet (the kubelet registers it)");
                    }
                    p
                })?;
            self.node_seen = true;
            self.conditions = kelson_conditions(&node);
            info!("cluster reporter: Node {node_name} is registered; reporting its static pods");
        }
        if self.dirty || Instant::now() >= self.next_heartbeat {
            let next = conditions(&self.pods, &self.conditions, SystemTime::now());
            let patch = serde_json::json!({ "status": { "conditions": &next } });
            let action = format!("patching the conditions of Node {node_name}");
            let patched = self
                .call(&action, nodes.patch_status(&node_name, &PatchParams::default(), &Patch::Strategic(&patch)))
                .await;
            if patched.as_ref().is_err_and(|p| p.not_found) {
                // The Node was deleted: wait for it again, and take the
                // new one's conditions as the previous ones.
                self.node_seen = false;
            }
            patched?;
            self.conditions = next;
            self.dirty = false;
            self.next_heartbeat = Instant::now() + self.reporter.timing.heartbeat;
        }
        if self.dropped_events > 0 {
            warn!(
                "cluster reporter: {} events dropped while the API server was unreachable",
                std::mem::take(&mut self.dropped_events)
            );
        }
        while let Some((spec, at)) = self.queue.front().cloned() {
            self.post(&spec, at).await?;
            self.queue.pop_front();
        }
        Ok(())
    }

    async fn post(&mut self, spec: &EventSpec, at: SystemTime) -> Result<(), ApiProblem> {
        let events: Api<DynamicObject> =
            Api::namespaced_with(self.reporter.client.clone(), EVENT_NAMESPACE, &ApiResource::erase::<Event>(&()));
        self.posted.retain(|_, p| at.duration_since(p.last).unwrap_or_default() < AGGREGATE_WINDOW);
        if let Some(earlier) = self.posted.get_mut(spec) {
            let count = earlier.count.saturating_add(1);
            let patch = serde_json::json!({ "count": count, "lastTimestamp": whole_seconds(at) });
            let action = format!("updating Event {}", earlier.name);
            let (params, patch) = (PatchParams::default(), Patch::Strategic(&patch));
            let bump = events.patch(&earlier.name, &params, &patch);
            match tokio::time::timeout(self.reporter.timing.request_timeout, bump).await {
                Ok(Ok(_)) => {
                    earlier.count = count;
                    earlier.last = at;
                    return Ok(());
                }
                // Gone (expired, or etcd was reset): post it anew.
                Ok(Err(kube::Error::Api(status))) if status.code == 404 => {}
                Ok(Err(e)) => return Err(ApiProblem::new(&action, e)),
                Err(_) => return Err(ApiProblem::timed_out(&action, self.reporter.timing.request_timeout)),
            }
        }
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        self.last_event_nanos = nanos.max(self.last_event_nanos + 1);
        let event = match self.event(spec, at, self.last_event_nanos) {
            Ok(event) => event,
            Err(e) => {
                // Not worth a retry, nor blocking the events behind it.
                warn!("cluster reporter: dropping an Event ({}): {e}", spec.reason);
                return Ok(());
            }
        };
        let name = event.metadata.name.clone().unwrap_or_default();
        self.call(&format!("posting Event {name} ({})", spec.reason), events.create(&PostParams::default(), &event))
            .await?;
        self.posted.insert(spec.clone(), Posted { name, count: 1, last: at });
        Ok(())
    }

    /// One request, within the request timeout.
    async fn call<T>(
        &self,
        action: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ApiProblem> {
        let limit = self.reporter.timing.request_timeout;
        match tokio::time::timeout(limit, request).await {
            Ok(answer) => answer.map_err(|e| ApiProblem::new(action, e)),
            Err(_) => Err(ApiProblem::timed_out(action, limit)),
        }
    }

    fn event(&self, spec: &EventSpec, at: SystemTime, nanos: u128) -> Result<DynamicObject, serde_json::Error> {
        let node = &self.reporter.node_name;
        let time = whole_seconds(at);
        let event = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                // client-go's naming: the object, then the time of posting
                // in hex (unique: see `last_event_nanos`).
                "name": format!("{node}.{nanos:x}"),
                "namespace": EVENT_NAMESPACE,
            },
            // The node's name as uid, not its uid: `kubectl describe node`
            // looks for events with uid = name, as the kubelet and
            // node-problem-detector post them.
            "involvedObject": { "apiVersion": "v1", "kind": "Node", "name": node, "uid": node },
            "type": spec.type_.as_str(),
            "reason": spec.reason,
            "message": spec.message,
            "source": { "component": COMPONENT, "host": node },
            "reportingComponent": COMPONENT,
            "reportingInstance": node,
            "count": 1,
            "firstTimestamp": &time,
            "lastTimestamp": &time,
        });
        serde_json::from_value(event)
    }
}

/// An API client authenticated as the node: checks the PEMs and the URL.
/// Must be called within a tokio runtime (the client spawns its
/// connection pool).
pub(crate) fn node_client(config: &ReporterConfig) -> Result<kube::Client, ReporterError> {
    let url = config.api_server.clone();
    let uri: http::Uri = url.parse().map_err(|source| ReporterError::ApiServerUrl { url: url.clone(), source })?;
    let ca = certificates(&config.ca_pem).map_err(|reason| ReporterError::Ca { reason })?;
    certificates(&config.cert_pem).map_err(|reason| ReporterError::ClientCertificate { reason })?;
    PrivateKeyDer::from_pem_slice(&config.key_pem)
        .map_err(|e| ReporterError::ClientKey { reason: pem_reason(&e, "PRIVATE KEY") })?;

    let mut kube_config = kube::Config::new(uri);
    kube_config.root_cert = Some(ca);
    let b64 = base64::engine::general_purpose::STANDARD;
    kube_config.auth_info.client_certificate_data = Some(b64.encode(&config.cert_pem));
    kube_config.auth_info.client_key_data = Some(b64.encode(&config.key_pem).into());
    let https = kube_config.rustls_https_connector().map_err(|source| ReporterError::Client { url, source })?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    // The client certificate authenticates in the TLS handshake: no auth
    // layer. No retry layer either: retries are the caller's.
    let service = tower::ServiceBuilder::new().layer(kube_config.base_uri_layer()).service(http);
    Ok(kube::Client::new(service, EVENT_NAMESPACE))
}

/// Kelson's conditions among the Node's (the kubelet's are not ours to
/// carry over). Conditions that do not parse count as absent.
fn kelson_conditions(node: &DynamicObject) -> Vec<NodeCondition> {
    let Some(conditions) = node.data.get("status").and_then(|s| s.get("conditions")) else {
        return Vec::new();
    };
    let conditions: Vec<NodeCondition> = serde_json::from_value(conditions.clone()).unwrap_or_else(|e| {
        debug!("cluster reporter: the Node's conditions do not parse ({e}); starting without them");
        Vec::new()
    });
    conditions.into_iter().filter(|c| c.type_ == STATIC_PODS_HEALTHY || c.type_ == ETCD_HEALTHY).collect()
}

/// Every `CERTIFICATE` block of a PEM, as DER; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_reason(&e, "CERTIFICATE"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block in the PEM".to_owned());
    }
    Ok(certs)
}

/// The reason without echoing any of the input (it may be a key).
fn pem_reason(error: &rustls_pki_types::pem::Error, wanted: &str) -> String {
    match error {
        rustls_pki_types::pem::Error::NoItemsFound => format!("no {wanted} block in the PEM"),
        _ => format!("the PEM is malformed where a {wanted} block was expected"),
    }
}
