//! One request: roles, routing, the call into the [`Node`], the answer, and
//! the audit line for writes.

use crate::audit::{self, AuditRecord};
use crate::backend::{Node, NodeError, Power};
use crate::body::{
    json, parse_bool, query_pairs, read_json, ApiError, ByteStreamBody, LogBody, ResponseBody, UploadReader,
};
use crate::routes::{resolve, Endpoint, Miss};
use crate::tls::{Client, Role};
use crate::types::{Accepted, ApplyConfig, ApplyResult, LogQuery, LogSource, ResetRequest, ServiceAction};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What every connection's requests share.
pub struct Shared<N> {
    pub node: Arc<N>,
    pub audit_log: Option<PathBuf>,
}

/// Answers one request, and audits it when it is a write.
pub async fn handle<N: Node>(
    shared: &Shared<N>,
    client: &Client,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut what = None;
    let response = match answer(shared, client, request, &mut what).await {
        Ok(response) => response,
        Err(error) => {
            if error.status.is_server_error() {
                tracing::warn!(%method, %path, status = error.status.as_u16(), message = %error.message, "request failed");
            }
            error.into_response()
        }
    };
    if method == Method::POST {
        audit(shared, client, &method, &path, response.status(), what.as_deref()).await;
    }
    response
}

async fn audit(
    shared: &Shared<impl Node>,
    client: &Client,
    method: &Method,
    path: &str,
    status: StatusCode,
    what: Option<&str>,
) {
    let role = client.role.map(Role::as_str);
    tracing::info!(
        subject = %client.common_name,
        serial = %client.serial,
        role = role.unwrap_or("none"),
        %method,
        path,
        status = status.as_u16(),
        what = what.unwrap_or(""),
        "API write"
    );
    let Some(log) = &shared.audit_log else { return };
    let at_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_millis()).unwrap_or_default();
    let record = AuditRecord {
        at_unix_ms: u64::try_from(at_unix_ms).unwrap_or(u64::MAX),
        subject: &client.common_name,
        serial: &client.serial,
        role,
        method: method.as_str(),
        path,
        status: status.as_u16(),
        what,
    };
    if let Err(error) = audit::append(log, &record).await {
        tracing::error!(error = %crate::error_chain(&error), "writing an API write's audit line");
    }
}

async fn answer<N: Node>(
    shared: &Shared<N>,
    client: &Client,
    request: Request<Incoming>,
    what: &mut Option<String>,
) -> Result<Response<ResponseBody>, ApiError> {
    let Some(role) = client.role else {
        return Err(ApiError::forbidden(format!(
            "the client certificate's organisation (O) names no role of this API ({} or {})",
            crate::ROLE_ADMIN,
            crate::ROLE_READ_ONLY
        )));
    };
    let path = request.uri().path();
    let (endpoint, captures) = resolve(request.method(), path).map_err(|miss| match miss {
        Miss::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not-found", format!("no endpoint {path}")),
        Miss::MethodNotAllowed(allow) => ApiError {
            allow: Some(allow),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{path} does not take {}", request.method()),
            )
        },
    })?;
    if endpoint.admin_only() && role != Role::Admin {
        return Err(ApiError::forbidden(format!("{} {path} needs the role {}", request.method(), crate::ROLE_ADMIN)));
    }
    let node = &*shared.node;
    let query = query_pairs(request.uri().query())?;
    Ok(match endpoint {
        Endpoint::Version => ok(&node.version()),
        Endpoint::Status => ok(&node.status()),
        Endpoint::Services => ok(&node.services()?),
        Endpoint::ServiceAction => {
            let [name, action] = <[String; 2]>::try_from(captures).map_err(|_| not_found(path))?;
            let action = match action.as_str() {
                "start" => ServiceAction::Start,
                "stop" => ServiceAction::Stop,
                "restart" => ServiceAction::Restart,
                _ => return Err(not_found(path)),
            };
            *what = Some(format!("{name} {}", action.as_str()));
            ok(&node.service_action(&name, action).await?)
        }
        Endpoint::Pods => ok(&node.pods()?),
        Endpoint::ServiceLogs => {
            let [name] = <[String; 1]>::try_from(captures).map_err(|_| not_found(path))?;
            logs(node, LogSource::Service(name), &query).await?
        }
        Endpoint::ContainerLogs => {
            let [namespace, pod, container] = <[String; 3]>::try_from(captures).map_err(|_| not_found(path))?;
            logs(node, LogSource::Container { namespace, pod, container }, &query).await?
        }
        Endpoint::KernelLogs => logs(node, LogSource::Kernel, &query).await?,
        Endpoint::InitLogs => logs(node, LogSource::Init, &query).await?,
        Endpoint::GetConfig => ok(&node.config()?),
        Endpoint::ApplyConfig => {
            let request: ApplyConfig = read_json(request.into_body()).await?;
            let dry_run = request.dry_run;
            *what = Some(format!("dryRun={dry_run}"));
            match node.apply_config(request).await {
                Ok(result) => ok(&result),
                Err(NodeError::InvalidConfig(problems)) => {
                    let rejected = ApplyResult {
                        dry_run,
                        problems,
                        diff: String::new(),
                        applied_live: Vec::new(),
                        reboot_required: Vec::new(),
                        live_errors: Vec::new(),
                    };
                    json(StatusCode::UNPROCESSABLE_ENTITY, &rejected)
                }
                Err(error) => return Err(error.into()),
            }
        }
        Endpoint::Reboot => {
            node.power(Power::Reboot)?;
            accepted("reboot")
        }
        Endpoint::Shutdown => {
            node.power(Power::PowerOff)?;
            accepted("shutdown")
        }
        Endpoint::Reset => {
            let request: ResetRequest = read_json(request.into_body()).await?;
            let name = node.version().node;
            if request.confirm != name {
                return Err(ApiError::bad_request(format!(
                    "resetting the node: confirm is {:?}, not this node's name {name:?}",
                    request.confirm
                )));
            }
            node.reset().await?;
            accepted("reset")
        }
        Endpoint::EtcdMembers => ok(&node.etcd_members().await?),
        Endpoint::EtcdStatus => ok(&node.etcd_status().await?),
        Endpoint::EtcdAlarms => ok(&node.etcd_alarms().await?),
        Endpoint::EtcdSnapshot => ByteStreamBody::response(node.etcd_snapshot().await?),
        Endpoint::Upgrade => {
            let reboot = match last(&query, "reboot") {
                Some(value) => parse_bool("reboot", value)?,
                None => false,
            };
            *what = Some(format!("reboot={reboot}"));
            let upload = Box::pin(UploadReader::new(request.into_body()));
            ok(&node.upgrade(upload, reboot).await?)
        }
        Endpoint::OpenApi => ok(&crate::openapi()),
    })
}

fn ok<T: serde::Serialize>(value: &T) -> Response<ResponseBody> {
    json(StatusCode::OK, value)
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", format!("no endpoint {path}"))
}

fn accepted(action: &str) -> Response<ResponseBody> {
    json(StatusCode::ACCEPTED, &Accepted { action: action.to_owned() })
}

/// The last value given for `name`.
fn last<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

async fn logs(
    node: &impl Node,
    source: LogSource,
    query: &[(String, String)],
) -> Result<Response<ResponseBody>, ApiError> {
    let tail = match last(query, "tail") {
        Some(value) => Some(value.parse::<u32>().map_err(|_| {
            ApiError::bad_request(format!("reading the query parameter tail: {value:?} is not a count of lines"))
        })?),
        None => None,
    };
    let follow = match last(query, "follow") {
        Some(value) => parse_bool("follow", value)?,
        None => false,
    };
    let stream = node.logs(&source, LogQuery { tail, follow }).await?;
    let live = if follow { stream.live } else { None };
    Ok(LogBody::response(stream.backlog, live))
}
