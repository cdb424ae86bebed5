//! Real etcd processes on 127.0.0.1 for the tests: a throw-away CA, members
//! started with client and peer certificate auth, each killed by its handle
//! when dropped.

use kelson_etcd::EtcdEndpoint;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// etcd (3.4, 3.5) logs this once it serves clients ("… securely" with TLS).
const READY_LINE: &str = "serving client traffic";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A CA, and the certificate every member serves and peers with.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = name("etcd-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Self { dir: tempfile::tempdir().unwrap(), ca };
        std::fs::write(pki.ca_path(), pki.ca_pem()).unwrap();
        let member =
            pki.issue("etcd-member", vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]);
        std::fs::write(pki.dir.path().join("member.crt"), &member.cert_pem).unwrap();
        std::fs::write(pki.dir.path().join("member.key"), &member.key_pem).unwrap();
        pki
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A certificate for 127.0.0.1 and localhost with these extended usages.
    pub fn issue(&self, common_name: &str, usages: Vec<ExtendedKeyUsagePurpose>) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A client's view of `client_url`, with a client certificate of this CA.
    pub fn endpoint(&self, client_url: &str) -> EtcdEndpoint {
        let client = self.issue("kube-apiserver-etcd-client", vec![ExtendedKeyUsagePurpose::ClientAuth]);
        EtcdEndpoint {
            endpoints: vec![client_url.to_owned()],
            ca_pem: self.ca_pem(),
            cert_pem: client.cert_pem,
            key_pem: client.key_pem,
        }
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A free port on 127.0.0.1. Another process could take it before etcd binds
/// it; etcd then fails to start and says so in its log.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// The URLs a member will listen on, chosen before it starts so that a
/// learner can be added under its peer URL first.
pub struct MemberUrls {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
}

impl MemberUrls {
    pub fn pick(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            client_url: format!("https://127.0.0.1:{}", free_port()),
            peer_url: format!("https://127.0.0.1:{}", free_port()),
        }
    }
}

/// How a member starts: founding a cluster or joining one.
pub enum Join<'a> {
    New,
    Existing { initial_cluster: &'a str },
}

/// A running etcd, killed and reaped on drop.
pub struct EtcdMember {
    pub urls: MemberUrls,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    _data: tempfile::TempDir,
}

/// A program the tests need, from PATH; failing (not skipping) when absent.
pub fn program(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|path| path.is_file()));
    match found.flatten() {
        Some(path) => path,
        None => panic!(
            "these tests run the real {name} and none is on PATH: install Debian's {package} (cargo xtask installs it)"
        ),
    }
}

impl EtcdMember {
    pub fn start(pki: &Pki, urls: MemberUrls, join: Join<'_>) -> Self {
        let data = tempfile::tempdir().unwrap();
        let dir = pki.dir.path();
        let (initial_cluster, state) = match join {
            Join::New => (format!("{}={}", urls.name, urls.peer_url), "new"),
            Join::Existing { initial_cluster } => (initial_cluster.to_owned(), "existing"),
        };
        let mut child = Command::new(program("etcd", "etcd-server"))
            .arg(format!("--name={}", urls.name))
            .arg(format!("--data-dir={}", data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={}", urls.client_url))
            .arg(format!("--advertise-client-urls={}", urls.client_url))
            .arg(format!("--listen-peer-urls={}", urls.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", urls.peer_url))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--cert-file={}", dir.join("member.crt").display()))
            .arg(format!("--key-file={}", dir.join("member.key").display()))
            .arg("--client-cert-auth")
            .arg(format!("--trusted-ca-file={}", pki.ca_path().display()))
            .arg(format!("--peer-cert-file={}", dir.join("member.crt").display()))
            .arg(format!("--peer-key-file={}", dir.join("member.key").display()))
            .arg("--peer-client-cert-auth")
            .arg(format!("--peer-trusted-ca-file={}", pki.ca_path().display()))
            .args(["--logger=zap", "--log-outputs=stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();

        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(READY_LINE) {
                    let _ = ready_tx.send(());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut member = Self { urls, child, log, _data: data };
        if ready_rx.recv_timeout(START_TIMEOUT).is_err() {
            panic!(
                "etcd {} did not report '{READY_LINE}' within {START_TIMEOUT:?} (exited: {:?}); its log:\n{}",
                member.urls.name,
                member.child.try_wait(),
                member.log_text()
            );
        }
        member
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
