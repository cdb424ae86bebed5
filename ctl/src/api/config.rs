//! The kelsonconfig file: which cluster CA to trust, which client
//! certificate to present, and the nodes by name and endpoint. `gen
//! cluster` writes one per client role; the verbs read one, chosen by
//! [`choose_config`], and aim at the nodes [`select_nodes`] picks.

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The file name `gen cluster` writes (admin) and the verbs look for in
/// the working directory.
pub const DEFAULT_FILE: &str = "kelsonconfig";
/// The read-only client's file beside it.
pub const READ_ONLY_FILE: &str = "kelsonconfig-read-only";
/// The environment variable naming the file.
pub const ENV_VAR: &str = "KELSONCONFIG";

/// A kelsonconfig. Holds a private key: its `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KelsonConfig {
    /// The cluster's name, for people.
    pub cluster: String,
    /// The cluster CA's certificate (PEM): the only CA a node's certificate
    /// may chain to.
    pub ca: String,
    pub client: ClientIdentity,
    /// Control-plane nodes first, in `gen cluster`'s order; the first one is
    /// the default target.
    pub nodes: Vec<NodeEntry>,
}

/// The client certificate presented to nodes; its O is the role.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientIdentity {
    /// The certificate's CN, for people.
    pub name: String,
    /// PEM.
    pub certificate: String,
    /// PEM; a secret.
    pub key: String,
}

/// A node: its name, which its management API certificate carries and which
/// is what the server is verified by, and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeEntry {
    pub name: String,
    /// `HOST:PORT`.
    pub endpoint: String,
}

impl std::fmt::Debug for KelsonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KelsonConfig")
            .field("cluster", &self.cluster)
            .field("client", &self.client.name)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").field("name", &self.name).field("key", &"<secret>").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading kelsonconfig {path} (chosen by {chosen_by})")]
    Read {
        path: PathBuf,
        chosen_by: ChosenBy,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing kelsonconfig {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("kelsonconfig {0} lists no nodes")]
    NoNodes(PathBuf),
    #[error(
        "no kelsonconfig found: tried --kelsonconfig (not given), ${ENV_VAR} (not set), ./{DEFAULT_FILE} (not there); \
         `kelsonctl gen cluster` writes one into its output directory"
    )]
    NotFound,
}

impl KelsonConfig {
    /// The file's text: YAML, PEM blocks as literal blocks.
    pub fn to_yaml(&self) -> Result<String, serde_saphyr::SerializeError> {
        let body = serde_saphyr::to_string(self)?;
        Ok(format!(
            "# Written by `kelsonctl gen cluster`: the management API's endpoints, CA and a client \
             certificate ({}). Holds a private key: keep it private.\n{body}",
            self.client.name
        ))
    }

    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, ConfigFileError> {
        let config: KelsonConfig = serde_saphyr::from_str(text)
            .map_err(|source| ConfigFileError::Parse { path: path.to_owned(), source: Box::new(source) })?;
        if config.nodes.is_empty() {
            return Err(ConfigFileError::NoNodes(path.to_owned()));
        }
        Ok(config)
    }

    /// Reads the file [`choose_config`] chose.
    pub fn load(choice: &ConfigChoice) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(&choice.path).map_err(|source| ConfigFileError::Read {
            path: choice.path.clone(),
            chosen_by: choice.chosen_by,
            source,
        })?;
        Self::from_yaml(&choice.path, &text)
    }
}

/// Where the kelsonconfig's path came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChosenBy {
    Flag,
    Env,
    WorkingDirectory,
}

impl std::fmt::Display for ChosenBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChosenBy::Flag => "--kelsonconfig",
            ChosenBy::Env => "$KELSONCONFIG",
            ChosenBy::WorkingDirectory => "the working directory",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChoice {
    pub path: PathBuf,
    pub chosen_by: ChosenBy,
}

/// `--kelsonconfig FILE`, else `$KELSONCONFIG`, else `./kelsonconfig` if it
/// exists. A file named by the flag or the variable is used even if missing
/// (reading it then says so); only the working directory's is optional.
pub fn choose_config(
    flag: Option<&Path>,
    env: Option<OsString>,
    exists: impl Fn(&Path) -> bool,
) -> Result<ConfigChoice, ConfigFileError> {
    if let Some(path) = flag {
        return Ok(ConfigChoice { path: path.to_owned(), chosen_by: ChosenBy::Flag });
    }
    if let Some(path) = env.filter(|v| !v.is_empty()) {
        return Ok(ConfigChoice { path: PathBuf::from(path), chosen_by: ChosenBy::Env });
    }
    let local = PathBuf::from(DEFAULT_FILE);
    if exists(&local) {
        return Ok(ConfigChoice { path: local, chosen_by: ChosenBy::WorkingDirectory });
    }
    Err(ConfigFileError::NotFound)
}

/// The nodes a verb is aimed at: `--nodes` as given, each entry a name
/// from the config or `NAME=HOST:PORT`; `all`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("node {name:?} is not in the kelsonconfig (it has {known}); give NAME=HOST:PORT to name an endpoint")]
    UnknownNode { name: String, known: String },
    #[error("--nodes entry {0:?} is not NAME or NAME=HOST:PORT")]
    BadEntry(String),
}

/// Picks the target nodes: none given means the config's first node;
/// `all` every node; otherwise each entry in order, duplicates dropped.
/// `NAME=HOST:PORT` overrides (or adds) an endpoint: the node is still
/// verified by NAME.
pub fn select_nodes(config: &KelsonConfig, entries: &[String]) -> Result<Vec<NodeEntry>, SelectError> {
    if entries.is_empty() {
        return Ok(config.nodes.iter().take(1).cloned().collect());
    }
    if entries.iter().any(|e| e == "all") {
        return Ok(config.nodes.clone());
    }
    let mut selected: Vec<NodeEntry> = Vec::new();
    for entry in entries {
        let node = match entry.split_once('=') {
            Some((name, endpoint)) => {
                let valid = !name.is_empty()
                    && endpoint
                        .rsplit_once(':')
                        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !valid {
                    return Err(SelectError::BadEntry(entry.clone()));
                }
                NodeEntry { name: name.to_owned(), endpoint: endpoint.to_owned() }
            }
            None if entry.is_empty() => return Err(SelectError::BadEntry(entry.clone())),
            None => match config.nodes.iter().find(|n| n.name == *entry) {
                Some(node) => node.clone(),
                None => {
                    let known = config.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ");
                    return Err(SelectError::UnknownNode { name: entry.clone(), known });
                }
            },
        };
        if !selected.iter().any(|n| n.name == node.name) {
            selected.push(node);
        }
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KelsonConfig {
        KelsonConfig {
            cluster: "demo".into(),
            ca: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            client: ClientIdentity {
                name: "admin".into(),
                certificate: "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n".into(),
                key: "-----BEGIN PRIVATE KEY-----\nCCCC\n-----END PRIVATE KEY-----\n".into(),
            },
            nodes: vec![
                NodeEntry { name: "demo-cp-1".into(), endpoint: "192.168.100.10:50000".into() },
                NodeEntry { name: "demo-worker-1".into(), endpoint: "192.168.100.11:50000".into() },
            ],
        }
    }

    fn entries(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn names(nodes: &[NodeEntry]) -> Vec<&str> {
        nodes.iter().map(|n| n.name.as_str()).collect()
    }

    #[test]
    fn a_config_reads_back_as_written_with_pem_as_literal_blocks() {
        let text = config().to_yaml().unwrap();
        assert!(text.contains("ca: |\n  -----BEGIN CERTIFICATE-----\n  AAAA\n"), "{text}");
        assert_eq!(KelsonConfig::from_yaml(Path::new("k"), &text).unwrap(), config());
    }

    #[test]
    fn a_config_without_nodes_or_with_unknown_fields_is_refused() {
        let mut empty = config();
        empty.nodes.clear();
        let text = empty.to_yaml().unwrap();
        assert_eq!(
            KelsonConfig::from_yaml(Path::new("k"), &text).unwrap_err().to_string(),
            "kelsonconfig k lists no nodes"
        );
        let text = format!("{}extra: 1\n", config().to_yaml().unwrap());
        assert!(matches!(KelsonConfig::from_yaml(Path::new("k"), &text), Err(ConfigFileError::Parse { .. })));
    }

    #[test]
    fn debug_output_leaves_the_key_out() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("demo-cp-1"));
    }

    #[test]
    fn the_flag_wins_over_the_environment_and_the_working_directory() {
        let chosen = choose_config(Some(Path::new("a")), Some("b".into()), |_| true).unwrap();
        assert_eq!(chosen, ConfigChoice { path: "a".into(), chosen_by: ChosenBy::Flag });
        let chosen = choose_config(None, Some("b".into()), |_| true).unwrap();
        assert_eq!(chosen, ConfigChoice { path: "b".into(), chosen_by: ChosenBy::Env });
        let chosen = choose_config(None, Some("".into()), |_| true).unwrap();
        assert_eq!(chosen, ConfigChoice { path: "kelsonconfig".into(), chosen_by: ChosenBy::WorkingDirectory });
    }

    #[test]
    fn with_nothing_to_choose_the_error_names_every_place_tried() {
        let err = choose_config(None, None, |_| false).unwrap_err().to_string();
        assert!(err.contains("--kelsonconfig (not given)"), "{err}");
        assert!(err.contains("$KELSONCONFIG (not set)"), "{err}");
        assert!(err.contains("./kelsonconfig (not there)"), "{err}");
    }

    #[test]
    fn the_default_target_is_the_first_node_and_all_is_every_node() {
        assert_eq!(names(&select_nodes(&config(), &[]).unwrap()), ["demo-cp-1"]);
        assert_eq!(names(&select_nodes(&config(), &entries(&["all"])).unwrap()), ["demo-cp-1", "demo-worker-1"]);
    }

    #[test]
    fn named_nodes_keep_their_order_without_duplicates() {
        let picked = select_nodes(&config(), &entries(&["demo-worker-1", "demo-cp-1", "demo-worker-1"])).unwrap();
        assert_eq!(names(&picked), ["demo-worker-1", "demo-cp-1"]);
    }

    #[test]
    fn an_endpoint_override_keeps_the_name_it_is_verified_by() {
        let picked = select_nodes(&config(), &entries(&["demo-cp-1=127.0.0.1:15000"])).unwrap();
        assert_eq!(picked, [NodeEntry { name: "demo-cp-1".into(), endpoint: "127.0.0.1:15000".into() }]);
    }

    #[test]
    fn unknown_names_and_malformed_entries_are_refused() {
        assert_eq!(
            select_nodes(&config(), &entries(&["cp9"])).unwrap_err().to_string(),
            "node \"cp9\" is not in the kelsonconfig (it has demo-cp-1, demo-worker-1); give NAME=HOST:PORT to name an endpoint"
        );
        for bad in ["cp1=", "=127.0.0.1:1", "cp1=127.0.0.1", "cp1=127.0.0.1:http", ""] {
            assert_eq!(select_nodes(&config(), &entries(&[bad])), Err(SelectError::BadEntry(bad.into())), "{bad}");
        }
    }
}
