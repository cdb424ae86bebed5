//! The task that follows the cluster's Node objects and publishes the
//! [`ClusterView`] PID 1 routes by: a node that joins gets its route
//! within a watch event, a deleted one loses it, a changed address moves
//! it.
//!
//! It uses the node's own credential. Kubernetes' Node authorizer lets a
//! node read only its own Node; the list and watch of all of them is
//! granted by the ClusterRole [`crate::addons`] binds to `system:nodes`,
//! which PID 1 applies on the control-plane nodes. Until that exists the
//! watcher is refused and retries quietly; the static routes hold.
//!
//! A node whose config pins its pod CIDR also writes it into its own Node's
//! `spec.podCIDR` while that is empty (the API server allows that one
//! change), so the other nodes learn where its pods live. With the
//! controller-manager allocating (`--allocate-node-cidrs`), the Node's
//! value is what the view carries.
//!
//! At boot the API server may be down or a static pod of this very node:
//! failures are retried with back-off (kube's watcher) and logged once per
//! change of problem.

use crate::problems::{error_chain, QuietRetries};
use crate::reporter::{node_client, ReporterConfig, ReporterError};
use crate::routes::{cluster_view, ClusterView, NodeAddressing};
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How often writing the pinned pod CIDR is tried again after a failure.
const PIN_RETRY: Duration = Duration::from_secs(5);

/// Follows the Node objects; see the module's documentation.
pub struct NodeWatcher {
    client: kube::Client,
    node_name: String,
    pinned_pod_cidr: Option<Ipv4Net>,
    request_timeout: Duration,
}

impl NodeWatcher {
    /// Checks the node's credentials and makes the client; within a tokio
    /// runtime. `pinned_pod_cidr` is the node's config's `network.podCIDR`,
    /// if any.
    pub fn new(config: &ReporterConfig, pinned_pod_cidr: Option<Ipv4Net>) -> Result<Self, ReporterError> {
        Ok(NodeWatcher {
            client: node_client(config)?,
            node_name: config.node_name.clone(),
            pinned_pod_cidr,
            request_timeout: config.timing.request_timeout,
        })
    }

    /// Publishes the view on `views` whenever it changes, until `shutdown`
    /// completes. Never fails: every error is logged and retried.
    pub async fn run(self, views: watch::Sender<Option<ClusterView>>, shutdown: impl Future<Output = ()>) {
        let nodes: Api<DynamicObject> = Api::all_with(self.client.clone(), &ApiResource::erase::<Node>(&()));
        let stream = watcher::watcher(nodes.clone(), watcher::Config::default()).default_backoff();
        tokio::pin!(stream);
        tokio::pin!(shutdown);
        let mut known: BTreeMap<String, NodeAddressing> = BTreeMap::new();
        // Filled during a (re-)list; replaces `known` when it is complete.
        let mut listing: Option<BTreeMap<String, NodeAddressing>> = None;
        let mut problems = QuietRetries::new("node watcher");
        let mut pin = PinState::default();
        loop {
            let retry_pin = pin.retry_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let event = tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep_until(retry_pin), if pin.retry_at.is_some() => None,
                event = stream.next() => match event {
                    Some(event) => Some(event),
                    None => {
                        warn!("node watcher: the watch of Nodes ended; routes stay as they are");
                        break;
                    }
                },
            };
            match event {
                None => {}
                Some(Err(e)) => {
                    let text = format!("watching Nodes: {}", error_chain(&e));
                    problems.failed(&text, &text);
                    continue;
                }
                Some(Ok(event)) => {
                    // Init comes before a (re-)list that may fail again:
                    // only a completed list or an event is news.
                    if !matches!(event, Event::Init | Event::InitApply(_)) {
                        problems.recovered("the watch works again");
                    }
                    match event {
                        Event::Init => listing = Some(BTreeMap::new()),
                        Event::InitApply(node) => {
                            if let Some(listing) = listing.as_mut() {
                                listing.insert(name_of(&node), NodeAddressing::from_node(&node.data));
                            }
                        }
                        Event::InitDone => {
                            if let Some(listed) = listing.take() {
                                known = listed;
                            }
                        }
                        Event::Apply(node) => {
                            known.insert(name_of(&node), NodeAddressing::from_node(&node.data));
                        }
                        Event::Delete(node) => {
                            known.remove(&name_of(&node));
                        }
                    }
                    if listing.is_some() {
                        continue;
                    }
                }
            }
            let view = cluster_view(&known, &self.node_name);
            if known.contains_key(&self.node_name) {
                self.pin_own_pod_cidr(&nodes, view.own_pod_cidr, &mut pin).await;
            } else {
                // A Node registered again starts without a pod CIDR.
                pin.written = false;
            }
            views.send_if_modified(|current| {
                if current.as_ref() == Some(&view) {
                    return false;
                }
                debug!(peers = view.peers.len(), "node watcher: the cluster's routes changed");
                *current = Some(view);
                true
            });
        }
        debug!("node watcher for node {}: stopped", self.node_name);
    }

    /// Writes the pinned pod CIDR into this node's Node while the Node has
    /// none; says once if the Node carries another one.
    async fn pin_own_pod_cidr(&self, nodes: &Api<DynamicObject>, on_node: Option<Ipv4Net>, pin: &mut PinState) {
        let Some(pinned) = self.pinned_pod_cidr else { return };
        match on_node {
            Some(cidr) if cidr == pinned => {
                pin.retry_at = None;
                return;
            }
            Some(cidr) => {
                pin.retry_at = None;
                if !pin.mismatch_logged {
                    warn!(
                        "node watcher: Node {} has spec.podCIDR {cidr} but this node's config pins network.podCIDR \
                         {pinned}; the other nodes route {cidr} here while cbr0 serves {pinned}",
                        self.node_name
                    );
                    pin.mismatch_logged = true;
                }
                return;
            }
            None => {}
        }
        // Written, and the watch has not caught up with it yet.
        if pin.written || pin.retry_at.is_some_and(|at| at > Instant::now()) {
            return;
        }
        let text = pinned.to_string();
        let patch = serde_json::json!({ "spec": { "podCIDR": text, "podCIDRs": [text] } });
        let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
        let request = nodes.patch(&self.node_name, &params, &patch);
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(_)) => {
                info!(
                    "node watcher: wrote spec.podCIDR {pinned} (the config's network.podCIDR) into Node {}",
                    self.node_name
                );
                pin.retry_at = None;
                pin.written = true;
            }
            Ok(Err(e)) => {
                warn!("node watcher: writing spec.podCIDR {pinned} into Node {}: {}", self.node_name, error_chain(&e));
                pin.retry_at = Some(Instant::now() + PIN_RETRY);
            }
            Err(_) => {
                warn!(
                    "node watcher: writing spec.podCIDR {pinned} into Node {}: no answer within {} s",
                    self.node_name,
                    self.request_timeout.as_secs()
                );
                pin.retry_at = Some(Instant::now() + PIN_RETRY);
            }
        }
    }
}

#[derive(Default)]
struct PinState {
    /// When to try writing the pinned pod CIDR again after a failure.
    retry_at: Option<Instant>,
    /// Written into the current Node.
    written: bool,
    mismatch_logged: bool,
}

fn name_of(node: &DynamicObject) -> String {
    node.metadata.name.clone().unwrap_or_default()
}
