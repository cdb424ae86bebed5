//! kube-proxy: a `KubeProxyConfiguration`
//! (kubeproxy.config.k8s.io/v1alpha1) and its kubeconfig.

use super::kubeconfig::{self, User};
use super::paths::*;
use super::{to_yaml, Rendered, RenderedFile};
use crate::spec::{HealthCheck, Probe, Requirement, ServiceSpec};
use kelson_config::MachineConfig;
use serde::Serialize;

/// The fields Kelson sets, spelled as in the upstream v1alpha1 Go type.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub mode: &'static str,
    #[serde(rename = "clusterCIDR", skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    pub client_connection: ClientConnection,
    pub hostname_override: String,
    pub healthz_bind_address: &'static str,
    pub metrics_bind_address: &'static str,
    pub conntrack: Conntrack,
}

#[derive(Debug, Serialize)]
pub struct ClientConnection {
    pub kubeconfig: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conntrack {
    /// 0 leaves nf_conntrack_max as the kernel set it, instead of
    /// kube-proxy resizing it (and the hash table under /sys) at start.
    pub max_per_core: u32,
}

pub fn configuration(config: &MachineConfig, hostname: &str) -> KubeProxyConfiguration {
    KubeProxyConfiguration {
        api_version: "kubeproxy.config.k8s.io/v1alpha1",
        kind: "KubeProxyConfiguration",
        mode: "iptables",
        cluster_cidr: config.network.cluster_cidr.clone(),
        client_connection: ClientConnection { kubeconfig: KUBE_PROXY_KUBECONFIG },
        hostname_override: hostname.to_owned(),
        healthz_bind_address: "0.0.0.0:10256",
        metrics_bind_address: "127.0.0.1:10249",
        conntrack: Conntrack { max_per_core: 0 },
    }
}

/// The name, in the machine config's `pki.certificates`, of kube-proxy's
/// own client certificate (`CN=system:kube-proxy`, which Kubernetes' default
/// RBAC binds to `system:node-proxier`).
pub const KUBE_PROXY_CERT: &str = "kube-proxy";

/// The kubeconfig uses kube-proxy's own certificate from the machine config
/// when there is one. Without it, the kubelet's rotated client certificate
/// (the node's identity, `system:node:<name>`): then the cluster must grant
/// that identity what kube-proxy reads (e.g. bind `system:node-proxier` to
/// the group `system:nodes`).
pub fn render(config: &MachineConfig, hostname: &str) -> Rendered {
    let mut files = vec![RenderedFile::new(KUBE_PROXY_CONFIG, to_yaml(&configuration(config, hostname)), 0o644)];
    let mut notes = Vec::new();
    match &config.cluster.api_server_endpoint {
        Some(server) => {
            let name = config.cluster.name.as_deref().unwrap_or("kubernetes");
            let (user_name, user) = if config.pki.certificates.contains_key(KUBE_PROXY_CERT) {
                let user = User {
                    client_certificate: Some(format!("{PKI_DIR}/{KUBE_PROXY_CERT}.crt")),
                    client_key: Some(format!("{PKI_DIR}/{KUBE_PROXY_CERT}.key")),
                    ..User::default()
                };
                ("system:kube-proxy", user)
            } else {
                let user = User {
                    client_certificate: Some(KUBELET_CLIENT_CERT.to_owned()),
                    client_key: Some(KUBELET_CLIENT_CERT.to_owned()),
                    ..User::default()
                };
                ("kube-proxy", user)
            };
            // A node that joined by token trusts the CA discovery verified.
            let ca_file = match super::kubelet::credential(config) {
                super::kubelet::Credential::TokenDiscovery => DISCOVERED_CA_FILE,
                _ => CA_FILE,
            };
            let kubeconfig = kubeconfig::single(name, server, ca_file, user_name, user);
            // Paths only, no secret in it.
            files.push(RenderedFile::new(KUBE_PROXY_KUBECONFIG, to_yaml(&kubeconfig), 0o644));
        }
        None => notes.push(
            "kube-proxy has no kubeconfig (cluster.apiServerEndpoint is not set) and will fail until it has one"
                .to_owned(),
        ),
    }
    Rendered { files, spec: spec(config), notes }
}

/// Waits for the kubelet to be healthy; healthy when its healthz answers.
pub fn spec(config: &MachineConfig) -> ServiceSpec {
    let binary = config.kube_proxy.binary.clone().unwrap_or_else(|| KUBE_PROXY_BINARY.to_owned());
    let mut argv = vec![binary, format!("--config={KUBE_PROXY_CONFIG}")];
    argv.extend(config.kube_proxy.extra_args.iter().cloned());
    let mut spec = ServiceSpec::new("kube-proxy", argv);
    spec.requires = vec![Requirement::Healthy("kubelet".to_owned())];
    spec.health = Some(HealthCheck::new(Probe::HttpGet { url: KUBE_PROXY_HEALTHZ_URL.to_owned() }));
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
    fn the_kube_proxy_configuration_has_every_field_spelled_as_upstream() {
        let rendered = render(&worker_config(), "lab-worker-1");
        assert_eq!(rendered.files[0].path.to_str(), Some("/etc/kubernetes/kube-proxy/config.yaml"));
        let v = yaml(&rendered.files[0].text());
        assert_eq!(v["apiVersion"], "kubeproxy.config.k8s.io/v1alpha1");
        assert_eq!(v["kind"], "KubeProxyConfiguration");
        assert_eq!(v["mode"], "iptables");
        assert_eq!(v["clusterCIDR"], "10.244.0.0/16");
        assert_eq!(v["clientConnection"]["kubeconfig"], "/var/lib/kube-proxy/kubeconfig");
        assert_eq!(v["hostnameOverride"], "lab-worker-1");
        assert_eq!(v["healthzBindAddress"], "0.0.0.0:10256");
        assert_eq!(v["metricsBindAddress"], "127.0.0.1:10249");
        assert_eq!(v["conntrack"]["maxPerCore"], 0);
        assert_eq!(v.as_object().unwrap().len(), 9, "an unexpected field: {v}");
    }

    #[test]
    fn the_kubeconfig_uses_the_kubelets_client_certificate() {
        let rendered = render(&worker_config(), "lab-worker-1");
        let v = yaml(&rendered.files[1].text());
        assert_eq!(rendered.files[1].path.to_str(), Some("/var/lib/kube-proxy/kubeconfig"));
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://192.168.100.10:6443");
        assert_eq!(v["clusters"][0]["cluster"]["certificate-authority"], "/etc/kelson/pki/ca.crt");
        let user = &v["users"][0]["user"];
        assert_eq!(user["client-certificate"], "/var/lib/kubelet/pki/kubelet-client-current.pem");
        assert_eq!(user["client-key"], "/var/lib/kubelet/pki/kubelet-client-current.pem");
        assert!(user.get("token").is_none());
        // A node that joined by token: the discovered CA, the node's identity.
        let mut joined = worker_config();
        joined.pki = kelson_config::Pki::default();
        joined.cluster.ca_cert_hashes = vec![format!("sha256:{}", "ab".repeat(32))];
        let v = yaml(&render(&joined, "lab-worker-7").files[1].text());
        assert_eq!(v["clusters"][0]["cluster"]["certificate-authority"], "/etc/kubernetes/pki/ca.crt");
        assert_eq!(v["users"][0]["user"]["client-certificate"], "/var/lib/kubelet/pki/kubelet-client-current.pem");
    }

    #[test]
    fn kube_proxys_own_certificate_from_the_config_is_used_when_there_is_one() {
        let mut config = worker_config();
        config.pki.certificates.insert(
            KUBE_PROXY_CERT.to_owned(),
            kelson_config::CertKey { cert: "CERT".into(), key: kelson_config::Secret::new("KEY") },
        );
        let rendered = render(&config, "lab-worker-1");
        let v = yaml(&rendered.files[1].text());
        assert_eq!(v["users"][0]["name"], "system:kube-proxy");
        assert_eq!(v["users"][0]["user"]["client-certificate"], "/etc/kelson/pki/kube-proxy.crt");
        assert_eq!(v["users"][0]["user"]["client-key"], "/etc/kelson/pki/kube-proxy.key");
    }

    #[test]
    fn kube_proxy_waits_for_the_kubelet_and_runs_the_configured_binary() {
        let spec = render(&worker_config(), "lab-worker-1").spec;
        assert_eq!(spec.argv, ["/opt/bin/kube-proxy", "--config=/etc/kubernetes/kube-proxy/config.yaml"]);
        assert_eq!(spec.requires, [Requirement::Healthy("kubelet".into())]);
        assert_eq!(spec.health.unwrap().probe, Probe::HttpGet { url: "http://127.0.0.1:10256/healthz".into() });
        assert_eq!(super::spec(&MachineConfig::empty()).argv[0], "/usr/bin/kube-proxy");
    }
}
