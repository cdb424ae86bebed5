//! Helpers the generator's integration tests share: the cluster they
//! generate, reading a node's files back, and checking certificates with
//! x509-parser. Each test file uses a subset, hence the allow.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use kelson_config::MachineConfig;
use kelsonctl::gen::ClusterSpec;
use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// One control-plane node and two workers, with a gateway.
pub fn spec() -> ClusterSpec {
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

/// A node's machine config as written, parsed and validated as the node would.
pub fn read_config(dir: &Path, node: &str) -> MachineConfig {
    let path = dir.join("nodes").join(node).join("machine-config.yaml");
    let text = fs::read_to_string(&path).unwrap();
    kelson_config::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"))
}

pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// DER of the single certificate in `pem` (owned, to parse from).
pub fn pem_der(pem: &str) -> Vec<u8> {
    let mut blocks = Pem::iter_from_buffer(pem.as_bytes());
    let block = blocks.next().expect("one PEM block").unwrap();
    assert!(blocks.next().is_none(), "more than one PEM block");
    assert_eq!(block.label, "CERTIFICATE");
    block.contents
}

pub fn with_cert<R>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
    let der = pem_der(pem);
    let (rest, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(rest.is_empty());
    f(&cert)
}

pub fn sans(cert: &X509Certificate<'_>) -> BTreeSet<String> {
    let Some(ext) = cert.subject_alternative_name().unwrap() else { return BTreeSet::new() };
    ext.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => (*dns).to_owned(),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap()).to_string(),
                16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).unwrap()).to_string(),
                n => panic!("an IP SAN of {n} bytes"),
            },
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

pub fn organisation(cert: &X509Certificate<'_>) -> String {
    cert.subject().iter_organization().map(|o| o.as_str().unwrap().to_owned()).collect::<Vec<_>>().join(",")
}

pub fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject().iter_common_name().map(|o| o.as_str().unwrap().to_owned()).collect::<Vec<_>>().join(",")
}

/// (serverAuth, clientAuth)
pub fn usages(cert: &X509Certificate<'_>) -> (bool, bool) {
    let eku = cert.extended_key_usage().unwrap().expect("an extended key usage").value;
    (eku.server_auth, eku.client_auth)
}

/// Checks `cert_pem` is signed by the CA, is no CA itself, and that
/// `key_pem` is its key.
pub fn assert_issued_by_ca(ca_pem: &str, cert_pem: &str, key_pem: &str) {
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

/// Whether `text` (a YAML document, where a PEM block is indented) holds
/// the PEM block `pem`: every base64 line of it, each random.
pub fn holds_pem(text: &str, pem: &str) -> bool {
    pem.lines().filter(|line| !line.starts_with("-----")).all(|line| text.contains(line))
}

pub fn read_fat_file(fs: &fatfs::FileSystem<fs::File>, name: &str) -> String {
    let mut text = String::new();
    fs.root_dir().open_file(name).unwrap().read_to_string(&mut text).unwrap();
    text
}
