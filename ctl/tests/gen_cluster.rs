//! A generated 1 control-plane + 2 worker cluster, checked from the files
//! on disk: configs validate, addresses and routes add up, certificates
//! chain to the CA with the right names, secrets are private, and the seed
//! images read back with fatfs and with the real mtools, fsck.fat and blkid.
//! The Kubernetes files follow kubeadm: three CAs, kubeconfigs, and static
//! pod manifests that kelson-pods' own parser accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ipnet::Ipv4Net;
use kelson_config::{MachineConfig, Role};
use kelsonctl::api::KelsonConfig;
use kelsonctl::gen::cluster::{CLUSTER_ADDONS_CERT, KUBELET_CERT, KUBE_PROXY_CERT};
use kelsonctl::gen::{cidr, generate_cluster, GeneratedCluster};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{
    assert_issued_by_ca, common_name, holds_pem, mode, organisation, read_config, read_fat_file, sans, spec, usages,
    with_cert,
};

const NODES: [&str; 3] = ["demo-cp-1", "demo-worker-1", "demo-worker-2"];

fn generate() -> (tempfile::TempDir, PathBuf, GeneratedCluster) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let generated = generate_cluster(&spec(), &dir, false).unwrap();
    (tmp, dir, generated)
}

fn configs(dir: &Path) -> BTreeMap<String, MachineConfig> {
    NODES.iter().map(|node| ((*node).to_owned(), read_config(dir, node))).collect()
}

#[test]
fn every_machine_config_validates_and_describes_its_node() {
    let (_tmp, dir, _) = generate();
    let configs = configs(&dir);
    for (node, config) in &configs {
        assert_eq!(config.node.hostname.as_deref(), Some(node.as_str()));
        let role = if node.contains("-cp-") { Role::ControlPlane } else { Role::Worker };
        assert_eq!(config.node.role, role);
        assert_eq!(config.network.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(config.network.service_cidr.as_deref(), Some("10.96.0.0/12"));
        assert_eq!(config.network.mtu, Some(1460));
        let uplink = &config.network.uplinks[..];
        assert_eq!(uplink.len(), 1);
        assert_eq!(uplink[0].name.as_deref(), Some("eth0"));
        assert_eq!(uplink[0].gateway4.as_deref(), Some("192.168.100.1"));
        let cluster = &config.cluster;
        assert_eq!(cluster.name.as_deref(), Some("demo"));
        assert_eq!(cluster.etcd_endpoints, ["https://192.168.100.10:2379"]);
        assert_eq!(cluster.api_server_endpoint.as_deref(), Some("https://192.168.100.10:6443"));
        assert_eq!(cluster.dns_address.as_deref(), Some("10.96.0.10"));
        assert_eq!(cluster.dns_domain.as_deref(), Some("cluster.local"));
    }
    let addresses: Vec<&str> = configs.values().map(|c| c.network.uplinks[0].addresses[0].as_str()).collect();
    assert_eq!(addresses, ["192.168.100.10/24", "192.168.100.11/24", "192.168.100.12/24"]);
    // One cluster-wide token, shared by every node.
    let tokens: BTreeSet<_> =
        configs.values().map(|c| c.cluster.bootstrap_token.as_ref().unwrap().expose().to_owned()).collect();
    assert_eq!(tokens.len(), 1);
}

#[test]
fn pod_cidrs_are_disjoint_inside_the_cluster_cidr_and_peer_routes_reach_the_others() {
    let (_tmp, dir, _) = generate();
    let configs = configs(&dir);
    let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    let pods: BTreeMap<&str, Ipv4Net> = configs
        .iter()
        .map(|(node, c)| (node.as_str(), c.network.pod_cidr.as_deref().unwrap().parse().unwrap()))
        .collect();
    for (node, pod) in &pods {
        assert!(cluster.contains(pod), "{node}'s {pod} is outside {cluster}");
        assert_eq!(pod.prefix_len(), 24);
        for (other, other_pod) in &pods {
            if node != other {
                assert!(!cidr::overlaps(*pod, *other_pod), "{node} {pod} overlaps {other} {other_pod}");
            }
        }
    }
    for (node, config) in &configs {
        let routes: BTreeSet<(String, String)> =
            config.network.peer_routes.iter().map(|r| (r.pod_cidr.clone(), r.via.clone())).collect();
        let expected: BTreeSet<(String, String)> = configs
            .iter()
            .filter(|(other, _)| *other != node)
            .map(|(_, other)| {
                let address = other.network.uplinks[0].addresses[0].split('/').next().unwrap().to_owned();
                (other.network.pod_cidr.clone().unwrap(), address)
            })
            .collect();
        assert_eq!(routes, expected, "{node}'s peer routes");
        assert_eq!(routes.len(), 2);
    }
}

#[test]
fn every_node_carries_its_kubelet_kube_proxy_and_management_certificates_from_the_cluster_ca() {
    let (_tmp, dir, _) = generate();
    let ca_pem = fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
    with_cert(&ca_pem, |ca| {
        assert!(ca.is_ca());
        ca.verify_signature(None).expect("self-signed CA");
        assert_eq!(common_name(ca), "kubernetes");
    });
    for (node, config) in configs(&dir) {
        assert_eq!(config.pki.ca.as_deref(), Some(ca_pem.as_str()));
        let address = config.network.uplinks[0].addresses[0].split('/').next().unwrap().to_owned();
        let names: BTreeSet<&str> = config.pki.certificates.keys().map(String::as_str).collect();
        let mut expected = BTreeSet::from([KUBELET_CERT, KUBE_PROXY_CERT, "management-api"]);
        if config.node.role == Role::ControlPlane {
            expected.insert(CLUSTER_ADDONS_CERT);
        }
        assert_eq!(names, expected, "{node}");
        for (name, pair) in &config.pki.certificates {
            assert_issued_by_ca(&ca_pem, &pair.cert, pair.key.expose());
            // The config carries the same pair as the files in pki/.
            let stem = if name == KUBE_PROXY_CERT {
                dir.join("pki/kube-proxy")
            } else {
                dir.join("pki").join(&node).join(name)
            };
            assert_eq!(fs::read_to_string(stem.with_extension("crt")).unwrap(), pair.cert, "{node} {name}");
            assert_eq!(fs::read_to_string(stem.with_extension("key")).unwrap(), pair.key.expose(), "{node} {name}");
            with_cert(&pair.cert, |cert| match name.as_str() {
                "management-api" => {
                    assert_eq!(usages(cert), (true, false));
                    assert_eq!(sans(cert), BTreeSet::from([node.clone(), address.clone()]));
                    assert_eq!(common_name(cert), node);
                }
                KUBELET_CERT => {
                    assert_eq!(usages(cert), (false, true));
                    assert_eq!(common_name(cert), format!("system:node:{node}"));
                    assert_eq!(organisation(cert), "system:nodes");
                    assert!(sans(cert).is_empty());
                }
                KUBE_PROXY_CERT => {
                    assert_eq!(usages(cert), (false, true));
                    assert_eq!(common_name(cert), "system:kube-proxy");
                    assert_eq!(organisation(cert), "");
                }
                CLUSTER_ADDONS_CERT => {
                    assert_eq!(usages(cert), (false, true));
                    assert_eq!(common_name(cert), "kelson:addons");
                    assert_eq!(organisation(cert), "system:masters");
                }
                other => panic!("unexpected certificate {other}"),
            });
        }
    }
}

/// A control-plane node's `files:` as path → (content, mode).
fn node_files(config: &MachineConfig) -> BTreeMap<String, (String, String)> {
    config
        .files
        .iter()
        .map(|f| (f.path.clone(), (f.content.expose().to_owned(), f.mode.clone().unwrap_or_default())))
        .collect()
}

/// A kubeadm certificate: file stem under pki/, issuing CA's stem, CN, O,
/// (serverAuth, clientAuth).
type KubeadmCert = (&'static str, &'static str, &'static str, &'static str, (bool, bool));

const KUBEADM_CERTS: [KubeadmCert; 8] = [
    ("apiserver", "ca", "kube-apiserver", "", (true, false)),
    ("apiserver-kubelet-client", "ca", "kube-apiserver-kubelet-client", "system:masters", (false, true)),
    ("apiserver-etcd-client", "etcd/ca", "kube-apiserver-etcd-client", "", (false, true)),
    ("front-proxy-client", "front-proxy-ca", "front-proxy-client", "", (false, true)),
    ("etcd/server", "etcd/ca", "demo-cp-1", "", (true, true)),
    ("etcd/peer", "etcd/ca", "demo-cp-1", "", (true, true)),
    ("etcd/healthcheck-client", "etcd/ca", "kube-etcd-healthcheck-client", "", (false, true)),
    ("ca", "ca", "kubernetes", "kelson", (false, false)),
];

#[test]
fn a_control_plane_node_gets_kubeadms_pki_chained_to_the_right_cas_with_the_right_names() {
    let (_tmp, dir, _) = generate();
    let config = &configs(&dir)["demo-cp-1"];
    let files = node_files(config);
    let pki = |stem: &str, ext: &str| {
        let (content, mode) =
            files.get(&format!("/etc/kubernetes/pki/{stem}.{ext}")).unwrap_or_else(|| panic!("no {stem}.{ext}"));
        assert_eq!(mode, if ext == "key" { "0600" } else { "0644" }, "{stem}.{ext}");
        content.clone()
    };
    let expected_paths: BTreeSet<String> = [
        "ca",
        "apiserver",
        "apiserver-kubelet-client",
        "apiserver-etcd-client",
        "front-proxy-ca",
        "front-proxy-client",
        "etcd/ca",
        "etcd/server",
        "etcd/peer",
        "etcd/healthcheck-client",
    ]
    .iter()
    .flat_map(|stem| [format!("/etc/kubernetes/pki/{stem}.crt"), format!("/etc/kubernetes/pki/{stem}.key")])
    .chain(["/etc/kubernetes/pki/sa.key", "/etc/kubernetes/pki/sa.pub"].map(String::from))
    .chain(["/etc/kubernetes/controller-manager.conf", "/etc/kubernetes/scheduler.conf"].map(String::from))
    .collect();
    assert_eq!(files.keys().cloned().collect::<BTreeSet<_>>(), expected_paths);

    for ca in ["ca", "etcd/ca", "front-proxy-ca"] {
        let cert = pki(ca, "crt");
        with_cert(&cert, |c| {
            assert!(c.is_ca(), "{ca}");
            c.verify_signature(None).expect("self-signed");
        });
        // The node's copy is DIR/pki's.
        assert_eq!(fs::read_to_string(dir.join(format!("pki/{ca}.crt"))).unwrap(), cert);
        assert_eq!(fs::read_to_string(dir.join(format!("pki/{ca}.key"))).unwrap(), pki(ca, "key"));
    }
    with_cert(&pki("etcd/ca", "crt"), |c| assert_eq!(common_name(c), "etcd-ca"));
    with_cert(&pki("front-proxy-ca", "crt"), |c| assert_eq!(common_name(c), "front-proxy-ca"));

    for (stem, ca, cn, o, usage) in KUBEADM_CERTS {
        if stem == ca {
            continue;
        }
        let cert = pki(stem, "crt");
        assert_issued_by_ca(&pki(ca, "crt"), &cert, &pki(stem, "key"));
        with_cert(&cert, |c| {
            assert_eq!(common_name(c), cn, "{stem}");
            assert_eq!(organisation(c), o, "{stem}");
            assert_eq!(usages(c), usage, "{stem}");
        });
        // Per-node certificates sit under pki/<node>/ in DIR, the rest under pki/.
        let in_dir = if ["apiserver", "etcd/server", "etcd/peer"].contains(&stem) {
            dir.join(format!("pki/demo-cp-1/{stem}.crt"))
        } else {
            dir.join(format!("pki/{stem}.crt"))
        };
        assert_eq!(fs::read_to_string(&in_dir).unwrap(), cert, "{}", in_dir.display());
    }
    let api_sans = with_cert(&pki("apiserver", "crt"), sans);
    let expected: BTreeSet<String> = [
        "demo-cp-1",
        "192.168.100.10",
        "10.96.0.1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
        "127.0.0.1",
    ]
    .map(String::from)
    .into();
    assert_eq!(api_sans, expected);
    for stem in ["etcd/server", "etcd/peer"] {
        let expected: BTreeSet<String> =
            ["demo-cp-1", "192.168.100.10", "localhost", "127.0.0.1", "::1"].map(String::from).into();
        assert_eq!(with_cert(&pki(stem, "crt"), sans), expected, "{stem}");
    }

    // The service-account pair: a private key and its public half.
    let sa_key = rcgen::KeyPair::from_pem(&pki("sa", "key")).unwrap();
    let sa_pub = &files["/etc/kubernetes/pki/sa.pub"].0;
    assert!(sa_pub.starts_with("-----BEGIN PUBLIC KEY-----"), "{sa_pub}");
    assert_eq!(&sa_key.public_key_pem(), sa_pub);
    assert_eq!(fs::read_to_string(dir.join("pki/sa.pub")).unwrap(), *sa_pub);
}

/// A kubeconfig's server, CA, and client certificate and key, decoded.
fn read_kubeconfig(text: &str) -> (String, String, String, String) {
    use base64::Engine;
    let value: serde_json::Value = serde_saphyr::from_str(text).unwrap();
    let decode = |v: &serde_json::Value| {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
    };
    assert_eq!(value["kind"], "Config");
    let context = value["current-context"].as_str().unwrap();
    assert_eq!(value["contexts"][0]["name"], context);
    let cluster = &value["clusters"][0]["cluster"];
    let user = &value["users"][0]["user"];
    (
        cluster["server"].as_str().unwrap().to_owned(),
        decode(&cluster["certificate-authority-data"]),
        decode(&user["client-certificate-data"]),
        decode(&user["client-key-data"]),
    )
}

#[test]
fn kubeconfigs_embed_the_cluster_ca_and_their_components_certificates() {
    let (_tmp, dir, _) = generate();
    let ca_pem = fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
    let files = node_files(&configs(&dir)["demo-cp-1"]);
    for (path, cn) in [
        ("/etc/kubernetes/controller-manager.conf", "system:kube-controller-manager"),
        ("/etc/kubernetes/scheduler.conf", "system:kube-scheduler"),
    ] {
        let (text, mode) = &files[path];
        assert_eq!(mode, "0600");
        let (server, ca, cert, key) = read_kubeconfig(text);
        assert_eq!(server, "https://192.168.100.10:6443");
        assert_eq!(ca, ca_pem);
        assert_issued_by_ca(&ca_pem, &cert, &key);
        with_cert(&cert, |c| {
            assert_eq!(common_name(c), cn);
            assert_eq!(usages(c), (false, true));
        });
    }
    let admin = dir.join("admin.kubeconfig");
    assert_eq!(mode(&admin), 0o600);
    let (server, ca, cert, key) = read_kubeconfig(&fs::read_to_string(&admin).unwrap());
    assert_eq!(server, "https://192.168.100.10:6443");
    assert_eq!(ca, ca_pem);
    assert_issued_by_ca(&ca_pem, &cert, &key);
    with_cert(&cert, |c| {
        assert_eq!(common_name(c), "kubernetes-admin");
        assert_eq!(organisation(c), "system:masters");
    });
}

/// The values of `--flag=value` arguments that name files under
/// /etc/kubernetes.
fn kubernetes_paths(command: &[String]) -> Vec<String> {
    command
        .iter()
        .filter_map(|arg| arg.split_once('=').map(|(_, value)| value))
        .flat_map(|value| value.split(','))
        .filter(|value| value.starts_with("/etc/kubernetes/"))
        .map(String::from)
        .collect()
}

#[test]
fn every_static_pod_parses_with_kelson_pods_and_names_its_image_files_and_probes() {
    use kelson_pods::{HostPathType, ProbeAction, VolumeSource};
    let (_tmp, dir, _) = generate();
    let config = &configs(&dir)["demo-cp-1"];
    let files = node_files(config);
    let names: Vec<&str> = config.static_pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["etcd.yaml", "kube-apiserver.yaml", "kube-controller-manager.yaml", "kube-scheduler.yaml"]);
    let version = kelsonctl::gen::kubeadm::KUBERNETES_VERSION;
    let options = kelson_pods::manifest::LoadOptions { node_name: Some("demo-cp-1".into()) };
    for static_pod in &config.static_pods {
        let component = static_pod.name.trim_end_matches(".yaml");
        let pod = kelson_pods::manifest::parse(Path::new(&static_pod.name), static_pod.manifest.as_bytes(), &options)
            .unwrap_or_else(|e| panic!("{}: {e:?}", static_pod.name));
        assert!(pod.warnings.is_empty(), "{}: {:?}", static_pod.name, pod.warnings);
        assert_eq!(pod.namespace, "kube-system");
        assert_eq!(pod.name, format!("{component}-demo-cp-1"));
        assert_eq!(pod.labels["component"], component);
        assert_eq!(pod.labels["tier"], "control-plane");
        assert!(pod.host_network);
        assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
        let [container] = &pod.containers[..] else { panic!("{component}: one container") };
        let image = if component == "etcd" {
            "registry.k8s.io/etcd:3.5.16-0".to_owned()
        } else {
            format!("registry.k8s.io/{component}:{version}")
        };
        assert_eq!(container.image, image);
        assert_eq!(container.command[0], component);
        assert!(container.resources.cpu_request_millis.is_some(), "{component}");
        assert_eq!(container.security.seccomp, Some(kelson_pods::Seccomp::RuntimeDefault), "{component}");

        // Every file a flag names and every FileOrCreate volume is among the node's files.
        let mut named = kubernetes_paths(&container.command);
        for volume in &pod.volumes {
            let VolumeSource::HostPath { path, kind } = &volume.source else { panic!("{component}: hostPath only") };
            if *kind == HostPathType::FileOrCreate {
                named.push(path.display().to_string());
            }
            assert!(container.mounts.iter().any(|m| m.volume == volume.name && m.mount_path == *path));
        }
        assert!(!named.is_empty());
        for path in &named {
            assert!(files.contains_key(path), "{component} names {path}, which the machine config does not carry");
        }

        let probe_of = |probe: &Option<kelson_pods::ProbeSpec>| {
            probe.as_ref().map(|p| match &p.action {
                ProbeAction::HttpGet { host, port, path, .. } => {
                    (host.clone().unwrap_or_default(), *port, path.clone())
                }
                other => panic!("{component}: {other:?}"),
            })
        };
        let (liveness, readiness, startup) =
            (probe_of(&container.liveness), probe_of(&container.readiness), probe_of(&container.startup));
        let at = |host: &str, port: u16, path: &str| Some((host.to_owned(), port, path.to_owned()));
        match component {
            "etcd" => {
                assert_eq!(liveness, at("127.0.0.1", 2381, "/livez"));
                assert_eq!(readiness, at("127.0.0.1", 2381, "/readyz"));
                assert_eq!(startup, at("127.0.0.1", 2381, "/readyz"));
                assert!(container.command.contains(&"--initial-cluster=demo-cp-1=https://192.168.100.10:2380".into()));
            }
            "kube-apiserver" => {
                assert_eq!(liveness, at("192.168.100.10", 6443, "/livez"));
                assert_eq!(readiness, at("192.168.100.10", 6443, "/readyz"));
                assert_eq!(startup, at("192.168.100.10", 6443, "/livez"));
                assert!(container.command.contains(&"--advertise-address=192.168.100.10".into()));
            }
            "kube-controller-manager" => {
                assert_eq!(liveness, at("127.0.0.1", 10257, "/healthz"));
                assert_eq!(startup, at("127.0.0.1", 10257, "/healthz"));
                assert!(container.command.contains(&"--allocate-node-cidrs=false".into()));
            }
            "kube-scheduler" => {
                assert_eq!(liveness, at("127.0.0.1", 10259, "/healthz"));
                assert_eq!(startup, at("127.0.0.1", 10259, "/healthz"));
            }
            other => panic!("unexpected manifest {other}"),
        }
        let liveness = container.liveness.as_ref().unwrap();
        assert_eq!((liveness.period.as_secs(), liveness.timeout.as_secs(), liveness.failure_threshold), (10, 15, 8));
        let startup = container.startup.as_ref().unwrap();
        assert_eq!(startup.failure_threshold, 24);
    }
}

#[test]
fn etcd_lists_every_control_plane_member() {
    let tmp = tempfile::tempdir().unwrap();
    let mut three = spec();
    three.control_planes = 3;
    three.workers = 0;
    generate_cluster(&three, &tmp.path().join("c"), false).unwrap();
    let path = tmp.path().join("c/nodes/demo-cp-2/machine-config.yaml");
    let config = kelson_config::parse("cp-2", &fs::read_to_string(path).unwrap()).unwrap();
    let etcd = &config.static_pods[0].manifest;
    assert!(
        etcd.contains("--initial-cluster=demo-cp-1=https://192.168.100.10:2380,demo-cp-2=https://192.168.100.11:2380,demo-cp-3=https://192.168.100.12:2380"),
        "{etcd}"
    );
    assert!(etcd.contains("--name=demo-cp-2"), "{etcd}");
    let api_sans = with_cert(&node_files(&config)["/etc/kubernetes/pki/apiserver.crt"].0, sans);
    for address in ["192.168.100.10", "192.168.100.11", "192.168.100.12"] {
        assert!(api_sans.contains(address), "{address} missing from {api_sans:?}");
    }
}

#[test]
fn workers_get_no_control_plane_files_and_no_ca_key() {
    let (_tmp, dir, _) = generate();
    let ca_keys: Vec<String> = ["ca", "etcd/ca", "front-proxy-ca", "sa"]
        .iter()
        .map(|stem| fs::read_to_string(dir.join(format!("pki/{stem}.key"))).unwrap())
        .collect();
    for node in ["demo-worker-1", "demo-worker-2"] {
        let config = &configs(&dir)[node];
        assert!(config.files.is_empty(), "{node}");
        assert!(config.static_pods.is_empty(), "{node}");
        let text = fs::read_to_string(dir.join(format!("nodes/{node}/machine-config.yaml"))).unwrap();
        for key in &ca_keys {
            assert!(!holds_pem(&text, key), "{node} carries a CA or signing key");
        }
    }
    // The control-plane node does carry them (the controller-manager signs with ca.key).
    let text = fs::read_to_string(dir.join("nodes/demo-cp-1/machine-config.yaml")).unwrap();
    assert!(ca_keys.iter().all(|key| holds_pem(&text, key)));
}

#[test]
fn admin_and_read_only_clients_differ_by_organisation() {
    let (_tmp, dir, _) = generate();
    let ca_pem = fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
    for (client, expected) in [("admin", "kelson:admin"), ("read-only", "kelson:read-only")] {
        let cert = fs::read_to_string(dir.join(format!("pki/{client}.crt"))).unwrap();
        let key = fs::read_to_string(dir.join(format!("pki/{client}.key"))).unwrap();
        assert_issued_by_ca(&ca_pem, &cert, &key);
        with_cert(&cert, |c| {
            assert_eq!(organisation(c), expected);
            assert_eq!(common_name(c), client);
            assert_eq!(usages(c), (false, true));
        });
    }
}

#[test]
fn each_kelsonconfig_holds_the_ca_its_client_and_every_node_on_the_api_port() {
    let (_tmp, dir, _) = generate();
    let ca_pem = fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
    for (file, client) in [("kelsonconfig", "admin"), ("kelsonconfig-read-only", "read-only")] {
        let path = dir.join(file);
        let config = KelsonConfig::from_yaml(&path, &fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config.cluster, "demo");
        assert_eq!(config.ca, ca_pem);
        assert_eq!(config.client.name, client);
        assert_eq!(config.client.certificate, fs::read_to_string(dir.join(format!("pki/{client}.crt"))).unwrap());
        assert_eq!(config.client.key, fs::read_to_string(dir.join(format!("pki/{client}.key"))).unwrap());
        let nodes: Vec<(&str, &str)> = config.nodes.iter().map(|n| (n.name.as_str(), n.endpoint.as_str())).collect();
        assert_eq!(
            nodes,
            [
                ("demo-cp-1", "192.168.100.10:50000"),
                ("demo-worker-1", "192.168.100.11:50000"),
                ("demo-worker-2", "192.168.100.12:50000")
            ]
        );
    }
}

#[test]
fn secrets_are_private_and_certificates_public() {
    let (_tmp, dir, _) = generate();
    let mut keys = 0;
    let mut certs = 0;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let expected = match path.extension().and_then(|e| e.to_str()) {
                Some("key") | Some("img") | Some("kubeconfig") => 0o600,
                Some("crt") | Some("pub") => 0o644,
                _ if name == "machine-config.yaml" || name.starts_with("kelsonconfig") || name == "user-data" => 0o600,
                _ if name == "cluster.yaml" => 0o644,
                _ => panic!("unexpected file {}", path.display()),
            };
            assert_eq!(mode(&path), expected, "{}", path.display());
            keys += usize::from(name.ends_with(".key"));
            certs += usize::from(name.ends_with(".crt"));
        }
    }
    // pki/: 3 CAs, apiserver-kubelet-client, apiserver-etcd-client,
    // front-proxy-client, etcd/healthcheck-client, kube-proxy, admin,
    // read-only (10); each node: management-api, kubelet (6); cp-1:
    // apiserver, etcd/server, etcd/peer, cluster-addons (4); and sa.key.
    assert_eq!((keys, certs), (21, 20));
}

#[test]
fn the_summary_lists_nodes_and_clients_but_no_secrets() {
    let (_tmp, dir, generated) = generate();
    let summary = fs::read_to_string(dir.join("cluster.yaml")).unwrap();
    let token = configs(&dir)["demo-cp-1"].cluster.bootstrap_token.as_ref().unwrap().expose().to_owned();
    for text in [&summary, &generated.describe(&dir)] {
        assert!(!text.contains("PRIVATE KEY"));
        assert!(!text.contains(&token));
        for node in NODES {
            assert!(text.contains(node), "{node} missing from\n{text}");
        }
        assert!(text.contains("pki/admin.crt") && text.contains("pki/read-only.key"), "{text}");
        assert!(text.contains("admin.kubeconfig"), "{text}");
        assert!(text.contains(kelsonctl::gen::kubeadm::KUBERNETES_VERSION), "{text}");
        assert!(text.contains("kelson:admin") && text.contains("kelson:read-only"), "{text}");
    }
    assert!(summary.contains("podCIDR: 10.244.2.0/24"), "{summary}");
    assert!(summary.contains("address: \"192.168.100.12\""), "{summary}");
    for ca in ["cluster: pki/ca.crt", "etcd: pki/etcd/ca.crt", "frontProxy: pki/front-proxy-ca.crt"] {
        assert!(summary.contains(ca), "{ca} missing from\n{summary}");
    }
}

#[test]
fn seed_images_read_back_with_fatfs() {
    let (_tmp, dir, generated) = generate();
    let mut instance_ids = BTreeSet::new();
    for node in NODES {
        let node_dir = dir.join("nodes").join(node);
        let image = fs::File::open(node_dir.join("seed.img")).unwrap();
        let fat = fatfs::FileSystem::new(image, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fat.volume_label(), "CIDATA");
        assert_eq!(fat.read_volume_label_from_root_dir().unwrap().as_deref(), Some("CIDATA"));
        let names: BTreeSet<String> = fat.root_dir().iter().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, BTreeSet::from(["meta-data".to_owned(), "user-data".to_owned()]));

        let user_data = read_fat_file(&fat, "user-data");
        assert_eq!(user_data, fs::read_to_string(node_dir.join("machine-config.yaml")).unwrap());
        assert!(user_data.starts_with("apiVersion: "), "{}", &user_data[..40]);
        kelson_config::parse("user-data", &user_data).unwrap();

        let meta = read_fat_file(&fat, "meta-data");
        let instance_id = format!("kelson-{}-{node}", generated.generation);
        assert_eq!(meta, format!("instance-id: {instance_id}\nlocal-hostname: {node}\n"));
        instance_ids.insert(instance_id);
    }
    assert_eq!(instance_ids.len(), NODES.len());
    // A second generation gets new instance ids, so nodes re-read their seed.
    let (_tmp2, _, again) = generate();
    assert_ne!(again.generation, generated.generation);
}

/// Runs a host tool on a seed image; the tools are part of the project's
/// host dependencies (`cargo xtask` installs dosfstools and mtools).
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (apt-get install -y mtools dosfstools util-linux)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn seed_images_pass_mtools_fsck_fat_and_blkid() {
    let (_tmp, dir, _) = generate();
    for node in NODES {
        let node_dir = dir.join("nodes").join(node);
        let image = node_dir.join("seed.img");
        let image = image.to_str().unwrap();
        let listing = tool("mdir", &["-i", image, "::"]);
        assert!(listing.contains("Volume in drive : is CIDATA"), "{listing}");
        assert!(listing.contains("meta-data") && listing.contains("user-data"), "{listing}");
        let user_data = tool("mtype", &["-i", image, "::user-data"]);
        assert_eq!(user_data, fs::read_to_string(node_dir.join("machine-config.yaml")).unwrap());
        let meta = tool("mtype", &["-i", image, "::meta-data"]);
        assert!(meta.contains(&format!("local-hostname: {node}\n")), "{meta}");
        tool("fsck.fat", &["-n", image]);
        assert_eq!(tool("blkid", &["-o", "value", "-s", "LABEL", image]).trim(), "CIDATA");
        assert_eq!(tool("blkid", &["-o", "value", "-s", "TYPE", image]).trim(), "vfat");
    }
}

/// The CA's hash as kubeadm's documentation computes it, with openssl:
/// the public key in DER, through SHA-256.
fn openssl_ca_hash(ca: &Path) -> String {
    let script = format!(
        "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | openssl dgst -sha256 -r",
        ca.display()
    );
    let out = tool("sh", &["-c", &script]);
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

#[test]
fn the_join_seed_carries_the_endpoint_the_token_and_the_cas_hash_and_the_control_plane_registers_the_token() {
    let (_tmp, dir, generated) = generate();
    let path = dir.join("join/user-data");
    assert_eq!(mode(&path), 0o600, "the join user-data holds the token");
    let join = kelson_config::parse("join/user-data", &fs::read_to_string(&path).unwrap()).unwrap();
    let cp = &configs(&dir)["demo-cp-1"];
    let token = cp.cluster.bootstrap_token.as_ref().unwrap().expose();
    assert_eq!(join.cluster.bootstrap_token.as_ref().unwrap().expose(), token);
    assert_eq!(join.cluster.api_server_endpoint.as_deref(), Some("https://192.168.100.10:6443"));
    let hash = openssl_ca_hash(&dir.join("pki/ca.crt"));
    assert_eq!(join.cluster.ca_cert_hashes, std::slice::from_ref(&hash));
    assert_eq!(join.node.role, Role::Worker);
    // Per node: its name, address and pod CIDR come from its own seed files.
    assert!(join.node.hostname.is_none() && join.network.uplinks.is_empty() && join.network.pod_cidr.is_none());
    assert!(join.pki.ca.is_none() && join.pki.certificates.is_empty());

    // The control-plane node registers the token with its expiration.
    let expiration = cp.cluster.bootstrap_token_expiration.clone().expect("the control plane's token expires");
    let summary = fs::read_to_string(dir.join("cluster.yaml")).unwrap();
    let token_id = token.split('.').next().unwrap();
    for line in [
        format!("tokenId: {token_id}"),
        format!("expiration: \"{expiration}\""),
        format!("caCertHash: {hash}"),
        "userData: join/user-data".to_owned(),
    ] {
        assert!(summary.contains(&line), "{line} missing from\n{summary}");
    }
    assert_eq!(generated.token_join.ca_cert_hash, hash);
    let described = generated.describe(&dir);
    assert!(described.contains("join/user-data") && described.contains(token_id), "{described}");
    // About a day from now, in the form a Secret's expiration takes.
    let now = time::OffsetDateTime::now_utc();
    let parsed = time::OffsetDateTime::parse(&expiration, &time::format_description::well_known::Rfc3339).unwrap();
    let ttl = parsed - now;
    assert!(ttl > time::Duration::hours(23) && ttl <= time::Duration::hours(24), "{expiration}");
}
