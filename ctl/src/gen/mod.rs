//! `kelsonctl gen`: offline generation of cluster folders. Self-contained:
//! nothing here talks to a node.

pub mod cidr;
pub mod cluster;
pub mod kubeadm;
pub mod manifests;
pub mod node;
pub mod output;
pub mod pki;
pub mod seed;

use std::path::Path;

pub use cluster::{ClusterPlan, ClusterSpec, GenClusterError, GeneratedCluster, NodePlan};
pub use node::{generate_node, GenNodeError, GeneratedNode, NodeSpec};
pub use output::{OutputError, OutputFile};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Cluster(#[from] GenClusterError),
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// Plans, renders and writes a cluster folder into `dir`. Everything is
/// decided and rendered before the directory is touched, so bad flags
/// never cost a previous generation.
pub fn generate_cluster(spec: &ClusterSpec, dir: &Path, force: bool) -> Result<GeneratedCluster, GenerateError> {
    let plan = cluster::plan(spec)?;
    let generated = cluster::render(plan, time::OffsetDateTime::now_utc())?;
    output::prepare_dir(dir, force)?;
    output::write_files(dir, &generated.files)?;
    Ok(generated)
}
