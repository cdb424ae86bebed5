//! The control plane's static pod manifests as kubeadm writes them
//! (`cmd/kubeadm/app/phases/controlplane/manifests.go` and
//! `phases/etcd/local.go`): flags, hostPath certificates and kubeconfigs,
//! probes with kubeadm's timings. PID 1 runs them from
//! /etc/kubernetes/manifests; a user edits them as they would kubeadm's.

use super::cluster::{ClusterPlan, NodePlan, API_SERVER_PORT, ETCD_CLIENT_PORT};
use super::kubeadm::{self, CONTROLLER_MANAGER_CONF, KUBERNETES_VERSION, PKI_DIR, SCHEDULER_CONF};
use serde_json::{json, Value};

/// kubeadm's etcd for Kubernetes 1.31/1.32, the tag the node image's store
/// carries (image/oci-images.py's `ETCD_REFS`).
pub const ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.5.16-0";
pub const ETCD_PEER_PORT: u16 = 2380;
pub const ETCD_METRICS_PORT: u16 = 2381;
pub const CONTROLLER_MANAGER_PORT: u16 = 10257;
pub const SCHEDULER_PORT: u16 = 10259;
pub const ETCD_DATA_DIR: &str = "/var/lib/etcd";
/// The host's CA bundle directory, which kubeadm mounts into the API
/// server and controller-manager (for cloud and webhook endpoints).
pub const HOST_CA_CERTS: &str = "/etc/ssl/certs";

/// The control-plane components, in the order their manifests are listed.
pub const COMPONENTS: [&str; 4] = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"];

/// `registry.k8s.io/<component>:<version>` for a Kubernetes component.
pub fn kubernetes_image(component: &str) -> String {
    format!("registry.k8s.io/{component}:{KUBERNETES_VERSION}")
}

/// A control-plane node's manifests: (file name, YAML), one per component.
/// A node joining a running etcd gets `--initial-cluster-state=existing`
/// (and PID 1 sets its `--initial-cluster` from etcd's answer when it adds
/// the member).
pub fn control_plane(
    plan: &ClusterPlan,
    node: &NodePlan,
    etcd_state: EtcdState,
) -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    let pods = [etcd(plan, node, etcd_state), api_server(plan, node), controller_manager(plan), scheduler()];
    COMPONENTS
        .iter()
        .zip(pods)
        .map(|(component, pod)| Ok((format!("{component}.yaml"), serde_saphyr::to_string(&pod)?)))
        .collect()
}

fn pki(file: &str) -> String {
    format!("{PKI_DIR}/{file}")
}

#[derive(Clone, Copy)]
enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

/// kubeadm's `LivenessProbe`, `ReadinessProbe` and `StartupProbe` (the
/// startup one with the default 4-minute control-plane health timeout:
/// 24 tries 10 s apart).
fn probe(kind: ProbeKind, host: &str, path: &str, port: u16, scheme: &str) -> Value {
    let http_get = json!({ "host": host, "path": path, "port": port, "scheme": scheme });
    match kind {
        ProbeKind::Liveness => json!({
            "failureThreshold": 8, "httpGet": http_get,
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 15,
        }),
        ProbeKind::Readiness => json!({
            "failureThreshold": 3, "httpGet": http_get, "periodSeconds": 1, "timeoutSeconds": 15,
        }),
        ProbeKind::Startup => json!({
            "failureThreshold": 24, "httpGet": http_get,
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 15,
        }),
    }
}

struct HostPath {
    name: &'static str,
    path: &'static str,
    kind: &'static str,
    read_only: bool,
}

impl HostPath {
    fn volume(&self) -> Value {
        json!({ "name": self.name, "hostPath": { "path": self.path, "type": self.kind } })
    }
    fn mount(&self) -> Value {
        if self.read_only {
            json!({ "name": self.name, "mountPath": self.path, "readOnly": true })
        } else {
            json!({ "name": self.name, "mountPath": self.path })
        }
    }
}

const CA_CERTS: HostPath =
    HostPath { name: "ca-certs", path: HOST_CA_CERTS, kind: "DirectoryOrCreate", read_only: true };
const K8S_CERTS: HostPath = HostPath { name: "k8s-certs", path: PKI_DIR, kind: "DirectoryOrCreate", read_only: true };

/// kubeadm's `ComponentPod`: one container in kube-system on the host's
/// network, at system-node-critical priority, with RuntimeDefault seccomp.
fn component_pod(name: &str, container: Value, host_paths: &[HostPath], annotations: Option<Value>) -> Value {
    // The name first, then the component's own fields, as a reader expects.
    let mut named = json!({ "name": name });
    if let (Some(fields), Value::Object(own)) = (named.as_object_mut(), container) {
        fields.extend(own);
    }
    let mut container = named;
    container["imagePullPolicy"] = json!("IfNotPresent");
    container["volumeMounts"] = host_paths.iter().map(HostPath::mount).collect();
    let mut metadata = json!({
        "name": name,
        "namespace": "kube-system",
        "labels": { "component": name, "tier": "control-plane" },
    });
    if let Some(annotations) = annotations {
        metadata["annotations"] = annotations;
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [container],
            "hostNetwork": true,
            "priority": 2_000_001_000,
            "priorityClassName": "system-node-critical",
            "securityContext": { "seccompProfile": { "type": "RuntimeDefault" } },
            "volumes": host_paths.iter().map(HostPath::volume).collect::<Vec<_>>(),
        },
    })
}

fn resources(cpu: &str) -> Value {
    json!({ "requests": { "cpu": cpu } })
}

/// How a control-plane node's etcd member starts its first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdState {
    /// With every control-plane node of `gen cluster`, all founding the
    /// cluster together (etcd's default, `new`).
    New,
    /// Joining members that run already (`gen node`).
    Existing,
}

fn etcd(plan: &ClusterPlan, node: &NodePlan, state: EtcdState) -> Value {
    let address = node.address;
    let client_url = format!("https://{address}:{ETCD_CLIENT_PORT}");
    let peer_url = format!("https://{address}:{ETCD_PEER_PORT}");
    let initial_cluster: Vec<String> =
        plan.control_planes().map(|n| format!("{}=https://{}:{ETCD_PEER_PORT}", n.name, n.address)).collect();
    let mut command = vec![
        "etcd".to_owned(),
        format!("--advertise-client-urls={client_url}"),
        format!("--cert-file={}", pki("etcd/server.crt")),
        "--client-cert-auth=true".to_owned(),
        format!("--data-dir={ETCD_DATA_DIR}"),
        "--experimental-initial-corrupt-check=true".to_owned(),
        "--experimental-watch-progress-notify-interval=5s".to_owned(),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster={}", initial_cluster.join(",")),
    ];
    if state == EtcdState::Existing {
        command.push("--initial-cluster-state=existing".to_owned());
    }
    command.extend([
        format!("--key-file={}", pki("etcd/server.key")),
        format!("--listen-client-urls=https://127.0.0.1:{ETCD_CLIENT_PORT},{client_url}"),
        format!("--listen-metrics-urls=http://127.0.0.1:{ETCD_METRICS_PORT}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--name={}", node.name),
        format!("--peer-cert-file={}", pki("etcd/peer.crt")),
        "--peer-client-cert-auth=true".to_owned(),
        format!("--peer-key-file={}", pki("etcd/peer.key")),
        format!("--peer-trusted-ca-file={}", pki("etcd/ca.crt")),
        "--snapshot-count=10000".to_owned(),
        format!("--trusted-ca-file={}", pki("etcd/ca.crt")),
    ]);
    // kubeadm's etcd probes since etcd 3.5.11 (kubernetes/kubeadm#3039):
    // /livez for liveness, /readyz for readiness and startup, plain HTTP on
    // the metrics listener.
    let container = json!({
        "image": ETCD_IMAGE,
        "command": command,
        "livenessProbe": probe(ProbeKind::Liveness, "127.0.0.1", "/livez", ETCD_METRICS_PORT, "HTTP"),
        "readinessProbe": probe(ProbeKind::Readiness, "127.0.0.1", "/readyz", ETCD_METRICS_PORT, "HTTP"),
        "startupProbe": probe(ProbeKind::Startup, "127.0.0.1", "/readyz", ETCD_METRICS_PORT, "HTTP"),
        "resources": { "requests": { "cpu": "100m", "memory": "100Mi" } },
    });
    let host_paths = [
        HostPath { name: "etcd-certs", path: "/etc/kubernetes/pki/etcd", kind: "DirectoryOrCreate", read_only: false },
        HostPath { name: "etcd-data", path: ETCD_DATA_DIR, kind: "DirectoryOrCreate", read_only: false },
    ];
    let annotations = json!({ "kubeadm.kubernetes.io/etcd.advertise-client-urls": client_url });
    component_pod("etcd", container, &host_paths, Some(annotations))
}

fn api_server(plan: &ClusterPlan, node: &NodePlan) -> Value {
    let address = node.address.to_string();
    let command = vec![
        "kube-apiserver".to_owned(),
        format!("--advertise-address={address}"),
        "--allow-privileged=true".to_owned(),
        "--authorization-mode=Node,RBAC".to_owned(),
        format!("--client-ca-file={}", pki("ca.crt")),
        "--enable-admission-plugins=NodeRestriction".to_owned(),
        "--enable-bootstrap-token-auth=true".to_owned(),
        format!("--etcd-cafile={}", pki("etcd/ca.crt")),
        format!("--etcd-certfile={}", pki("apiserver-etcd-client.crt")),
        format!("--etcd-keyfile={}", pki("apiserver-etcd-client.key")),
        format!("--etcd-servers=https://127.0.0.1:{ETCD_CLIENT_PORT}"),
        format!("--kubelet-client-certificate={}", pki("apiserver-kubelet-client.crt")),
        format!("--kubelet-client-key={}", pki("apiserver-kubelet-client.key")),
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".to_owned(),
        format!("--proxy-client-cert-file={}", pki("front-proxy-client.crt")),
        format!("--proxy-client-key-file={}", pki("front-proxy-client.key")),
        "--requestheader-allowed-names=front-proxy-client".to_owned(),
        format!("--requestheader-client-ca-file={}", pki("front-proxy-ca.crt")),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_owned(),
        "--requestheader-group-headers=X-Remote-Group".to_owned(),
        "--requestheader-username-headers=X-Remote-User".to_owned(),
        format!("--secure-port={API_SERVER_PORT}"),
        format!("--service-account-issuer={}", kubeadm::service_account_issuer()),
        format!("--service-account-key-file={}", pki("sa.pub")),
        format!("--service-account-signing-key-file={}", pki("sa.key")),
        format!("--service-cluster-ip-range={}", plan.spec.service_cidr),
        format!("--tls-cert-file={}", pki("apiserver.crt")),
        format!("--tls-private-key-file={}", pki("apiserver.key")),
    ];
    let container = json!({
        "image": kubernetes_image("kube-apiserver"),
        "command": command,
        "livenessProbe": probe(ProbeKind::Liveness, &address, "/livez", API_SERVER_PORT, "HTTPS"),
        "readinessProbe": probe(ProbeKind::Readiness, &address, "/readyz", API_SERVER_PORT, "HTTPS"),
        "startupProbe": probe(ProbeKind::Startup, &address, "/livez", API_SERVER_PORT, "HTTPS"),
        "resources": resources("250m"),
    });
    let annotations = json!({
        "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint": format!("{address}:{API_SERVER_PORT}"),
    });
    component_pod("kube-apiserver", container, &[CA_CERTS, K8S_CERTS], Some(annotations))
}

fn controller_manager(plan: &ClusterPlan) -> Value {
    let conf = CONTROLLER_MANAGER_CONF;
    let command = vec![
        "kube-controller-manager".to_owned(),
        // kubeadm turns this on when given a pod network; Kelson gives each
        // node its pod CIDR itself, from the seed (issue 16 revisits).
        "--allocate-node-cidrs=false".to_owned(),
        format!("--authentication-kubeconfig={conf}"),
        format!("--authorization-kubeconfig={conf}"),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--client-ca-file={}", pki("ca.crt")),
        format!("--cluster-name={}", plan.spec.name),
        format!("--cluster-signing-cert-file={}", pki("ca.crt")),
        format!("--cluster-signing-key-file={}", pki("ca.key")),
        "--controllers=*,bootstrapsigner,tokencleaner".to_owned(),
        format!("--kubeconfig={conf}"),
        "--leader-elect=true".to_owned(),
        format!("--requestheader-client-ca-file={}", pki("front-proxy-ca.crt")),
        format!("--root-ca-file={}", pki("ca.crt")),
        format!("--service-account-private-key-file={}", pki("sa.key")),
        format!("--service-cluster-ip-range={}", plan.spec.service_cidr),
        "--use-service-account-credentials=true".to_owned(),
    ];
    let container = json!({
        "image": kubernetes_image("kube-controller-manager"),
        "command": command,
        "livenessProbe": probe(ProbeKind::Liveness, "127.0.0.1", "/healthz", CONTROLLER_MANAGER_PORT, "HTTPS"),
        "startupProbe": probe(ProbeKind::Startup, "127.0.0.1", "/healthz", CONTROLLER_MANAGER_PORT, "HTTPS"),
        "resources": resources("200m"),
    });
    let kubeconfig = HostPath { name: "kubeconfig", path: conf, kind: "FileOrCreate", read_only: true };
    component_pod("kube-controller-manager", container, &[CA_CERTS, K8S_CERTS, kubeconfig], None)
}

fn scheduler() -> Value {
    let conf = SCHEDULER_CONF;
    let command = vec![
        "kube-scheduler".to_owned(),
        format!("--authentication-kubeconfig={conf}"),
        format!("--authorization-kubeconfig={conf}"),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--kubeconfig={conf}"),
        "--leader-elect=true".to_owned(),
    ];
    let container = json!({
        "image": kubernetes_image("kube-scheduler"),
        "command": command,
        "livenessProbe": probe(ProbeKind::Liveness, "127.0.0.1", "/healthz", SCHEDULER_PORT, "HTTPS"),
        "startupProbe": probe(ProbeKind::Startup, "127.0.0.1", "/healthz", SCHEDULER_PORT, "HTTPS"),
        "resources": resources("100m"),
    });
    let kubeconfig = HostPath { name: "kubeconfig", path: conf, kind: "FileOrCreate", read_only: true };
    component_pod("kube-scheduler", container, &[kubeconfig], None)
}
