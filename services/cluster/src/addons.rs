//! The cluster objects Kelson's own parts need, applied by PID 1 on the
//! control-plane nodes with the `cluster-addons` credential `kelsonctl gen
//! cluster` issues them (`O=system:masters`, as kubeadm's super-admin).
//!
//! Today one grant: every node may list and watch all Nodes, which the
//! Node watcher needs for the routes between nodes. Kubernetes' Node
//! authorizer lets a node read only its own Node, and no built-in role
//! bound to nodes reads the others.
//!
//! Applied with server-side apply under one field manager, so applying
//! again (every boot, every control-plane node) changes nothing and the
//! objects stay Kelson's. The API server is a static pod of this node: it
//! is down at boot, so every failure is retried with back-off and logged
//! once per change of problem.

use crate::problems::{ApiProblem, QuietRetries};
use crate::reporter::{node_client, ReporterConfig, ReporterError, Timing};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{json, Value};
use std::future::Future;
use tracing::info;

/// The name of the credential in the machine config's `pki.certificates`.
pub const ADDONS_CERTIFICATE: &str = "cluster-addons";
/// The field manager of Kelson's server-side applies.
pub const FIELD_MANAGER: &str = "kelson-init";
/// The ClusterRole (and its binding) that lets nodes read every Node.
pub const NODE_READER: &str = "kelson:node-reader";

/// The objects, in the order they are applied.
pub fn addons() -> Vec<(ApiResource, Value)> {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": NODE_READER, "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": NODE_READER, "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_READER},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]
    });
    vec![(ApiResource::erase::<ClusterRole>(&()), role), (ApiResource::erase::<ClusterRoleBinding>(&()), binding)]
}

/// Applies [`addons()`] until every one is in, or `shutdown` completes.
/// `config` carries the `cluster-addons` credential.
pub struct AddonApplier {
    client: kube::Client,
    timing: Timing,
}

impl AddonApplier {
    /// Checks the credential and makes the client; within a tokio runtime.
    pub fn new(config: &ReporterConfig) -> Result<Self, ReporterError> {
        Ok(AddonApplier { client: node_client(config)?, timing: config.timing })
    }

    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut retry = self.timing.retry_min;
        let mut problems = QuietRetries::new("cluster addons");
        loop {
            let attempt = tokio::time::timeout(self.timing.request_timeout * 4, self.apply_all());
            let outcome = tokio::select! {
                () = &mut shutdown => return,
                outcome = attempt => outcome,
            };
            let failure = match outcome {
                Ok(Ok(names)) => {
                    info!("cluster addons applied: {}", names.join(", "));
                    return;
                }
                Ok(Err(failure)) => failure,
                Err(_) => "the API server did not answer in time".to_owned(),
            };
            problems.failed(&failure, &failure);
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(self.timing.retry_max);
        }
    }

    async fn apply_all(&self) -> Result<Vec<String>, String> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut applied = Vec::new();
        for (resource, object) in addons() {
            let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let what = format!("{} {name}", resource.kind);
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            api.patch(&name, &params, &Patch::Apply(&object))
                .await
                .map_err(|e| ApiProblem::new(&format!("applying {what}"), e).detail)?;
            applied.push(what);
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_reader_is_bound_to_every_node_and_reads_nodes_only() {
        let objects = addons();
        let (role_resource, role) = &objects[0];
        let (binding_resource, binding) = &objects[1];
        assert_eq!((role_resource.kind.as_str(), role_resource.plural.as_str()), ("ClusterRole", "clusterroles"));
        assert_eq!(binding_resource.plural, "clusterrolebindings");
        assert_eq!(
            role["rules"],
            json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}])
        );
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["subjects"][0]["name"], "system:nodes");
    }
}
