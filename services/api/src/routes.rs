//! The route table: which method and path template is which endpoint. The
//! server dispatches from it and the OpenAPI test checks the document
//! against it, so the two cannot drift apart.

use hyper::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Version,
    Status,
    Services,
    ServiceAction,
    Pods,
    ServiceLogs,
    ContainerLogs,
    KernelLogs,
    InitLogs,
    GetConfig,
    ApplyConfig,
    Reboot,
    Shutdown,
    Reset,
    EtcdMembers,
    EtcdStatus,
    EtcdAlarms,
    EtcdSnapshot,
    Upgrade,
    OpenApi,
}

impl Endpoint {
    /// Whether only `kelson:admin` may call it: every write, and reads that
    /// hand out secrets.
    pub fn admin_only(self) -> bool {
        matches!(
            self,
            Endpoint::ServiceAction
                | Endpoint::ApplyConfig
                | Endpoint::Reboot
                | Endpoint::Shutdown
                | Endpoint::Reset
                | Endpoint::Upgrade
                | Endpoint::EtcdSnapshot
        )
    }
}

pub struct Route {
    pub method: Method,
    /// `{name}` matches one non-empty path segment.
    pub template: &'static str,
    pub endpoint: Endpoint,
}

const fn route(method: Method, template: &'static str, endpoint: Endpoint) -> Route {
    Route { method, template, endpoint }
}

/// Every route the server answers.
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/v1/version", Endpoint::Version),
    route(Method::GET, "/v1/status", Endpoint::Status),
    route(Method::GET, "/v1/services", Endpoint::Services),
    route(Method::POST, "/v1/services/{name}/{action}", Endpoint::ServiceAction),
    route(Method::GET, "/v1/pods", Endpoint::Pods),
    route(Method::GET, "/v1/logs/services/{name}", Endpoint::ServiceLogs),
    route(Method::GET, "/v1/logs/pods/{namespace}/{pod}/{container}", Endpoint::ContainerLogs),
    route(Method::GET, "/v1/logs/kernel", Endpoint::KernelLogs),
    route(Method::GET, "/v1/logs/init", Endpoint::InitLogs),
    route(Method::GET, "/v1/config", Endpoint::GetConfig),
    route(Method::POST, "/v1/config", Endpoint::ApplyConfig),
    route(Method::POST, "/v1/reboot", Endpoint::Reboot),
    route(Method::POST, "/v1/shutdown", Endpoint::Shutdown),
    route(Method::POST, "/v1/reset", Endpoint::Reset),
    route(Method::GET, "/v1/etcd/members", Endpoint::EtcdMembers),
    route(Method::GET, "/v1/etcd/status", Endpoint::EtcdStatus),
    route(Method::GET, "/v1/etcd/alarms", Endpoint::EtcdAlarms),
    route(Method::GET, "/v1/etcd/snapshot", Endpoint::EtcdSnapshot),
    route(Method::POST, "/v1/upgrade", Endpoint::Upgrade),
    route(Method::GET, "/v1/openapi.json", Endpoint::OpenApi),
];

#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    /// No template matches the path.
    NotFound,
    /// A template matches, with other methods: these, as an `Allow` header
    /// gives them.
    MethodNotAllowed(String),
}

/// The endpoint for a request and the path's `{…}` segments, in order.
pub fn resolve(method: &Method, path: &str) -> Result<(Endpoint, Vec<String>), Miss> {
    let mut allowed = Vec::new();
    for route in ROUTES {
        let Some(captures) = match_template(route.template, path) else { continue };
        if route.method == method {
            return Ok((route.endpoint, captures));
        }
        allowed.push(route.method.as_str());
    }
    Err(if allowed.is_empty() { Miss::NotFound } else { Miss::MethodNotAllowed(allowed.join(", ")) })
}

fn match_template(template: &str, path: &str) -> Option<Vec<String>> {
    let mut captures = Vec::new();
    let mut template_segments = template.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (template_segments.next(), path_segments.next()) {
            (None, None) => return Some(captures),
            (Some(want), Some(have)) if want.starts_with('{') => {
                if have.is_empty() {
                    return None;
                }
                // A malformed escape or a name that is not UTF-8 names nothing on a node.
                captures.push(crate::body::percent_decode_segment(have)?);
            }
            (Some(want), Some(have)) if want == have => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_templated_path_yields_its_segments() {
        assert_eq!(
            resolve(&Method::GET, "/v1/logs/pods/kube-system/etcd-n1/etcd"),
            Ok((Endpoint::ContainerLogs, vec!["kube-system".to_owned(), "etcd-n1".to_owned(), "etcd".to_owned()]))
        );
        assert_eq!(
            resolve(&Method::POST, "/v1/services/kube%2Dlet/restart"),
            Ok((Endpoint::ServiceAction, vec!["kube-let".to_owned(), "restart".to_owned()]))
        );
    }

    #[test]
    fn unknown_paths_and_wrong_methods_are_told_apart() {
        assert_eq!(resolve(&Method::GET, "/v1/nothing"), Err(Miss::NotFound));
        assert_eq!(resolve(&Method::GET, "/v1/services/"), Err(Miss::NotFound));
        assert_eq!(resolve(&Method::GET, "/v1/version/"), Err(Miss::NotFound));
        assert_eq!(resolve(&Method::GET, "/v1/logs/services//x"), Err(Miss::NotFound));
        assert_eq!(resolve(&Method::DELETE, "/v1/config"), Err(Miss::MethodNotAllowed("GET, POST".to_owned())));
        assert_eq!(resolve(&Method::POST, "/v1/version"), Err(Miss::MethodNotAllowed("GET".to_owned())));
    }
}
