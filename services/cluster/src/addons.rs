//! The cluster objects Kelson's own parts need, applied by PID 1 on the
//! control-plane nodes with the `cluster-addons` credential `kelsonctl gen
//! cluster` issues them (`O=system:masters`, as kubeadm's super-admin).
//!
//! - Every node may list and watch all Nodes, which the Node watcher needs
//!   for the routes between nodes. Kubernetes' Node authorizer lets a node
//!   read only its own Node, and no built-in role bound to nodes reads the
//!   others.
//! - Joining by bootstrap token, as kubeadm sets it up: the token's Secret
//!   (`kube-system/bootstrap-token-<id>`, for authentication and signing,
//!   with its expiration), `kube-public/cluster-info` (a kubeconfig with
//!   the CA and the API server, which the controller-manager's
//!   bootstrapsigner signs with each token) readable by
//!   `system:anonymous`, and the grants: the token's group
//!   `system:bootstrappers` may ask for a node certificate
//!   (`system:node-bootstrapper`) and have it approved
//!   (`...:nodeclient`), and nodes may renew theirs (`...:selfnodeclient`).
//! - kube-proxy on a node without a certificate of its own runs as the
//!   node (its kubelet's client certificate): `system:node-proxier` is
//!   bound to `system:nodes`.
//!
//! Applied with server-side apply under one field manager, so applying
//! again (every boot, every control-plane node) changes nothing and the
//! objects stay Kelson's; the bootstrapsigner's signatures in cluster-info
//! are its own fields and stay. The API server is a static pod of this
//! node: it is down at boot, so every failure is retried with back-off and
//! logged once per change of problem. No log line carries the token's
//! secret: objects are named by kind and name.

use crate::discovery::{cluster_info_kubeconfig, BootstrapToken, CLUSTER_INFO, CLUSTER_INFO_NAMESPACE, KUBECONFIG_KEY};
use crate::problems::{ApiProblem, QuietRetries};
use crate::reporter::{node_client, ReporterConfig, ReporterError, Timing};
use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
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
/// The group every bootstrap token authenticates in.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The extra group kubeadm gives its node tokens; Kelson's tokens carry it
/// too, so RBAC written for kubeadm clusters applies.
pub const KUBEADM_NODE_TOKEN_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// What a control-plane node publishes for workers that join by token.
#[derive(Debug, Clone)]
pub struct TokenJoin {
    pub token: BootstrapToken,
    /// RFC 3339; `None`: the token does not expire.
    pub expiration: Option<String>,
    /// The API server cluster-info names (`cluster.apiServerEndpoint`).
    pub server: String,
    /// The cluster CA, PEM (`pki.ca`).
    pub ca_pem: String,
}

fn labels() -> Value {
    json!({"app.kubernetes.io/managed-by": FIELD_MANAGER})
}

fn cluster_role_binding(name: &str, role: &str, group: &str) -> (ApiResource, Value) {
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": labels()},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]
    });
    (ApiResource::erase::<ClusterRoleBinding>(&()), binding)
}

/// The objects, in the order they are applied: the node reader and the
/// node-proxier grant always, the token join's when `join` is given.
pub fn addons(join: Option<&TokenJoin>) -> Vec<(ApiResource, Value)> {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": NODE_READER, "labels": labels()},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    });
    let mut objects = vec![
        (ApiResource::erase::<ClusterRole>(&()), role),
        cluster_role_binding(NODE_READER, NODE_READER, "system:nodes"),
        cluster_role_binding("kelson:node-proxier", "system:node-proxier", "system:nodes"),
    ];
    if let Some(join) = join {
        objects.extend(token_join_objects(join));
    }
    objects
}

fn token_join_objects(join: &TokenJoin) -> Vec<(ApiResource, Value)> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let id = join.token.id();
    let mut data = json!({
        "token-id": b64(id),
        "token-secret": b64(join.token.secret()),
        "usage-bootstrap-authentication": b64("true"),
        "usage-bootstrap-signing": b64("true"),
        "auth-extra-groups": b64(KUBEADM_NODE_TOKEN_GROUP),
        "description": b64("Kelson worker join token (kelsonctl gen cluster)"),
    });
    if let Some(expiration) = &join.expiration {
        data["expiration"] = b64(expiration).into();
    }
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system", "labels": labels()},
        "type": "bootstrap.kubernetes.io/token",
        "data": data
    });
    let cluster_info = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CLUSTER_INFO, "namespace": CLUSTER_INFO_NAMESPACE, "labels": labels()},
        "data": {KUBECONFIG_KEY: cluster_info_kubeconfig(&join.server, &join.ca_pem)}
    });
    let reader = "kelson:bootstrap-signer-clusterinfo";
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": reader, "namespace": CLUSTER_INFO_NAMESPACE, "labels": labels()},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CLUSTER_INFO], "verbs": ["get"]}]
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": reader, "namespace": CLUSTER_INFO_NAMESPACE, "labels": labels()},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": reader},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}]
    });
    vec![
        (ApiResource::erase::<Secret>(&()), secret),
        (ApiResource::erase::<ConfigMap>(&()), cluster_info),
        (ApiResource::erase::<Role>(&()), role),
        (ApiResource::erase::<RoleBinding>(&()), binding),
        cluster_role_binding("kelson:kubelet-bootstrap", "system:node-bootstrapper", BOOTSTRAPPERS),
        cluster_role_binding(
            "kelson:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            BOOTSTRAPPERS,
        ),
        cluster_role_binding(
            "kelson:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:nodes",
        ),
    ]
}

/// Applies [`addons()`] until every one is in, or `shutdown` completes.
/// `config` carries the `cluster-addons` credential.
pub struct AddonApplier {
    client: kube::Client,
    timing: Timing,
    join: Option<TokenJoin>,
}

impl AddonApplier {
    /// Checks the credential and makes the client; within a tokio runtime.
    /// `join`: what workers joining by token need, if this cluster has a
    /// token.
    pub fn new(config: &ReporterConfig, join: Option<TokenJoin>) -> Result<Self, ReporterError> {
        Ok(AddonApplier { client: node_client(config)?, timing: config.timing, join })
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
        for (resource, object) in addons(self.join.as_ref()) {
            let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
                Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, &resource),
                None => Api::all_with(self.client.clone(), &resource),
            };
            let what = match object["metadata"]["namespace"].as_str() {
                Some(namespace) => format!("{} {namespace}/{name}", resource.kind),
                None => format!("{} {name}", resource.kind),
            };
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

    fn join() -> TokenJoin {
        TokenJoin {
            token: BootstrapToken::parse("abcdef.0123456789abcdef").unwrap(),
            expiration: Some("2026-12-09T10:00:00Z".into()),
            server: "https://192.168.100.10:6443".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        }
    }

    fn find<'a>(objects: &'a [(ApiResource, Value)], kind: &str, name: &str) -> &'a Value {
        objects
            .iter()
            .find(|(r, o)| r.kind == kind && o["metadata"]["name"] == name)
            .map(|(_, o)| o)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    fn decoded(secret: &Value, key: &str) -> String {
        let text = secret["data"][key].as_str().unwrap_or_else(|| panic!("no {key}"));
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(text).unwrap()).unwrap()
    }

    #[test]
    fn the_node_reader_is_bound_to_every_node_and_reads_nodes_only() {
        let objects = addons(None);
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
        let proxier = find(&objects, "ClusterRoleBinding", "kelson:node-proxier");
        assert_eq!(proxier["roleRef"]["name"], "system:node-proxier");
        assert_eq!(proxier["subjects"][0]["name"], "system:nodes");
        assert!(!objects.iter().any(|(r, _)| r.kind == "Secret"), "no token, no Secret");
    }

    #[test]
    fn a_token_becomes_kubeadms_secret_cluster_info_and_grants() {
        let objects = addons(Some(&join()));
        let secret = find(&objects, "Secret", "bootstrap-token-abcdef");
        assert_eq!(secret["metadata"]["namespace"], "kube-system");
        assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");
        assert_eq!(decoded(secret, "token-id"), "abcdef");
        assert_eq!(decoded(secret, "token-secret"), "0123456789abcdef");
        assert_eq!(decoded(secret, "usage-bootstrap-authentication"), "true");
        assert_eq!(decoded(secret, "usage-bootstrap-signing"), "true");
        assert_eq!(decoded(secret, "expiration"), "2026-12-09T10:00:00Z");
        assert_eq!(decoded(secret, "auth-extra-groups"), KUBEADM_NODE_TOKEN_GROUP);

        let info = find(&objects, "ConfigMap", "cluster-info");
        assert_eq!(info["metadata"]["namespace"], "kube-public");
        let kubeconfig = info["data"]["kubeconfig"].as_str().unwrap();
        let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://192.168.100.10:6443"));
        let ca = base64::engine::general_purpose::STANDARD.decode(cluster.certificate_authority_data.as_ref().unwrap());
        assert_eq!(String::from_utf8(ca.unwrap()).unwrap(), join().ca_pem);
        assert!(parsed.auth_infos.is_empty(), "cluster-info carries no credential");

        let role = find(&objects, "Role", "kelson:bootstrap-signer-clusterinfo");
        assert_eq!(role["rules"][0]["resourceNames"], json!(["cluster-info"]));
        assert_eq!(role["rules"][0]["verbs"], json!(["get"]));
        let binding = find(&objects, "RoleBinding", "kelson:bootstrap-signer-clusterinfo");
        assert_eq!(
            binding["subjects"][0],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"})
        );

        for (name, role, group) in [
            ("kelson:kubelet-bootstrap", "system:node-bootstrapper", "system:bootstrappers"),
            (
                "kelson:node-autoapprove-bootstrap",
                "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                "system:bootstrappers",
            ),
            (
                "kelson:node-autoapprove-certificate-rotation",
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                "system:nodes",
            ),
        ] {
            let binding = find(&objects, "ClusterRoleBinding", name);
            assert_eq!(
                (binding["roleRef"]["name"].as_str(), binding["subjects"][0]["name"].as_str()),
                (Some(role), Some(group))
            );
        }
        // A token without expiration has no expiration key.
        let forever = TokenJoin { expiration: None, ..join() };
        let objects = addons(Some(&forever));
        assert!(find(&objects, "Secret", "bootstrap-token-abcdef")["data"].get("expiration").is_none());
    }
}
