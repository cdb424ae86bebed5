//! A container's probes: one handler each, named ports resolved against
//! the container's ports, Kubernetes' defaults for 0 or absent timings.

use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;

use super::container::port_number;
use super::seconds;
use crate::error::Problems;
use crate::probe::ProbeKind;
use crate::spec::*;

pub(super) fn probe(
    p: &mut Problems,
    at: &str,
    pr: &k8s::Probe,
    kind: ProbeKind,
    ports: &[PortSpec],
) -> Option<ProbeSpec> {
    let handlers = [
        pr.exec.is_some().then_some("exec"),
        pr.http_get.is_some().then_some("httpGet"),
        pr.tcp_socket.is_some().then_some("tcpSocket"),
        pr.grpc.is_some().then_some("grpc"),
    ];
    let set: Vec<&str> = handlers.into_iter().flatten().collect();
    let action = if set.len() != 1 {
        let found = if set.is_empty() { "none".to_owned() } else { set.join(", ") };
        p.add(at, format!("a probe needs exactly one of exec, httpGet, tcpSocket (found {found})"));
        None
    } else if let Some(exec) = &pr.exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            p.add(format!("{at}.exec.command"), "is required");
        }
        Some(ProbeAction::Exec { command })
    } else if let Some(http) = &pr.http_get {
        let port = probe_port(p, &format!("{at}.httpGet.port"), &http.port, ports);
        let path = http.path.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/') {
            p.add(format!("{at}.httpGet.path"), format!("{path:?} must start with '/'"));
        }
        let scheme = match http.scheme.as_deref().unwrap_or("HTTP") {
            "HTTP" => HttpScheme::Http,
            "HTTPS" => HttpScheme::Https,
            other => {
                p.add(format!("{at}.httpGet.scheme"), format!("{other:?} is not one of HTTP, HTTPS"));
                HttpScheme::Http
            }
        };
        let headers = http
            .http_headers
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, h)| {
                if h.name.is_empty()
                    || !h.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
                {
                    p.add(
                        format!("{at}.httpGet.httpHeaders[{i}].name"),
                        format!("{:?} is not an HTTP header name", h.name),
                    );
                    return None;
                }
                Some((h.name.clone(), h.value.clone()))
            })
            .collect();
        port.map(|port| ProbeAction::HttpGet {
            host: http.host.clone().filter(|h| !h.is_empty()),
            port,
            path,
            scheme,
            headers,
        })
    } else if let Some(tcp) = &pr.tcp_socket {
        let port = probe_port(p, &format!("{at}.tcpSocket.port"), &tcp.port, ports);
        port.map(|port| ProbeAction::TcpSocket { host: tcp.host.clone().filter(|h| !h.is_empty()), port })
    } else {
        p.add(format!("{at}.grpc"), "grpc probes are not supported; use httpGet, tcpSocket or exec");
        None
    };
    // Kubernetes treats 0 (or absent) as "the default".
    let count = |p: &mut Problems, field: &str, value: Option<i32>, default: u32| -> u32 {
        match value {
            None | Some(0) => default,
            Some(v) => u32::try_from(v).unwrap_or_else(|_| {
                p.add(format!("{at}.{field}"), format!("is {v}; must not be negative"));
                default
            }),
        }
    };
    let initial_delay = count(p, "initialDelaySeconds", pr.initial_delay_seconds, 0);
    let period = count(p, "periodSeconds", pr.period_seconds, 10);
    let timeout = count(p, "timeoutSeconds", pr.timeout_seconds, 1);
    let success_threshold = count(p, "successThreshold", pr.success_threshold, 1);
    let failure_threshold = count(p, "failureThreshold", pr.failure_threshold, 3);
    if kind != ProbeKind::Readiness && success_threshold != 1 {
        p.add(
            format!("{at}.successThreshold"),
            format!("is {success_threshold}; must be 1 for a liveness or startup probe"),
        );
    }
    let termination_grace_period = match pr.termination_grace_period_seconds {
        None => None,
        Some(_) if kind == ProbeKind::Readiness => {
            p.add(format!("{at}.terminationGracePeriodSeconds"), "is only for liveness and startup probes");
            None
        }
        Some(s) => Some(seconds(p, &format!("{at}.terminationGracePeriodSeconds"), s, 1)),
    };
    Some(ProbeSpec {
        action: action?,
        initial_delay: Duration::from_secs(initial_delay.into()),
        period: Duration::from_secs(period.into()),
        timeout: Duration::from_secs(timeout.into()),
        success_threshold,
        failure_threshold,
        termination_grace_period,
    })
}

/// A probe's port: a number, or the name of one of the container's ports.
fn probe_port(p: &mut Problems, path: &str, port: &IntOrString, ports: &[PortSpec]) -> Option<u16> {
    match port {
        IntOrString::Int(n) => port_number(p, path, *n),
        IntOrString::String(name) => {
            let found = ports.iter().find(|port| port.name.as_deref() == Some(name.as_str()));
            if found.is_none() {
                p.add(path, format!("{name:?} is not the name of one of this container's ports"));
            }
            found.map(|port| port.container_port)
        }
    }
}
