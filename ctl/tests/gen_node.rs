//! `gen node` on a folder from `gen cluster` (1 control plane, 2 workers,
//! gateway .1), checked from the files on disk: the new worker's address,
//! pod CIDR and routes, its certificates against the cluster CA, its config
//! through kelson_config's validator, its seed image, and the folder's
//! cluster.yaml and kelsonconfigs listing it. Every refusal leaves the
//! folder exactly as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    assert_issued_by_ca, common_name, mode, organisation, read_config, read_fat_file, sans, spec, usages, with_cert,
};
use kelson_config::{MachineConfig, Role};
use kelsonctl::api::KelsonConfig;
use kelsonctl::gen::output::STAGING_DIR;
use kelsonctl::gen::{generate_cluster, generate_node, ClusterSpec, GenNodeError, GeneratedNode, NodeSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use x509_parser::extensions::ParsedExtension;

const EXISTING: [&str; 3] = ["demo-cp-1", "demo-worker-1", "demo-worker-2"];

fn cluster(spec: &ClusterSpec) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    generate_cluster(spec, &dir, false).unwrap();
    (tmp, dir)
}

fn worker(name: &str) -> NodeSpec {
    NodeSpec { name: name.to_owned(), role: Role::Worker }
}

fn add(dir: &Path, name: &str) -> GeneratedNode {
    generate_node(dir, &worker(name)).unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
}

fn address_of(config: &MachineConfig) -> String {
    config.network.uplinks[0].addresses[0].split('/').next().unwrap().to_owned()
}

/// (pod CIDR, via) of each peer route.
fn routes(config: &MachineConfig) -> BTreeSet<(String, String)> {
    config.network.peer_routes.iter().map(|r| (r.pod_cidr.clone(), r.via.clone())).collect()
}

/// cluster.yaml, parsed as plain YAML.
fn summary(dir: &Path) -> serde_json::Value {
    serde_saphyr::from_str(&fs::read_to_string(dir.join("cluster.yaml")).unwrap()).unwrap()
}

fn kelsonconfig_nodes(dir: &Path, file: &str) -> Vec<(String, String)> {
    let path = dir.join(file);
    let config = KelsonConfig::from_yaml(&path, &fs::read_to_string(&path).unwrap()).unwrap();
    config.nodes.into_iter().map(|n| (n.name, n.endpoint)).collect()
}

#[test]
fn a_worker_added_later_gets_the_next_address_and_pod_cidr_and_routes_to_every_node() {
    let (_tmp, dir) = cluster(&spec());
    let added = add(&dir, "demo-worker-3");
    assert_eq!(added.node.address.to_string(), "192.168.100.13");
    assert_eq!(added.node.pod_cidr.to_string(), "10.244.3.0/24");

    let config = read_config(&dir, "demo-worker-3");
    let reference = read_config(&dir, "demo-worker-1");
    assert_eq!(config.node.hostname.as_deref(), Some("demo-worker-3"));
    assert_eq!(config.node.role, Role::Worker);
    assert_eq!(config.network.uplinks[0].addresses, ["192.168.100.13/24"]);
    assert_eq!(config.network.pod_cidr.as_deref(), Some("10.244.3.0/24"));
    // Everything cluster-wide is what gen cluster gave the others.
    assert_eq!(config.network.uplinks[0].gateway4, reference.network.uplinks[0].gateway4);
    assert_eq!(config.network.uplinks[0].name, reference.network.uplinks[0].name);
    assert_eq!(config.network.cluster_cidr, reference.network.cluster_cidr);
    assert_eq!(config.network.service_cidr, reference.network.service_cidr);
    assert_eq!(config.network.mtu, reference.network.mtu);
    assert_eq!(config.cluster, reference.cluster, "name, endpoints, DNS and the bootstrap token");
    assert_eq!(config.pki.ca, reference.pki.ca);
    assert!(config.files.is_empty() && config.static_pods.is_empty(), "a worker gets no control-plane files");

    let expected: BTreeSet<(String, String)> = EXISTING
        .iter()
        .map(|node| {
            let other = read_config(&dir, node);
            (other.network.pod_cidr.clone().unwrap(), address_of(&other))
        })
        .collect();
    assert_eq!(routes(&config), expected);
    assert_eq!(expected.len(), 3);
    assert_eq!(added.peers, 3);
}

/// The value of the certificate's subject key identifier, or of its
/// authority key identifier.
fn key_identifier(pem: &str, authority: bool) -> Vec<u8> {
    with_cert(pem, |cert| {
        cert.extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) if authority => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                ParsedExtension::SubjectKeyIdentifier(ski) if !authority => Some(ski.0.to_vec()),
                _ => None,
            })
            .expect("a key identifier")
    })
}

#[test]
fn its_certificates_chain_to_the_cluster_ca_with_the_kubelet_and_management_api_names() {
    let (_tmp, dir) = cluster(&spec());
    add(&dir, "demo-worker-3");
    let ca_pem = fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
    let config = read_config(&dir, "demo-worker-3");
    let names: BTreeSet<&str> = config.pki.certificates.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["kubelet", "kube-proxy", "management-api"]));
    for (name, pair) in &config.pki.certificates {
        assert_issued_by_ca(&ca_pem, &pair.cert, pair.key.expose());
        // Verifiers find the issuer by name and key identifier: both must be the CA's exactly.
        let issuer = with_cert(&pair.cert, |c| c.issuer().as_raw().to_vec());
        assert_eq!(issuer, with_cert(&ca_pem, |c| c.subject().as_raw().to_vec()), "{name}");
        assert_eq!(key_identifier(&pair.cert, true), key_identifier(&ca_pem, false), "{name}");
    }
    let kubelet = &config.pki.certificates["kubelet"];
    with_cert(&kubelet.cert, |cert| {
        assert_eq!(common_name(cert), "system:node:demo-worker-3");
        assert_eq!(organisation(cert), "system:nodes");
        assert_eq!(usages(cert), (false, true));
    });
    let management = &config.pki.certificates["management-api"];
    with_cert(&management.cert, |cert| {
        assert_eq!(common_name(cert), "demo-worker-3");
        assert_eq!(sans(cert), BTreeSet::from(["demo-worker-3".to_owned(), "192.168.100.13".to_owned()]));
        assert_eq!(usages(cert), (true, false));
    });
    // kube-proxy's pair is the cluster's one, not a new one.
    let kube_proxy = &config.pki.certificates["kube-proxy"];
    assert_eq!(kube_proxy.cert, fs::read_to_string(dir.join("pki/kube-proxy.crt")).unwrap());
    // DIR/pki/<node>/ holds the node's pairs, keys private.
    for name in ["kubelet", "management-api"] {
        let stem = dir.join("pki/demo-worker-3").join(name);
        assert_eq!(fs::read_to_string(stem.with_extension("crt")).unwrap(), config.pki.certificates[name].cert);
        assert_eq!(fs::read_to_string(stem.with_extension("key")).unwrap(), config.pki.certificates[name].key.expose());
        assert_eq!(mode(&stem.with_extension("key")), 0o600);
        assert_eq!(mode(&stem.with_extension("crt")), 0o644);
    }
}

#[test]
fn its_seed_image_holds_its_config_under_the_clusters_generation() {
    let (_tmp, dir) = cluster(&spec());
    add(&dir, "demo-worker-3");
    let node_dir = dir.join("nodes/demo-worker-3");
    assert_eq!(mode(&node_dir.join("seed.img")), 0o600);
    assert_eq!(mode(&node_dir.join("machine-config.yaml")), 0o600);
    let fat =
        fatfs::FileSystem::new(fs::File::open(node_dir.join("seed.img")).unwrap(), fatfs::FsOptions::new()).unwrap();
    assert_eq!(fat.volume_label(), "CIDATA");
    assert_eq!(read_fat_file(&fat, "user-data"), fs::read_to_string(node_dir.join("machine-config.yaml")).unwrap());
    let generation = summary(&dir)["generation"].as_str().unwrap().to_owned();
    assert_eq!(
        read_fat_file(&fat, "meta-data"),
        format!("instance-id: kelson-{generation}-demo-worker-3\nlocal-hostname: demo-worker-3\n")
    );
}

#[test]
fn cluster_yaml_and_both_kelsonconfigs_list_it_and_keep_the_rest() {
    let (_tmp, dir) = cluster(&spec());
    let before = summary(&dir);
    let kelsonconfig_before = fs::read_to_string(dir.join("kelsonconfig")).unwrap();
    let added = add(&dir, "demo-worker-3");
    assert_eq!(added.updated, ["kelsonconfig", "kelsonconfig-read-only", "cluster.yaml"]);

    let mut after = summary(&dir);
    let nodes = after["nodes"].as_array_mut().unwrap();
    let new = nodes.pop().unwrap();
    assert_eq!(new["name"], "demo-worker-3");
    assert_eq!(new["role"], "worker");
    assert_eq!(new["address"], "192.168.100.13");
    assert_eq!(new["podCIDR"], "10.244.3.0/24");
    assert_eq!(new["machineConfig"], "nodes/demo-worker-3/machine-config.yaml");
    assert_eq!(new["seedImage"], "nodes/demo-worker-3/seed.img");
    assert_eq!(
        new["certificates"],
        serde_json::json!([
            "pki/kube-proxy.crt",
            "pki/demo-worker-3/kubelet.crt",
            "pki/demo-worker-3/management-api.crt"
        ])
    );
    assert_eq!(after, before, "everything else in cluster.yaml is as it was");
    assert_eq!(mode(&dir.join("cluster.yaml")), 0o644);

    for file in ["kelsonconfig", "kelsonconfig-read-only"] {
        let nodes = kelsonconfig_nodes(&dir, file);
        let names: Vec<&str> = nodes.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["demo-cp-1", "demo-worker-1", "demo-worker-2", "demo-worker-3"], "{file}");
        assert_eq!(nodes[3].1, "192.168.100.13:50000");
        assert_eq!(mode(&dir.join(file)), 0o600);
    }
    // The client identity and CA are untouched: only the node list grew.
    let kelsonconfig_after = fs::read_to_string(dir.join("kelsonconfig")).unwrap();
    assert!(kelsonconfig_after.starts_with(kelsonconfig_before.split("nodes:").next().unwrap()));
    assert!(!dir.join(STAGING_DIR).exists());
}

#[test]
fn a_second_node_gets_the_next_ones_and_a_route_to_the_first() {
    let (_tmp, dir) = cluster(&spec());
    add(&dir, "demo-worker-3");
    let second = add(&dir, "demo-worker-4");
    assert_eq!(second.node.address.to_string(), "192.168.100.14");
    assert_eq!(second.node.pod_cidr.to_string(), "10.244.4.0/24");
    let config = read_config(&dir, "demo-worker-4");
    assert_eq!(routes(&config).len(), 4);
    assert!(routes(&config).contains(&("10.244.3.0/24".to_owned(), "192.168.100.13".to_owned())));
    let names: Vec<String> =
        summary(&dir)["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["demo-cp-1", "demo-worker-1", "demo-worker-2", "demo-worker-3", "demo-worker-4"]);
}

#[test]
fn the_gateway_and_the_nodes_addresses_are_skipped() {
    let mut with_gateway_in_the_way = spec();
    // Nodes get .10 to .12; the gateway sits where the next node would go.
    with_gateway_in_the_way.gateway = Some("192.168.100.13".parse().unwrap());
    let (_tmp, dir) = cluster(&with_gateway_in_the_way);
    assert_eq!(add(&dir, "demo-worker-3").node.address.to_string(), "192.168.100.14");
}

/// Every file under `dir` with its contents and mode.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.insert(path.clone(), (Vec::new(), mode(&path)));
                stack.push(path);
            } else {
                files.insert(path.clone(), (fs::read(&path).unwrap(), mode(&path)));
            }
        }
    }
    files
}

/// Runs `gen node` expecting a refusal; checks the folder did not change
/// and returns the error's message with its causes.
fn refused(dir: &Path, spec: &NodeSpec) -> (GenNodeError, String) {
    let before = snapshot(dir);
    let err = generate_node(dir, spec).expect_err("gen node should refuse");
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    assert!(snapshot(dir) == before, "the refused gen node changed the folder: {text}");
    (err, text)
}

#[test]
fn a_name_already_in_the_cluster_is_refused() {
    let (_tmp, dir) = cluster(&spec());
    let (_, text) = refused(&dir, &worker("demo-worker-1"));
    assert_eq!(
        text,
        format!("node demo-worker-1 is already in the cluster: {} has it", dir.join("cluster.yaml").display())
    );
    // Leftovers of a node dropped from cluster.yaml by hand count too.
    fs::create_dir_all(dir.join("pki/demo-worker-9")).unwrap();
    let (_, text) = refused(&dir, &worker("demo-worker-9"));
    assert!(text.ends_with(&format!("{} has it", dir.join("pki/demo-worker-9").display())), "{text}");
}

#[test]
fn an_invalid_hostname_is_refused() {
    let (_tmp, dir) = cluster(&spec());
    for name in ["Worker-3", "worker_3", "-worker", "", &"w".repeat(64)] {
        let (err, text) = refused(&dir, &worker(name));
        assert!(matches!(err, GenNodeError::Hostname(_)), "{name}: {text}");
        assert_eq!(text, format!("node name {name:?} is not a lowercase RFC 1123 hostname of at most 63 characters"));
    }
}

#[test]
fn a_full_node_cidr_is_refused() {
    let mut small = spec();
    small.node_cidr = "192.168.100.0/28".parse().unwrap();
    small.gateway = Some("192.168.100.14".parse().unwrap());
    small.workers = 3;
    // .10 to .13 are nodes, .14 the gateway, .15 broadcast.
    let (_tmp, dir) = cluster(&small);
    let (_, text) = refused(&dir, &worker("demo-worker-4"));
    assert_eq!(
        text,
        format!(
            "{}: no room for another node: node CIDR 192.168.100.0/28 has no free node address: every one from .10 to \
             the last before broadcast is a node's or the gateway's",
            dir.join("cluster.yaml").display()
        )
    );
}

#[test]
fn a_full_cluster_cidr_is_refused() {
    let mut small = spec();
    small.cluster_cidr = "10.244.0.0/22".parse().unwrap();
    small.workers = 3;
    let (_tmp, dir) = cluster(&small);
    let (_, text) = refused(&dir, &worker("demo-worker-4"));
    assert!(
        text.ends_with(
            "no room for another node: cluster CIDR 10.244.0.0/22 has no free /24 pod subnet: every one overlaps a \
             node's pod CIDR"
        ),
        "{text}"
    );
}

#[test]
fn a_folder_gen_cluster_did_not_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let (_, text) = refused(tmp.path(), &worker("demo-worker-3"));
    assert_eq!(
        text,
        format!("{} is not a `kelsonctl gen cluster` folder: it has no cluster.yaml", tmp.path().display())
    );

    let (_tmp, dir) = cluster(&spec());
    let text = fs::read_to_string(dir.join("cluster.yaml")).unwrap();
    fs::write(dir.join("cluster.yaml"), text.replace("nodeCIDR: 192.168.100.0/24", "nodeCIDR: 192.168.100.0")).unwrap();
    let (_, text) = refused(&dir, &worker("demo-worker-3"));
    assert_eq!(
        text,
        format!(
            "{}: nodeCIDR: \"192.168.100.0\" is not an IPv4 CIDR like 10.244.0.0/16",
            dir.join("cluster.yaml").display()
        )
    );
}

#[test]
fn a_folder_without_the_ca_key_or_with_another_key_is_refused() {
    let (_tmp, dir) = cluster(&spec());
    let ca_key = fs::read(dir.join("pki/ca.key")).unwrap();
    fs::remove_file(dir.join("pki/ca.key")).unwrap();
    let (_, text) = refused(&dir, &worker("demo-worker-3"));
    assert_eq!(
        text,
        format!(
            "{} is missing: the cluster CA's key signs the new node's certificates",
            dir.join("pki/ca.key").display()
        )
    );
    // The etcd CA's key is a valid key, but not the cluster CA's.
    fs::copy(dir.join("pki/etcd/ca.key"), dir.join("pki/ca.key")).unwrap();
    let (_, text) = refused(&dir, &worker("demo-worker-3"));
    assert!(text.ends_with("the key is not the certificate's key (their public keys differ)"), "{text}");
    fs::write(dir.join("pki/ca.key"), ca_key).unwrap();
    add(&dir, "demo-worker-3");
}

fn control_plane(name: &str) -> NodeSpec {
    NodeSpec { name: name.to_owned(), role: Role::ControlPlane }
}

/// The etcd command line of a node's etcd.yaml static pod.
fn etcd_flags(config: &MachineConfig) -> Vec<String> {
    let pod = config.static_pods.iter().find(|p| p.name == "etcd.yaml").unwrap();
    let manifest: serde_json::Value = serde_saphyr::from_str(&pod.manifest).unwrap();
    manifest["spec"]["containers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn file<'a>(config: &'a MachineConfig, path: &str) -> &'a str {
    config.files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("no {path}")).content.expose()
}

#[test]
fn a_control_plane_node_joins_the_running_etcd_members_with_the_clusters_certificates() {
    let (_tmp, dir) = cluster(&spec());
    let added = generate_node(&dir, &control_plane("demo-cp-2")).unwrap();
    let config = read_config(&dir, "demo-cp-2");

    assert_eq!(added.etcd_join_through.as_deref(), Some(&["https://192.168.100.10:2379".to_owned()][..]));
    assert!(added.describe(&dir).contains("adds itself as a learner through https://192.168.100.10:2379"));
    assert_eq!(config.node.role, Role::ControlPlane);
    assert!(config.cluster.etcd_join);
    assert_eq!(config.cluster.etcd_endpoints, ["https://192.168.100.10:2379"], "the members running before it");
    let address = address_of(&config);
    assert_eq!(address, "192.168.100.13");
    let pods: BTreeSet<&str> = config.static_pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        pods,
        BTreeSet::from(["etcd.yaml", "kube-apiserver.yaml", "kube-controller-manager.yaml", "kube-scheduler.yaml"])
    );
    let flags = etcd_flags(&config);
    for expected in [
        "--name=demo-cp-2",
        "--initial-cluster-state=existing",
        "--initial-advertise-peer-urls=https://192.168.100.13:2380",
        "--initial-cluster=demo-cp-1=https://192.168.100.10:2380,demo-cp-2=https://192.168.100.13:2380",
    ] {
        assert!(flags.iter().any(|f| f == expected), "no {expected} in {flags:?}");
    }
    // The cluster's shared certificates as gen cluster wrote them; its own
    // etcd and API server certificates from the same CAs, for its address.
    for shared in [
        "etcd/ca.crt",
        "etcd/ca.key",
        "apiserver-etcd-client.crt",
        "apiserver-etcd-client.key",
        "sa.key",
        "front-proxy-ca.crt",
    ] {
        let written = fs::read_to_string(dir.join("pki").join(shared)).unwrap();
        assert_eq!(file(&config, &format!("/etc/kubernetes/pki/{shared}")), written, "{shared}");
    }
    let etcd_ca = fs::read_to_string(dir.join("pki/etcd/ca.crt")).unwrap();
    for own in ["etcd/server", "etcd/peer"] {
        let cert = file(&config, &format!("/etc/kubernetes/pki/{own}.crt"));
        assert_issued_by_ca(&etcd_ca, cert, file(&config, &format!("/etc/kubernetes/pki/{own}.key")));
        with_cert(cert, |c| assert!(sans(c).contains(&address), "{own}: {:?}", sans(c)));
    }
    let ca = fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
    let api_server = file(&config, "/etc/kubernetes/pki/apiserver.crt");
    assert_issued_by_ca(&ca, api_server, file(&config, "/etc/kubernetes/pki/apiserver.key"));
    with_cert(api_server, |c| assert!(sans(c).contains(&address)));
    assert!(file(&config, "/etc/kubernetes/controller-manager.conf").contains("server: https://192.168.100.13:6443"));
    // The founding node's etcd says nothing of joining.
    assert!(!etcd_flags(&read_config(&dir, "demo-cp-1")).iter().any(|f| f.starts_with("--initial-cluster-state")));
    let listed = summary(&dir);
    assert_eq!(
        listed["etcdEndpoints"],
        serde_json::json!(["https://192.168.100.10:2379", "https://192.168.100.13:2379"])
    );
    assert_eq!(listed["nodes"][3]["role"], "control-plane");
}

#[test]
fn a_third_control_plane_node_joins_through_the_first_two() {
    let (_tmp, dir) = cluster(&spec());
    generate_node(&dir, &control_plane("demo-cp-2")).unwrap();
    generate_node(&dir, &control_plane("demo-cp-3")).unwrap();

    let config = read_config(&dir, "demo-cp-3");
    assert_eq!(config.cluster.etcd_endpoints, ["https://192.168.100.10:2379", "https://192.168.100.13:2379"]);
    let flags = etcd_flags(&config);
    let initial = flags.iter().find(|f| f.starts_with("--initial-cluster=")).unwrap();
    assert_eq!(
        initial,
        "--initial-cluster=demo-cp-1=https://192.168.100.10:2380,demo-cp-2=https://192.168.100.13:2380,\
         demo-cp-3=https://192.168.100.14:2380"
    );
    let names: Vec<(String, String)> = kelsonconfig_nodes(&dir, "kelsonconfig");
    assert!(names.iter().any(|(name, _)| name == "demo-cp-3"), "{names:?}");
}

#[test]
fn a_control_plane_node_without_the_folders_etcd_ca_is_refused_and_nothing_written() {
    let (_tmp, dir) = cluster(&spec());
    fs::remove_file(dir.join("pki/etcd/ca.key")).unwrap();
    let (err, text) = refused(&dir, &control_plane("demo-cp-2"));
    assert!(matches!(err, GenNodeError::ControlPlanePki(..)), "{text}");
    assert!(text.contains("pki/etcd/ca.key"), "{text}");
}

#[test]
fn a_change_already_under_way_is_refused_and_its_staging_left_alone() {
    let (_tmp, dir) = cluster(&spec());
    fs::create_dir(dir.join(STAGING_DIR)).unwrap();
    let (_, text) = refused(&dir, &worker("demo-worker-3"));
    assert!(
        text.starts_with(&format!("{} exists: another `kelsonctl gen node`", dir.join(STAGING_DIR).display())),
        "{text}"
    );
}
