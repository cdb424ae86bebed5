//! The OpenAPI 3.1 document served at `/v1/openapi.json`. The functions
//! here are descriptions only (the server dispatches from `routes::ROUTES`,
//! and a test holds the two to each other); error answers are added to each
//! operation in [`openapi`] from one table.

use crate::types::*;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::SecurityScheme;
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kelson management API",
        version = "v1",
        description = "The management API of a Kelson node, on port 50000 over mutual TLS 1.3. The client certificate \
                       must chain to the cluster CA; its subject's organisation (O) is its role: `kelson:admin` may do \
                       everything, `kelson:read-only` every GET but the etcd snapshot. Every POST is audited."
    ),
    paths(
        version, status, services, service_action, pods, service_logs, container_logs, kernel_logs, init_logs,
        get_config, apply_config, reboot, shutdown, reset, etcd_members, etcd_status, etcd_alarms, etcd_snapshot,
        upgrade, openapi_json
    ),
    components(schemas(ErrorBody, ServiceAction)),
    security(("mutualTls" = [])),
    tags(
        (name = "node", description = "The node: version, status, power, reset, upgrade"),
        (name = "services", description = "Supervised services and static pods"),
        (name = "logs", description = "Logs as newline-delimited JSON, optionally followed"),
        (name = "config", description = "The machine config"),
        (name = "etcd", description = "The local etcd member (control-plane nodes)"),
    )
)]
struct ApiDoc;

/// The document served at `/v1/openapi.json`.
pub fn openapi() -> Document {
    let mut document = ApiDoc::openapi();
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "mutualTls",
        SecurityScheme::MutualTls {
            description: Some(
                "A client certificate from the cluster CA; its subject's O is the role (kelson:admin, \
                 kelson:read-only)."
                    .to_owned(),
            ),
            extensions: None,
        },
    );
    for (path, item) in document.paths.paths.iter_mut() {
        let operations = [(&mut item.get, false), (&mut item.post, true)];
        for (operation, is_post) in operations {
            if let Some(operation) = operation {
                add_errors(operation, &error_statuses(path, is_post));
            }
        }
    }
    document
}

/// The error statuses an operation can answer besides those its own
/// description lists: 403 for every one (a certificate without a known
/// role); the node's failures where the node is asked something that can
/// fail; 400 and 413 where a query or body is read.
fn error_statuses(path: &str, is_post: bool) -> Vec<u16> {
    let mut statuses = vec![403];
    if matches!(path, "/v1/version" | "/v1/status" | "/v1/openapi.json") {
        return statuses;
    }
    statuses.extend([404, 409, 500, 503]);
    if is_post || path.starts_with("/v1/logs/") {
        statuses.push(400);
    }
    if matches!(path, "/v1/config" | "/v1/reset") && is_post {
        statuses.push(413);
    }
    statuses
}

fn add_errors(operation: &mut Operation, statuses: &[u16]) {
    for status in statuses {
        let key = status.to_string();
        if operation.responses.responses.contains_key(&key) {
            continue;
        }
        let description = match status {
            400 => "The request is malformed (query, body, or a value the node refuses)",
            403 => "The client certificate's role may not do this",
            404 => "No such thing on this node",
            409 => "Not possible in the node's state",
            413 => "The request body is larger than 1 MiB",
            500 => "It went wrong on the node",
            _ => "The part of the node that would answer is not up",
        };
        let response = ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .build();
        operation.responses.responses.insert(key, response.into());
    }
}

#[utoipa::path(get, path = "/v1/version", tag = "node",
    responses((status = 200, description = "The node's name and versions", body = Version)))]
#[allow(dead_code)]
fn version() {}

#[utoipa::path(get, path = "/v1/status", tag = "node",
    responses((status = 200, description = "Boot stages, conditions, addresses, memory, boot entry", body = NodeStatus)))]
#[allow(dead_code)]
fn status() {}

#[utoipa::path(get, path = "/v1/services", tag = "services",
    responses((status = 200, description = "Every supervised service", body = [Service])))]
#[allow(dead_code)]
fn services() {}

#[utoipa::path(post, path = "/v1/services/{name}/{action}", tag = "services",
    params(
        ("name" = String, Path, description = "The service (`kubelet`, `containerd`)", example = "kubelet"),
        ("action" = ServiceAction, Path, description = "What to do to it"),
    ),
    responses((status = 200, description = "The service once the action took effect", body = Service)))]
#[allow(dead_code)]
fn service_action() {}

#[utoipa::path(get, path = "/v1/pods", tag = "services",
    responses((status = 200, description = "The static pods", body = [Pod])))]
#[allow(dead_code)]
fn pods() {}

#[utoipa::path(get, path = "/v1/logs/services/{name}", tag = "logs",
    params(("name" = String, Path, description = "The service", example = "kubelet"), LogParams),
    responses((status = 200, description = "One LogLine per line", body = LogLine, content_type = "application/x-ndjson")))]
#[allow(dead_code)]
fn service_logs() {}

#[utoipa::path(get, path = "/v1/logs/pods/{namespace}/{pod}/{container}", tag = "logs",
    params(
        ("namespace" = String, Path, description = "The pod's namespace", example = "kube-system"),
        ("pod" = String, Path, description = "The pod's name", example = "etcd-fake-node"),
        ("container" = String, Path, description = "The container's name", example = "etcd"),
        LogParams,
    ),
    responses((status = 200, description = "One LogLine per line", body = LogLine, content_type = "application/x-ndjson")))]
#[allow(dead_code)]
fn container_logs() {}

#[utoipa::path(get, path = "/v1/logs/kernel", tag = "logs", params(LogParams),
    responses((status = 200, description = "One LogLine per line", body = LogLine, content_type = "application/x-ndjson")))]
#[allow(dead_code)]
fn kernel_logs() {}

#[utoipa::path(get, path = "/v1/logs/init", tag = "logs", params(LogParams),
    responses((status = 200, description = "One LogLine per line", body = LogLine, content_type = "application/x-ndjson")))]
#[allow(dead_code)]
fn init_logs() {}

/// The query of every log endpoint.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct LogParams {
    /// At most this many of the lines already there (all that are kept when absent).
    #[param(value_type = Option<u64>, maximum = 4294967295.0)]
    tail: Option<u32>,
    /// Keep the response open and send new lines as they come.
    follow: Option<bool>,
}

#[utoipa::path(get, path = "/v1/config", tag = "config",
    responses((status = 200, description = "The effective config, secrets redacted", body = EffectiveConfig)))]
#[allow(dead_code)]
fn get_config() {}

#[utoipa::path(post, path = "/v1/config", tag = "config", request_body = ApplyConfig,
    responses(
        (status = 200, description = "Validated; applied unless a dry run", body = ApplyResult),
        (status = 422, description = "Rejected with its problems; nothing changed", body = ApplyResult),
    ))]
#[allow(dead_code)]
fn apply_config() {}

#[utoipa::path(post, path = "/v1/reboot", tag = "node",
    responses((status = 202, description = "The node reboots after answering", body = Accepted)))]
#[allow(dead_code)]
fn reboot() {}

#[utoipa::path(post, path = "/v1/shutdown", tag = "node",
    responses((status = 202, description = "The node powers off after answering", body = Accepted)))]
#[allow(dead_code)]
fn shutdown() {}

#[utoipa::path(post, path = "/v1/reset", tag = "node", request_body = ResetRequest,
    responses((status = 202, description = "The state partition is wiped at the reboot that follows", body = Accepted)))]
#[allow(dead_code)]
fn reset() {}

#[utoipa::path(get, path = "/v1/etcd/members", tag = "etcd",
    responses((status = 200, description = "The cluster's members", body = [EtcdMember])))]
#[allow(dead_code)]
fn etcd_members() {}

#[utoipa::path(get, path = "/v1/etcd/status", tag = "etcd",
    responses((status = 200, description = "The local member's status", body = EtcdStatus)))]
#[allow(dead_code)]
fn etcd_status() {}

#[utoipa::path(get, path = "/v1/etcd/alarms", tag = "etcd",
    responses((status = 200, description = "The active alarms", body = [EtcdAlarm])))]
#[allow(dead_code)]
fn etcd_alarms() {}

#[utoipa::path(get, path = "/v1/etcd/snapshot", tag = "etcd",
    responses((status = 200, description = "The etcd database (it holds the cluster's Secrets; admin only)",
        body = Vec<u8>, content_type = "application/octet-stream")))]
#[allow(dead_code)]
fn etcd_snapshot() {}

#[utoipa::path(post, path = "/v1/upgrade", tag = "node",
    params(("reboot" = Option<bool>, Query, description = "Reboot into the new version once installed")),
    request_body(content = Vec<u8>, description = "An update bundle (tar)", content_type = "application/octet-stream"),
    responses((status = 200, description = "Installed into the inactive slot", body = UpgradeResult)))]
#[allow(dead_code)]
fn upgrade() {}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "node",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}
