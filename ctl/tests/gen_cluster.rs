//! A generated 1 control-plane + 2 worker cluster, checked from the files
//! on disk: configs validate, addresses and routes add up, certificates
//! chain to the CA with the right names, secrets are private, and the seed
//! images read back with fatfs and with the real mtools, fsck.fat and blkid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ipnet::Ipv4Net;
use kelson_config::{MachineConfig, Role};
use kelsonctl::gen::{cidr, generate_cluster, ClusterSpec, GeneratedCluster};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

const NODES: [&str; 3] = ["demo-cp-1", "demo-worker-1", "demo-worker-2"];

fn spec() -> ClusterSpec {
    ClusterSpec {
        name: "demo".into(),
        control_planes: 1,
        workers: 2,
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        node_cidr: "192.168.100.0/24".parse().unwrap(),
        gateway: Some("192.168.100.1".parse().unwrap()),
        pod_prefix: 24,
        mtu: 1460,
        uplink: "eth0".into(),
    }
}

fn generate() -> (tempfile::TempDir, PathBuf, GeneratedCluster) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let generated = generate_cluster(&spec(), &dir, false).unwrap();
    (tmp, dir, generated)
}

fn configs(dir: &Path) -> BTreeMap<String, MachineConfig> {
    NODES
        .iter()
        .map(|node| {
            let path = dir.join("nodes").join(node).join("machine-config.yaml");
            let text = fs::read_to_string(&path).unwrap();
            let config = kelson_config::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
            ((*node).to_owned(), config)
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// DER of the single certificate in `pem` (owned, to parse from).
fn pem_der(pem: &str) -> Vec<u8> {
    let mut blocks = Pem::iter_from_buffer(pem.as_bytes());
    let block = blocks.next().expect("one PEM block").unwrap();
    assert!(blocks.next().is_none(), "more than one PEM block");
    assert_eq!(block.label, "CERTIFICATE");
    block.contents
}

fn with_cert<R>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
    let der = pem_der(pem);
    let (rest, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(rest.is_empty());
    f(&cert)
}

fn sans(cert: &X509Certificate<'_>) -> BTreeSet<String> {
    let Some(ext) = cert.subject_alternative_name().unwrap() else { return BTreeSet::new() };
    ext.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => (*dns).to_owned(),
            GeneralName::IPAddress(bytes) => {
                let octets: [u8; 4] = (*bytes).try_into().expect("IPv4 SAN");
                std::net::Ipv4Addr::from(octets).to_string()
            }
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

fn organisation(cert: &X509Certificate<'_>) -> String {
    cert.subject().iter_organization().map(|o| o.as_str().unwrap().to_owned()).collect::<Vec<_>>().join(",")
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject().iter_common_name().map(|o| o.as_str().unwrap().to_owned()).collect::<Vec<_>>().join(",")
}

/// (serverAuth, clientAuth)
fn usages(cert: &X509Certificate<'_>) -> (bool, bool) {
    let eku = cert.extended_key_usage().unwrap().expect("an extended key usage").value;
    (eku.server_auth, eku.client_auth)
}

/// Checks `cert_pem` is signed by the CA, is no CA itself, and that
/// `key_pem` is its key.
fn assert_issued_by_ca(ca_pem: &str, cert_pem: &str, key_pem: &str) {
    let ca_der = pem_der(ca_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    with_cert(cert_pem, |cert| {
        cert.verify_signature(Some(ca.public_key())).expect("signed by the cluster CA");
        assert_eq!(cert.issuer(), ca.subject());
        assert!(!cert.is_ca());
        assert!(cert.validity().is_valid());
        let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
        assert_eq!(key.public_key_raw(), &*cert.public_key().subject_public_key.data, "key does not match certificate");
    });
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
fn node_certificates_chain_to_the_ca_with_the_nodes_names() {
    let (_tmp, dir, _) = generate();
    let ca_pem = fs::read_to_string(dir.join("pki/ca.crt")).unwrap();
    with_cert(&ca_pem, |ca| {
        assert!(ca.is_ca());
        ca.verify_signature(None).expect("self-signed CA");
    });
    for (node, config) in configs(&dir) {
        assert_eq!(config.pki.ca.as_deref(), Some(ca_pem.as_str()));
        let address = config.network.uplinks[0].addresses[0].split('/').next().unwrap().to_owned();
        let names: BTreeSet<&str> = config.pki.certificates.keys().map(String::as_str).collect();
        if node == "demo-cp-1" {
            assert_eq!(names, BTreeSet::from(["etcd-client", "etcd-peer", "etcd-server", "management-api"]));
        } else {
            assert_eq!(names, BTreeSet::from(["management-api"]));
        }
        for (name, pair) in &config.pki.certificates {
            assert_issued_by_ca(&ca_pem, &pair.cert, pair.key.expose());
            // The config carries the same pair as the files in pki/.
            let stem = if name == "etcd-client" {
                dir.join("pki/etcd-client")
            } else {
                dir.join("pki").join(&node).join(name)
            };
            assert_eq!(fs::read_to_string(stem.with_extension("crt")).unwrap(), pair.cert, "{node} {name}");
            assert_eq!(fs::read_to_string(stem.with_extension("key")).unwrap(), pair.key.expose(), "{node} {name}");
            with_cert(&pair.cert, |cert| {
                let expected: BTreeSet<String> = match name.as_str() {
                    "etcd-server" | "etcd-peer" => {
                        assert_eq!(usages(cert), (true, true));
                        [node.clone(), address.clone(), "127.0.0.1".into(), "localhost".into()].into()
                    }
                    "management-api" => {
                        assert_eq!(usages(cert), (true, false));
                        [node.clone(), address.clone()].into()
                    }
                    "etcd-client" => {
                        assert_eq!(usages(cert), (false, true));
                        assert_eq!(organisation(cert), "kelson:etcd-client");
                        BTreeSet::new()
                    }
                    other => panic!("unexpected certificate {other}"),
                };
                assert_eq!(sans(cert), expected, "{node} {name} SANs");
                if name != "etcd-client" {
                    assert_eq!(common_name(cert), node);
                }
            });
        }
    }
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
                Some("key") | Some("img") => 0o600,
                Some("crt") => 0o644,
                _ if name == "machine-config.yaml" => 0o600,
                _ if name == "cluster.yaml" => 0o644,
                _ => panic!("unexpected file {}", path.display()),
            };
            assert_eq!(mode(&path), expected, "{}", path.display());
            keys += usize::from(name.ends_with(".key"));
            certs += usize::from(name.ends_with(".crt"));
        }
    }
    // CA, 3 clients, cp-1: etcd-server, etcd-peer, management-api; 2 workers: management-api.
    assert_eq!((keys, certs), (9, 9));
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
        assert!(text.contains("kelson:admin") && text.contains("kelson:read-only"), "{text}");
    }
    assert!(summary.contains("podCIDR: 10.244.2.0/24"), "{summary}");
    assert!(summary.contains("address: \"192.168.100.12\""), "{summary}");
}

fn read_fat_file(fs: &fatfs::FileSystem<fs::File>, name: &str) -> String {
    let mut text = String::new();
    fs.root_dir().open_file(name).unwrap().read_to_string(&mut text).unwrap();
    text
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
