//! etcd membership managed by PID 1 on a control-plane node.
//!
//! **Joining** (`cluster.etcdJoin`, set by `kelsonctl gen node --role
//! control-plane`). A member joining a running etcd must be added to the
//! cluster before its etcd first starts, and must start with the
//! `--initial-cluster` the cluster answered. So, before the pods stage
//! starts the static pods, [`prepare`] looks at the node's etcd manifest:
//! - its data directory holds a write-ahead log (`member/wal`): the node is
//!   a member already and nothing is done;
//! - else the manifest is moved aside ([`HELD_MANIFEST`], on /run) so the
//!   pod manager does not start etcd yet, and [`Joiner::run`] then, in the
//!   background, adds the node as a learner through `cluster.etcdEndpoints`
//!   (retrying with back-off while they cannot be reached, saying why on
//!   the console and in the node status), writes the manifest back with
//!   etcd's `--initial-cluster` (atomically: the pod manager then starts
//!   etcd) and promotes the learner once it is in sync.
//!
//! The manifest is changed only after etcd accepted the learner. It is on
//! /etc, which every boot writes afresh from the machine config, so a boot
//! that goes down half way starts again from the same point; the learner an
//! earlier boot added is found and reused ([`kelson_etcd::EtcdClient::join_as_learner`]).
//!
//! The WAL, not `member/`, says a member has data: etcd makes
//! `member/snap` before it checks it may join, so a failed first start
//! leaves `member/` behind with nothing in it.
//!
//! **Leaving** ([`leave`]): a reset removes the node's member through the
//! other members before the node wipes its state.
//!
//! **Watching** ([`watch_members`]): the members' health, for the status.

use crate::boot::chain;
use crate::kernel::Kernel;
use crate::status::{EtcdJoin, EtcdMemberHealth, StatusPublisher};
use kelson_base::paths::MANIFEST_DIR;
use kelson_config::{MachineConfig, ETCD_STATIC_POD};
use kelson_etcd::{EtcdClient, EtcdEndpoint, EtcdError, JoinedAs, MemberId, Retry};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Where a joining node's etcd manifest waits until its member is added.
pub const HELD_MANIFEST: &str = "/run/kelson/etcd-join/etcd.yaml";
/// kubeadm's certificate directory, where apply-config writes the etcd CA
/// and the API server's etcd client pair.
pub const PKI_DIR: &str = "/etc/kubernetes/pki";

/// The files the join reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPaths {
    /// The etcd static pod's manifest, in the directory the pod manager watches.
    pub manifest: PathBuf,
    pub held: PathBuf,
    pub pki_dir: PathBuf,
}

impl Default for JoinPaths {
    fn default() -> Self {
        JoinPaths {
            manifest: Path::new(MANIFEST_DIR).join(ETCD_STATIC_POD),
            held: PathBuf::from(HELD_MANIFEST),
            pki_dir: PathBuf::from(PKI_DIR),
        }
    }
}

/// How patient the join is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// The first wait after a failed attempt; it doubles up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Each request to etcd.
    pub request_timeout: Duration,
    /// Within one attempt: how long to keep asking while etcd refuses for a
    /// reason that passes (a cluster that would be unhealthy, a learner not
    /// yet in sync).
    pub within_attempt: Retry,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            first_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            request_timeout: kelson_etcd::DEFAULT_REQUEST_TIMEOUT,
            within_attempt: Retry::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("reading the etcd manifest {}", path.display())]
    ReadManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the etcd manifest {}", path.display())]
    ParseManifest {
        path: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("the etcd manifest {} has no container named etcd with a command", path.display())]
    NoEtcdContainer { path: PathBuf },
    #[error("the etcd manifest {} has no {flag}=… in the etcd container's command or args", path.display())]
    MissingFlag { path: PathBuf, flag: &'static str },
    #[error(
        "the etcd manifest {} says --initial-cluster-state={state}: a member joining a running cluster must \
         start with existing (cluster.etcdJoin is set)",
        path.display()
    )]
    NotExisting { path: PathBuf, state: String },
    #[error("reading {} (etcd's CA or the client pair the join authenticates with)", path.display())]
    ReadPki {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("moving the etcd manifest {} aside to {} until the member is added", from.display(), to.display())]
    Hold {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rendering the etcd manifest for {}", path.display())]
    Render {
        path: PathBuf,
        #[source]
        source: serde_saphyr::SerializeError,
    },
    #[error("writing the etcd manifest {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`prepare`] found.
#[derive(Debug)]
pub enum Prepared {
    /// `cluster.etcdJoin` is off.
    NotJoining,
    /// The member's write-ahead log is there: it is in the cluster already.
    AlreadyMember { wal: PathBuf },
    /// The manifest is held back; run the joiner.
    Join(Box<Joiner>),
}

/// The etcd flags the join reads, from the manifest etcd runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdFlags {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub data_dir: PathBuf,
    pub initial_cluster_state: Option<String>,
}

/// The etcd container's `command` and `args` (kubeadm puts every flag in
/// `command`), as `--flag=value` strings.
fn etcd_container_arguments(manifest: &Value) -> Option<Vec<&str>> {
    let containers = manifest.get("spec")?.get("containers")?.as_array()?;
    let etcd = containers.iter().find(|c| c.get("name").and_then(Value::as_str) == Some("etcd"))?;
    let mut arguments = Vec::new();
    for field in ["command", "args"] {
        if let Some(list) = etcd.get(field).and_then(Value::as_array) {
            arguments.extend(list.iter().filter_map(Value::as_str));
        }
    }
    Some(arguments)
}

fn flag<'a>(arguments: &[&'a str], name: &str) -> Option<&'a str> {
    arguments.iter().rev().find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
}

/// Reads the flags the join needs from a parsed manifest.
pub fn etcd_flags(manifest: &Value, path: &Path) -> Result<EtcdFlags, JoinError> {
    let arguments = etcd_container_arguments(manifest).ok_or(JoinError::NoEtcdContainer { path: path.to_owned() })?;
    let required =
        |name: &'static str| flag(&arguments, name).ok_or(JoinError::MissingFlag { path: path.to_owned(), flag: name });
    required("--initial-cluster")?;
    Ok(EtcdFlags {
        name: required("--name")?.to_owned(),
        peer_urls: required("--initial-advertise-peer-urls")?.split(',').map(str::to_owned).collect(),
        data_dir: PathBuf::from(required("--data-dir")?),
        initial_cluster_state: flag(&arguments, "--initial-cluster-state").map(str::to_owned),
    })
}

/// The manifest with the etcd container's `--initial-cluster` set to
/// `initial_cluster`, everything else as it was.
pub fn with_initial_cluster(manifest: &Value, initial_cluster: &str) -> Value {
    let mut manifest = manifest.clone();
    let replacement = format!("--initial-cluster={initial_cluster}");
    let containers = manifest.get_mut("spec").and_then(|s| s.get_mut("containers")).and_then(Value::as_array_mut);
    for container in containers.into_iter().flatten() {
        if container.get("name").and_then(Value::as_str) != Some("etcd") {
            continue;
        }
        for field in ["command", "args"] {
            let Some(list) = container.get_mut(field).and_then(Value::as_array_mut) else { continue };
            for argument in list.iter_mut() {
                if argument.as_str().is_some_and(|a| a.starts_with("--initial-cluster=")) {
                    *argument = Value::String(replacement.clone());
                }
            }
        }
    }
    manifest
}

/// Decides whether this boot joins etcd and, if it does, holds the etcd
/// manifest back. Everything is read before the manifest is moved; any
/// error leaves it where it was.
pub fn prepare(kernel: &dyn Kernel, config: &MachineConfig, paths: &JoinPaths) -> Result<Prepared, JoinError> {
    if !config.cluster.etcd_join {
        return Ok(Prepared::NotJoining);
    }
    let path = &paths.manifest;
    let text = kernel.read_file(path).map_err(|source| JoinError::ReadManifest { path: path.clone(), source })?;
    let manifest: Value = serde_saphyr::from_slice(&text)
        .map_err(|source| JoinError::ParseManifest { path: path.clone(), source: Box::new(source) })?;
    let flags = etcd_flags(&manifest, path)?;
    let wal = flags.data_dir.join("member/wal");
    if kernel.exists(&wal) {
        return Ok(Prepared::AlreadyMember { wal });
    }
    if flags.initial_cluster_state.as_deref() != Some("existing") {
        let state = flags.initial_cluster_state.unwrap_or_else(|| "new (etcd's default)".to_owned());
        return Err(JoinError::NotExisting { path: path.clone(), state });
    }
    let read_pki = |name: &str| {
        let file = paths.pki_dir.join(name);
        kernel
            .read_file(&file)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|source| JoinError::ReadPki { path: file, source })
    };
    let endpoint = EtcdEndpoint {
        endpoints: config.cluster.etcd_endpoints.clone(),
        ca_pem: read_pki(kelson_etcd::ETCD_CA_FILE)?,
        cert_pem: read_pki(kelson_etcd::CLIENT_CERT_FILE)?,
        key_pem: read_pki(kelson_etcd::CLIENT_KEY_FILE)?,
    };
    // Copied, then removed, not renamed: /run and /etc are not one
    // filesystem. The copy is written whole first, so the manifest is
    // never lost; a failed removal leaves the manifest where it was.
    let hold_error = |source| JoinError::Hold { from: path.clone(), to: paths.held.clone(), source };
    kernel.install_file(&paths.held, &text, 0o644).map_err(hold_error)?;
    kernel.remove_file(path).map_err(hold_error)?;
    Ok(Prepared::Join(Box::new(Joiner { flags, manifest, endpoint, paths: paths.clone() })))
}

/// A join under way: the manifest is held back.
#[derive(Debug)]
pub struct Joiner {
    pub flags: EtcdFlags,
    manifest: Value,
    endpoint: EtcdEndpoint,
    paths: JoinPaths,
}

/// What [`Joiner::run`] ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub id: MemberId,
    pub how: JoinedAs,
    pub initial_cluster: String,
}

impl Joiner {
    /// Adds the member, starts its etcd, promotes it; each step retried
    /// with back-off until it succeeds. Never ends otherwise: the node
    /// stays up, saying why, while the members cannot be reached.
    pub async fn run(self, kernel: Arc<dyn Kernel + Send + Sync>, status: StatusPublisher, pace: Pace) -> Joined {
        let name = self.flags.name.clone();
        let through = self.endpoint.endpoints.join(",");
        let mut backoff = Backoff::new(pace);
        info!("etcd join: adding {name} as a learner through {through}; its etcd waits until then");
        status.update_etcd(|e| e.join = Some(EtcdJoin::Adding { attempts: 0, last_error: None }));
        let (client, added, how) = loop {
            let attempt = async {
                let client = EtcdClient::connect_with_timeout(&self.endpoint, pace.request_timeout).await?;
                let (added, how) = client.join_as_learner(&name, &self.flags.peer_urls, pace.within_attempt).await?;
                Ok::<_, EtcdError>((client, added, how))
            };
            match attempt.await {
                Ok(done) => break done,
                Err(e) => {
                    let why = format!("adding {name} as an etcd learner through {through}: {}", chain(&e));
                    let attempts = backoff.attempts + 1;
                    status.update_etcd(|v| v.join = Some(EtcdJoin::Adding { attempts, last_error: Some(why.clone()) }));
                    backoff.wait(&why).await;
                }
            }
        };
        let id = added.id;
        let how_said = match how {
            JoinedAs::Added => "added".to_owned(),
            JoinedAs::ReusedLearner => "found as added by an earlier boot".to_owned(),
            JoinedAs::ReplacedVoter { stale } => format!("added after removing {stale}, the voter whose data is gone"),
        };
        info!(
            "etcd join: {name} is learner {id} ({how_said}); starting its etcd with --initial-cluster={}",
            added.initial_cluster
        );
        status.update_etcd(|v| v.join = Some(EtcdJoin::Learner { id: id.to_string(), attempts: 0, last_error: None }));

        let mut backoff = Backoff::new(pace);
        while let Err(e) = self.release(kernel.clone(), &added.initial_cluster).await {
            let why = format!("starting etcd learner {id}: {}", chain(&e));
            let attempts = backoff.attempts + 1;
            status.update_etcd(|v| {
                v.join = Some(EtcdJoin::Learner { id: id.to_string(), attempts, last_error: Some(why.clone()) })
            });
            backoff.wait(&why).await;
        }

        let mut backoff = Backoff::new(pace);
        while let Err(e) = client.promote(id, pace.within_attempt).await {
            let why = format!("promoting etcd learner {id} ({name}) through {through}: {}", chain(&e));
            let attempts = backoff.attempts + 1;
            status.update_etcd(|v| {
                v.join = Some(EtcdJoin::Learner { id: id.to_string(), attempts, last_error: Some(why.clone()) })
            });
            backoff.wait(&why).await;
        }
        info!("etcd join: {name} ({id}) is a voting member");
        status.update_etcd(|v| v.join = Some(EtcdJoin::Member { id: id.to_string() }));
        Joined { id, how, initial_cluster: added.initial_cluster }
    }

    /// Writes the manifest with etcd's `--initial-cluster` where the pod
    /// manager watches (atomically: it never sees half a file), then drops
    /// the held copy.
    async fn release(&self, kernel: Arc<dyn Kernel + Send + Sync>, initial_cluster: &str) -> Result<(), JoinError> {
        let path = self.paths.manifest.clone();
        let text = serde_saphyr::to_string(&with_initial_cluster(&self.manifest, initial_cluster))
            .map_err(|source| JoinError::Render { path: path.clone(), source })?;
        let held = self.paths.held.clone();
        let written = tokio::task::spawn_blocking(move || {
            kernel.install_file(&path, text.as_bytes(), 0o644).map_err(|source| JoinError::Write { path, source })?;
            if let Err(e) = kernel.remove_file(&held) {
                warn!("etcd join: the held manifest {} stays: {e}", held.display());
            }
            Ok(())
        })
        .await;
        match written {
            Ok(result) => result,
            Err(e) => Err(JoinError::Write {
                path: self.paths.manifest.clone(),
                source: std::io::Error::other(format!("the task writing it died: {e}")),
            }),
        }
    }
}

/// Waits between attempts, doubling, and says why on the console.
struct Backoff {
    pace: Pace,
    next: Duration,
    attempts: u32,
}

impl Backoff {
    fn new(pace: Pace) -> Self {
        Backoff { pace, next: pace.first_backoff, attempts: 0 }
    }

    async fn wait(&mut self, why: &str) {
        self.attempts += 1;
        warn!(attempt = self.attempts, retry_in_ms = self.next.as_millis() as u64, "etcd join: {why}");
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.pace.max_backoff);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    #[error("reading the etcd manifest {}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: Box<JoinError>,
    },
    #[error("listing the etcd members to find {name}'s")]
    List {
        name: String,
        #[source]
        source: EtcdError,
    },
    #[error("removing etcd member {id} ({name}) through the other members {through}")]
    Remove {
        id: MemberId,
        name: String,
        through: String,
        #[source]
        source: EtcdError,
    },
}

/// What [`leave`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// Removed this member.
    Removed { id: MemberId },
    /// No member has this node's peer URLs: nothing to remove.
    NotAMember,
    /// It is the only member: the cluster ends with it.
    LastMember { id: MemberId },
}

/// Removes this node's etcd member through the other members, asking them
/// again while etcd says the cluster would be unhealthy (up to `retry`).
/// The member is found by the peer URLs of the node's etcd manifest, among
/// the members `endpoint` lists (the node's own etcd and
/// `cluster.etcdEndpoints`).
pub async fn leave(
    manifest: &Path,
    manifest_text: &[u8],
    endpoint: EtcdEndpoint,
    retry: Retry,
    timeout: Duration,
) -> Result<Left, LeaveError> {
    let manifest_error = |source| LeaveError::Manifest { path: manifest.to_owned(), source: Box::new(source) };
    let parsed: Value = serde_saphyr::from_slice(manifest_text).map_err(|source| {
        manifest_error(JoinError::ParseManifest { path: manifest.to_owned(), source: Box::new(source) })
    })?;
    let flags = etcd_flags(&parsed, manifest).map_err(manifest_error)?;
    let list_error = |source| LeaveError::List { name: flags.name.clone(), source };
    let members = list_members(&endpoint, timeout).await.map_err(list_error)?;
    let Some(me) = members.iter().find(|m| m.peer_urls.iter().any(|u| flags.peer_urls.contains(u))) else {
        return Ok(Left::NotAMember);
    };
    let others: Vec<String> =
        members.iter().filter(|m| m.id != me.id).flat_map(|m| m.client_urls.iter().cloned()).collect();
    if others.is_empty() {
        return Ok(Left::LastMember { id: me.id });
    }
    let remove_error =
        |source| LeaveError::Remove { id: me.id, name: flags.name.clone(), through: others.join(","), source };
    let through = EtcdClient::connect_with_timeout(&endpoint.with_endpoints(others.clone()), timeout)
        .await
        .map_err(remove_error)?;
    through.remove(me.id, retry).await.map_err(remove_error)?;
    Ok(Left::Removed { id: me.id })
}

/// The members as the first of `endpoint`'s URLs that answers lists them,
/// asked one at a time: a member still a learner refuses to list ("rpc not
/// supported for learner"), and one that is down would only time out; the
/// last refusal if none answers.
async fn list_members(endpoint: &EtcdEndpoint, timeout: Duration) -> Result<Vec<kelson_etcd::Member>, EtcdError> {
    let mut last = None;
    for url in &endpoint.endpoints {
        let one = endpoint.with_endpoints(vec![url.clone()]);
        let listed = match EtcdClient::connect_with_timeout(&one, timeout).await {
            Ok(client) => client.members().await,
            Err(e) => Err(e),
        };
        match listed {
            Ok(members) => return Ok(members),
            Err(e) => last = Some(e),
        }
    }
    // An empty list of URLs still gets an answer naming them.
    match last {
        Some(e) => Err(e),
        None => EtcdClient::connect_with_timeout(endpoint, timeout).await?.members().await,
    }
}

/// Checks every member's health through the node's own etcd every
/// `interval`, for the node status, until dropped.
pub async fn watch_members(endpoint: EtcdEndpoint, status: StatusPublisher, interval: Duration) {
    loop {
        let checked = async {
            let client = EtcdClient::connect(&endpoint).await?;
            client.member_health().await
        }
        .await;
        status.update_etcd(|v| match checked {
            Ok(members) => {
                v.members = members.into_iter().map(EtcdMemberHealth::from).collect();
                v.members_error = None;
            }
            Err(e) => v.members_error = Some(chain(&e)),
        });
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\n  namespace: kube-system\nspec:\n  containers:\n  - name: etcd\n    image: registry.k8s.io/etcd:3.5.16-0\n    command:\n    - etcd\n    - --data-dir=/var/lib/etcd\n    - --initial-advertise-peer-urls=https://10.0.0.2:2380\n    - --initial-cluster=cp-1=https://10.0.0.1:2380,cp-2=https://10.0.0.2:2380\n    - --initial-cluster-state=existing\n    - --name=cp-2\n  hostNetwork: true\n";

    fn joining_config() -> MachineConfig {
        let text = "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  role: control-plane\ncluster:\n  etcdJoin: true\n  etcdEndpoints: [https://10.0.0.1:2379]\nstaticPods:\n  - name: etcd.yaml\n    manifest: x\n";
        kelson_config::parse("test", text).expect("test config parses")
    }

    fn kernel_with(manifest: &str) -> FakeKernel {
        FakeKernel::default()
            .with_file("/etc/kubernetes/manifests/etcd.yaml", manifest)
            .with_file("/etc/kubernetes/pki/etcd/ca.crt", "CA")
            .with_file("/etc/kubernetes/pki/apiserver-etcd-client.crt", "CERT")
            .with_file("/etc/kubernetes/pki/apiserver-etcd-client.key", "KEY")
    }

    #[test]
    fn a_joining_node_without_data_holds_its_manifest_back_with_everything_read() {
        let kernel = kernel_with(MANIFEST);

        let prepared = prepare(&kernel, &joining_config(), &JoinPaths::default()).unwrap();

        let Prepared::Join(joiner) = prepared else { panic!("{prepared:?}") };
        assert_eq!(joiner.flags.name, "cp-2");
        assert_eq!(joiner.flags.peer_urls, ["https://10.0.0.2:2380"]);
        assert_eq!(joiner.endpoint.endpoints, ["https://10.0.0.1:2379"]);
        assert_eq!((joiner.endpoint.ca_pem.as_str(), joiner.endpoint.key_pem.as_str()), ("CA", "KEY"));
        assert_eq!(kernel.file("/etc/kubernetes/manifests/etcd.yaml"), None, "the pod manager must not start it");
        assert_eq!(kernel.file(HELD_MANIFEST).as_deref(), Some(MANIFEST));
        // /run and /etc are two filesystems on a node: a rename fails (EXDEV).
        assert!(!kernel.calls().iter().any(|c| c.starts_with("rename")), "{:?}", kernel.calls());
    }

    #[test]
    fn a_member_with_a_write_ahead_log_is_left_alone() {
        let kernel = kernel_with(MANIFEST).with_file("/var/lib/etcd/member/wal", "");

        let prepared = prepare(&kernel, &joining_config(), &JoinPaths::default()).unwrap();

        assert!(matches!(prepared, Prepared::AlreadyMember { .. }), "{prepared:?}");
        assert_eq!(kernel.file("/etc/kubernetes/manifests/etcd.yaml").as_deref(), Some(MANIFEST));
        assert!(!kernel.calls().iter().any(|c| c.starts_with("rm ") || c.starts_with("install")));
    }

    #[test]
    fn a_node_that_does_not_join_is_left_alone() {
        let kernel = kernel_with(MANIFEST);
        let mut config = joining_config();
        config.cluster.etcd_join = false;

        assert!(matches!(prepare(&kernel, &config, &JoinPaths::default()), Ok(Prepared::NotJoining)));
        assert!(kernel.calls().is_empty(), "{:?}", kernel.calls());
    }

    #[test]
    fn a_manifest_founding_a_new_cluster_or_missing_pki_is_refused_and_nothing_moved() {
        let new_cluster = MANIFEST.replace("    - --initial-cluster-state=existing\n", "");
        let kernel = kernel_with(&new_cluster);
        let err = prepare(&kernel, &joining_config(), &JoinPaths::default()).unwrap_err();
        assert!(err.to_string().contains("--initial-cluster-state=new (etcd's default)"), "{err}");

        let kernel = FakeKernel::default().with_file("/etc/kubernetes/manifests/etcd.yaml", MANIFEST);
        let err = prepare(&kernel, &joining_config(), &JoinPaths::default()).unwrap_err();
        assert!(err.to_string().contains("/etc/kubernetes/pki/etcd/ca.crt"), "{err}");
        assert_eq!(kernel.file("/etc/kubernetes/manifests/etcd.yaml").as_deref(), Some(MANIFEST));
    }

    #[test]
    fn a_manifest_without_the_flags_names_the_missing_one() {
        let kernel = kernel_with(&MANIFEST.replace("    - --name=cp-2\n", ""));
        let err = prepare(&kernel, &joining_config(), &JoinPaths::default()).unwrap_err();
        assert!(matches!(err, JoinError::MissingFlag { flag: "--name", .. }), "{err}");
    }

    #[test]
    fn the_rewritten_manifest_changes_only_the_initial_cluster() {
        let manifest: Value = serde_saphyr::from_str(MANIFEST).unwrap();

        let rewritten = with_initial_cluster(&manifest, "a=https://x:2380,cp-2=https://10.0.0.2:2380");

        let before = etcd_container_arguments(&manifest).unwrap();
        let after = etcd_container_arguments(&rewritten).unwrap();
        let changed: Vec<(&&str, &&str)> = before.iter().zip(after.iter()).filter(|(b, a)| b != a).collect();
        assert_eq!(
            changed,
            [(
                &"--initial-cluster=cp-1=https://10.0.0.1:2380,cp-2=https://10.0.0.2:2380",
                &"--initial-cluster=a=https://x:2380,cp-2=https://10.0.0.2:2380"
            )]
        );
        assert_eq!(rewritten["spec"]["hostNetwork"], true);
    }
}
