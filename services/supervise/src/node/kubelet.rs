//! The kubelet: a `KubeletConfiguration` (kubelet.config.k8s.io/v1beta1),
//! its kubeconfig (the node's own certificate, or a TLS-bootstrap token),
//! and its flags.

use super::kubeconfig::{self, User};
use super::paths::*;
use super::{node_ip, to_yaml, Rendered, RenderedFile};
use crate::spec::{HealthCheck, Probe, Requirement, ServiceSpec, CLUSTER_JOINED, NETWORK_READY};
use kelson_config::{MachineConfig, Role};
use serde::Serialize;

/// The name, in the machine config's `pki.certificates`, of the node's
/// client certificate (`CN=system:node:<node>`, `O=system:nodes`), which
/// `kelsonctl gen cluster` issues. PID 1 installs it as
/// `<PKI_DIR>/kubelet.{crt,key}`.
pub const NODE_CERT: &str = "kubelet";

/// How the kubelet authenticates to the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The node certificate from the machine config ([`NODE_CERT`]).
    NodeCertificate,
    /// A bootstrap token, traded for a certificate the kubelet keeps on /var.
    BootstrapToken,
    /// A bootstrap token and the CA's hashes (`cluster.caCertHashes`), no
    /// CA: PID 1 discovers and verifies the CA first, then writes the
    /// bootstrap kubeconfig ([`token_bootstrap_kubeconfig`]) and sets
    /// [`CLUSTER_JOINED`], which the kubelet waits for.
    TokenDiscovery,
    /// No API server: the kubelet runs standalone.
    Standalone,
}

pub fn credential(config: &MachineConfig) -> Credential {
    let cluster = &config.cluster;
    let node_certificate = config.pki.certificates.contains_key(NODE_CERT);
    if cluster.api_server_endpoint.is_some()
        && !cluster.ca_cert_hashes.is_empty()
        && cluster.bootstrap_token.is_some()
        && !node_certificate
    {
        Credential::TokenDiscovery
    } else if cluster.api_server_endpoint.is_none() || config.pki.ca.is_none() {
        Credential::Standalone
    } else if node_certificate {
        Credential::NodeCertificate
    } else if cluster.bootstrap_token.is_some() {
        Credential::BootstrapToken
    } else {
        Credential::Standalone
    }
}

/// The fields Kelson sets, spelled as in the upstream v1beta1 Go type.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfiguration {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub cgroup_driver: &'static str,
    pub container_runtime_endpoint: String,
    #[serde(rename = "clusterDNS", skip_serializing_if = "Vec::is_empty")]
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    #[serde(rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    pub static_pod_path: &'static str,
    pub authentication: Authentication,
    pub authorization: Authorization,
    pub healthz_bind_address: &'static str,
    pub healthz_port: u16,
    pub rotate_certificates: bool,
    pub resolv_conf: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Authentication {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509>,
    pub webhook: Enabled,
    pub anonymous: Enabled,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct X509 {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Enabled {
    pub enabled: bool,
}

#[derive(Debug, Serialize)]
pub struct Authorization {
    pub mode: &'static str,
}

pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

pub fn configuration(config: &MachineConfig) -> KubeletConfiguration {
    let credential = credential(config);
    let standalone = credential == Credential::Standalone;
    // The API server's client certificate for the kubelet is the cluster
    // CA's: the discovered one on a node that joined by token.
    let client_ca_file = match credential {
        Credential::TokenDiscovery => Some(DISCOVERED_CA_FILE),
        _ => config.pki.ca.as_ref().map(|_| CA_FILE),
    };
    KubeletConfiguration {
        api_version: "kubelet.config.k8s.io/v1beta1",
        kind: "KubeletConfiguration",
        cgroup_driver: "cgroupfs",
        container_runtime_endpoint: format!("unix://{CONTAINERD_SOCKET}"),
        cluster_dns: config.cluster.dns_address.iter().cloned().collect(),
        cluster_domain: config.cluster.dns_domain.clone().unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.to_owned()),
        pod_cidr: config.network.pod_cidr.clone(),
        static_pod_path: KUBELET_STATIC_POD_PATH,
        authentication: Authentication {
            x509: client_ca_file.map(|client_ca_file| X509 { client_ca_file }),
            // Webhooks ask the API server; a standalone kubelet refuses to
            // start with them ("no client provided"). It then admits only
            // clients with a certificate from the cluster CA, if any.
            webhook: Enabled { enabled: !standalone },
            anonymous: Enabled { enabled: false },
        },
        authorization: Authorization { mode: if standalone { "AlwaysAllow" } else { "Webhook" } },
        healthz_bind_address: "127.0.0.1",
        healthz_port: 10248,
        // A certificate given in the machine config is renewed by
        // regenerating the config; one from TLS bootstrap is the kubelet's
        // to rotate.
        rotate_certificates: matches!(credential, Credential::BootstrapToken | Credential::TokenDiscovery),
        resolv_conf: "/etc/resolv.conf",
    }
}

/// The config file, the kubeconfig (from the node certificate, else a
/// bootstrap one when the cluster section and CA allow it) and the spec.
pub fn render(config: &MachineConfig, hostname: &str) -> Rendered {
    let mut files = vec![RenderedFile::new(KUBELET_CONFIG, to_yaml(&configuration(config)), 0o644)];
    let mut notes = Vec::new();
    let cluster = &config.cluster;
    let name = cluster.name.as_deref().unwrap_or("kubernetes");
    let server = cluster.api_server_endpoint.as_deref().unwrap_or_default();
    let credential = credential(config);
    match credential {
        Credential::NodeCertificate => {
            let user = User {
                client_certificate: Some(format!("{PKI_DIR}/{NODE_CERT}.crt")),
                client_key: Some(format!("{PKI_DIR}/{NODE_CERT}.key")),
                ..User::default()
            };
            let kubeconfig = kubeconfig::single(name, server, CA_FILE, &format!("system:node:{hostname}"), user);
            files.push(RenderedFile::new(KUBELET_NODE_KUBECONFIG, to_yaml(&kubeconfig), 0o600));
        }
        Credential::BootstrapToken => {
            let token = cluster.bootstrap_token.as_ref().map(|t| t.expose().to_owned());
            let user = User { token, ..User::default() };
            let kubeconfig = kubeconfig::single(name, server, CA_FILE, "kubelet-bootstrap", user);
            // The token is a secret: owner-only.
            files.push(RenderedFile::new(KUBELET_BOOTSTRAP_KUBECONFIG, to_yaml(&kubeconfig), 0o600));
        }
        Credential::TokenDiscovery => notes.push(
            "the kubelet waits for the token discovery (cluster.caCertHashes), which writes its bootstrap kubeconfig"
                .to_owned(),
        ),
        Credential::Standalone => notes.push(format!(
            "the kubelet runs standalone (no API server): it needs cluster.apiServerEndpoint, pki.ca and either \
             pki.certificates.{NODE_CERT} or cluster.bootstrapToken"
        )),
    }
    if config.pki.ca.is_none() && credential != Credential::TokenDiscovery {
        notes.push("the kubelet authenticates no client certificates: pki.ca is not set".to_owned());
    }
    Rendered { files, spec: spec(config, hostname, credential), notes }
}

/// On a node joining by token ([`Credential::TokenDiscovery`]): the
/// kubelet's bootstrap kubeconfig, naming the discovered CA
/// ([`DISCOVERED_CA_FILE`]) and carrying the token (mode 0600). PID 1
/// writes it once discovery has verified the CA; `None` on other nodes.
pub fn token_bootstrap_kubeconfig(config: &MachineConfig) -> Option<RenderedFile> {
    if credential(config) != Credential::TokenDiscovery {
        return None;
    }
    let cluster = &config.cluster;
    let name = cluster.name.as_deref().unwrap_or("kubernetes");
    let server = cluster.api_server_endpoint.as_deref()?;
    let token = cluster.bootstrap_token.as_ref().map(|t| t.expose().to_owned());
    let user = User { token, ..User::default() };
    let kubeconfig = kubeconfig::single(name, server, DISCOVERED_CA_FILE, "kubelet-bootstrap", user);
    Some(RenderedFile::new(KUBELET_BOOTSTRAP_KUBECONFIG, to_yaml(&kubeconfig), 0o600))
}

/// Waits for containerd to be healthy, the pause image to be imported
/// (`sandbox-image` completed) and the network to be ready; healthy when
/// its healthz answers 200.
pub fn spec(config: &MachineConfig, hostname: &str, credential: Credential) -> ServiceSpec {
    let binary = config.kubelet.binary.clone().unwrap_or_else(|| KUBELET_BINARY.to_owned());
    let mut argv = vec![binary, format!("--config={KUBELET_CONFIG}")];
    match credential {
        Credential::NodeCertificate => argv.push(format!("--kubeconfig={KUBELET_NODE_KUBECONFIG}")),
        Credential::BootstrapToken | Credential::TokenDiscovery => {
            argv.push(format!("--bootstrap-kubeconfig={KUBELET_BOOTSTRAP_KUBECONFIG}"));
            argv.push(format!("--kubeconfig={KUBELET_KUBECONFIG}"));
        }
        Credential::Standalone => {}
    }
    argv.push(format!("--root-dir={KUBELET_ROOT_DIR}"));
    argv.push(format!("--cert-dir={KUBELET_CERT_DIR}"));
    if let Some(ip) = node_ip(config) {
        argv.push(format!("--node-ip={ip}"));
    }
    argv.push(format!("--hostname-override={hostname}"));
    if config.node.role == Role::ControlPlane {
        // kubeadm taints its control-plane nodes (through the API; a
        // kubelet may set taints only when it registers). A Pod must
        // tolerate this to run beside the control plane.
        argv.push(format!("--register-with-taints={CONTROL_PLANE_TAINT}"));
    }
    argv.extend(config.kubelet.extra_args.iter().cloned());

    let mut spec = ServiceSpec::new("kubelet", argv);
    spec.requires = vec![
        Requirement::Healthy("containerd".to_owned()),
        // No pod sandbox can start without the pause image in containerd.
        Requirement::Completed(super::sandbox_image::NAME.to_owned()),
        Requirement::Condition(NETWORK_READY.to_owned()),
    ];
    if credential == Credential::TokenDiscovery {
        spec.requires.push(Requirement::Condition(CLUSTER_JOINED.to_owned()));
    }
    spec.health = Some(HealthCheck::new(Probe::HttpGet { url: KUBELET_HEALTHZ_URL.to_owned() }));
    spec.resources.oom_score_adj = Some(-999);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::worker_config;
    use serde_json::Value;

    fn yaml(text: &str) -> Value {
        serde_saphyr::from_str(text).unwrap()
    }

    #[test]
    fn the_kubelet_configuration_has_every_field_spelled_as_upstream() {
        let rendered = render(&worker_config(), "lab-worker-1");
        let file = &rendered.files[0];
        assert_eq!(file.path.to_str(), Some("/etc/kubernetes/kubelet/config.yaml"));
        let v = yaml(&file.text());
        assert_eq!(v["apiVersion"], "kubelet.config.k8s.io/v1beta1");
        assert_eq!(v["kind"], "KubeletConfiguration");
        assert_eq!(v["cgroupDriver"], "cgroupfs");
        assert_eq!(v["containerRuntimeEndpoint"], "unix:///run/containerd/containerd.sock");
        assert_eq!(v["clusterDNS"], serde_json::json!(["10.96.0.10"]));
        assert_eq!(v["clusterDomain"], "cluster.local");
        assert_eq!(v["podCIDR"], "10.244.1.0/24");
        assert_eq!(v["staticPodPath"], "/etc/kubernetes/kubelet-manifests");
        assert_eq!(v["authentication"]["x509"]["clientCAFile"], "/etc/kelson/pki/ca.crt");
        assert_eq!(v["authentication"]["webhook"]["enabled"], true);
        assert_eq!(v["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(v["authorization"]["mode"], "Webhook");
        assert_eq!(v["healthzBindAddress"], "127.0.0.1");
        assert_eq!(v["healthzPort"], 10248);
        assert_eq!(v["rotateCertificates"], true);
        assert_eq!(v["resolvConf"], "/etc/resolv.conf");
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 14, "an unexpected field: {keys:?}");
    }

    #[test]
    fn the_static_pod_path_is_never_the_directory_pid1_runs() {
        let v = yaml(&render(&worker_config(), "n").files[0].text());
        let path = v["staticPodPath"].as_str().unwrap();
        assert_ne!(path.trim_end_matches('/'), MANIFEST_DIR);
        assert!(!path.starts_with(&format!("{MANIFEST_DIR}/")));
    }

    #[test]
    fn the_bootstrap_kubeconfig_carries_the_token_ca_and_endpoint_and_is_private() {
        let rendered = render(&worker_config(), "lab-worker-1");
        let file = rendered.files.iter().find(|f| f.path.to_str() == Some(KUBELET_BOOTSTRAP_KUBECONFIG)).unwrap();
        assert_eq!(file.mode, 0o600);
        let v = yaml(&file.text());
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Config");
        assert_eq!(v["clusters"][0]["name"], "lab");
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://192.168.100.10:6443");
        assert_eq!(v["clusters"][0]["cluster"]["certificate-authority"], "/etc/kelson/pki/ca.crt");
        assert_eq!(v["users"][0]["name"], "kubelet-bootstrap");
        assert_eq!(v["users"][0]["user"]["token"], "abcdef.0123456789abcdef");
        assert_eq!(v["contexts"][0]["context"]["cluster"], "lab");
        assert_eq!(v["contexts"][0]["context"]["user"], "kubelet-bootstrap");
        assert_eq!(v["current-context"], v["contexts"][0]["name"]);
    }

    #[test]
    fn the_flags_name_config_kubeconfigs_dirs_node_ip_and_hostname_then_extra_args() {
        let spec = render(&worker_config(), "lab-worker-1").spec;
        assert_eq!(
            spec.argv,
            [
                "/usr/bin/kubelet",
                "--config=/etc/kubernetes/kubelet/config.yaml",
                "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
                "--kubeconfig=/var/lib/kubelet/kubeconfig",
                "--root-dir=/var/lib/kubelet",
                "--cert-dir=/var/lib/kubelet/pki",
                "--node-ip=192.168.100.11",
                "--hostname-override=lab-worker-1",
                "--v=2",
                "--max-pods=50",
            ]
        );
        assert_eq!(
            spec.requires,
            [
                Requirement::Healthy("containerd".into()),
                Requirement::Completed("sandbox-image".into()),
                Requirement::Condition("network-ready".into())
            ]
        );
        assert_eq!(spec.health.unwrap().probe, Probe::HttpGet { url: "http://127.0.0.1:10248/healthz".into() });
    }

    #[test]
    fn a_node_certificate_in_the_config_is_the_kubelets_credential_and_a_control_plane_registers_tainted() {
        let mut config = worker_config();
        config.node.role = Role::ControlPlane;
        config.pki.certificates.insert(
            NODE_CERT.to_owned(),
            kelson_config::CertKey { cert: "CERT".into(), key: kelson_config::Secret::new("KEY") },
        );
        let rendered = render(&config, "lab-cp-1");
        let file = rendered.files.iter().find(|f| f.path.to_str() == Some("/etc/kubernetes/kubelet.conf")).unwrap();
        assert_eq!(file.mode, 0o600);
        let v = yaml(&file.text());
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://192.168.100.10:6443");
        assert_eq!(v["users"][0]["name"], "system:node:lab-cp-1");
        assert_eq!(v["users"][0]["user"]["client-certificate"], "/etc/kelson/pki/kubelet.crt");
        assert_eq!(v["users"][0]["user"]["client-key"], "/etc/kelson/pki/kubelet.key");
        assert!(v["users"][0]["user"].get("token").is_none());
        assert!(!rendered.files.iter().any(|f| f.path.to_str() == Some(KUBELET_BOOTSTRAP_KUBECONFIG)));
        let argv = &rendered.spec.argv;
        assert!(argv.contains(&"--kubeconfig=/etc/kubernetes/kubelet.conf".to_owned()), "{argv:?}");
        assert!(!argv.iter().any(|a| a.starts_with("--bootstrap-kubeconfig")), "{argv:?}");
        assert!(argv.contains(&"--register-with-taints=node-role.kubernetes.io/control-plane:NoSchedule".to_owned()));
        // The certificate is renewed with the config, not rotated by the kubelet.
        assert_eq!(yaml(&rendered.files[0].text())["rotateCertificates"], false);
        // A worker registers untainted.
        assert!(!render(&worker_config(), "w").spec.argv.iter().any(|a| a.starts_with("--register-with-taints")));
    }

    /// A worker from a token-join seed: endpoint, token and CA hashes; no
    /// CA and no certificate of its own.
    fn token_join_config() -> MachineConfig {
        let mut config = worker_config();
        config.pki = kelson_config::Pki::default();
        config.cluster.ca_cert_hashes = vec![format!("sha256:{}", "ab".repeat(32))];
        config
    }

    #[test]
    fn a_token_join_waits_for_discovery_which_writes_the_bootstrap_kubeconfig() {
        let config = token_join_config();
        assert_eq!(credential(&config), Credential::TokenDiscovery);
        let rendered = render(&config, "lab-worker-7");
        // Not written by the services stage: only once discovery verified the CA.
        assert!(!rendered.files.iter().any(|f| f.path.to_str() == Some(KUBELET_BOOTSTRAP_KUBECONFIG)));
        assert!(rendered.notes.iter().any(|n| n.contains("token discovery")), "{:?}", rendered.notes);
        let v = yaml(&rendered.files[0].text());
        assert_eq!(v["authentication"]["x509"]["clientCAFile"], "/etc/kubernetes/pki/ca.crt");
        assert_eq!(v["rotateCertificates"], true);
        assert_eq!(v["authorization"]["mode"], "Webhook");
        let spec = rendered.spec;
        assert!(spec.argv.contains(&"--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf".to_owned()));
        assert!(spec.argv.contains(&"--kubeconfig=/var/lib/kubelet/kubeconfig".to_owned()));
        assert!(spec.requires.contains(&Requirement::Condition("cluster-joined".into())), "{:?}", spec.requires);

        let file = token_bootstrap_kubeconfig(&config).expect("a token join's bootstrap kubeconfig");
        assert_eq!((file.path.to_str(), file.mode), (Some(KUBELET_BOOTSTRAP_KUBECONFIG), 0o600));
        let v = yaml(&file.text());
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://192.168.100.10:6443");
        assert_eq!(v["clusters"][0]["cluster"]["certificate-authority"], "/etc/kubernetes/pki/ca.crt");
        assert_eq!(v["users"][0]["user"]["token"], "abcdef.0123456789abcdef");
        // Other nodes have none, and their kubelet waits for no discovery.
        assert!(token_bootstrap_kubeconfig(&worker_config()).is_none());
        assert!(!render(&worker_config(), "w")
            .spec
            .requires
            .iter()
            .any(|r| *r == Requirement::Condition("cluster-joined".into())));
    }

    #[test]
    fn without_cluster_details_the_kubelet_runs_standalone_and_says_why() {
        let mut config = MachineConfig::empty();
        config.kubelet.binary = Some("/opt/kubelet".into());
        let rendered = render(&config, "n");
        assert_eq!(rendered.files.len(), 1);
        assert_eq!(rendered.spec.argv[0], "/opt/kubelet");
        assert!(!rendered.spec.argv.iter().any(|a| a.contains("kubeconfig")));
        assert!(!rendered.spec.argv.iter().any(|a| a.starts_with("--node-ip")));
        assert!(rendered.notes.iter().any(|n| n.contains("standalone")), "{:?}", rendered.notes);
        let v = yaml(&rendered.files[0].text());
        assert!(v.get("podCIDR").is_none() && v.get("clusterDNS").is_none());
        assert!(v["authentication"].get("x509").is_none());
        assert_eq!(v["authentication"]["webhook"]["enabled"], false, "webhooks need an API server");
        assert_eq!(v["authorization"]["mode"], "AlwaysAllow");
        assert_eq!(v["clusterDomain"], "cluster.local");
    }
}
