//! The command line, as clap types. Kept apart from `main` so the parsing
//! (defaults, ranges, CIDR checks) is testable without a process.

use crate::gen::cidr::{self, CidrError};
use crate::gen::cluster::defaults;
use crate::gen::ClusterSpec;
use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "kelsonctl", version, about = "Kelson's admin CLI")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate configuration offline.
    #[command(subcommand)]
    Gen(GenCommand),
}

#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Write a cluster folder: CA and certificates, and per node a machine
    /// config and a NoCloud seed image (FAT, label CIDATA).
    Cluster(GenClusterArgs),
}

fn cidr_arg(value: &str) -> Result<Ipv4Net, CidrError> {
    cidr::parse_cidr(value)
}

#[derive(Debug, Clone, Args)]
pub struct GenClusterArgs {
    /// Cluster name; nodes are NAME-cp-1.., NAME-worker-1..
    #[arg(long)]
    pub name: String,
    /// Number of control-plane nodes (each runs etcd).
    #[arg(long = "control-plane", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub control_plane: u16,
    /// Number of worker nodes.
    #[arg(long, value_name = "N")]
    pub workers: u16,
    /// The folder to write; must be empty or missing unless --force.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: PathBuf,
    /// Pod network of the whole cluster; each node gets a /POD_PREFIX of it.
    #[arg(long, value_name = "CIDR", default_value = defaults::CLUSTER_CIDR, value_parser = cidr_arg)]
    pub cluster_cidr: Ipv4Net,
    /// Service (ClusterIP) network; cluster DNS is its 10th address.
    #[arg(long, value_name = "CIDR", default_value = defaults::SERVICE_CIDR, value_parser = cidr_arg)]
    pub service_cidr: Ipv4Net,
    /// The nodes' own network; node k gets its address .10+k.
    #[arg(long, value_name = "CIDR", default_value = defaults::NODE_CIDR, value_parser = cidr_arg)]
    pub node_cidr: Ipv4Net,
    /// Default gateway on the node network (none if absent).
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,
    /// Prefix length of each node's pod subnet.
    #[arg(long, value_name = "LEN", default_value_t = defaults::POD_PREFIX, value_parser = clap::value_parser!(u8).range(1..=32))]
    pub pod_prefix: u8,
    /// MTU of the pod bridge.
    #[arg(long, default_value_t = defaults::MTU, value_parser = clap::value_parser!(u32).range(576..=9000))]
    pub mtu: u32,
    /// The node's uplink interface, by name.
    #[arg(long, value_name = "IFNAME", default_value = defaults::UPLINK)]
    pub uplink: String,
    /// Replace a previous generation in DIR (removes DIR's cluster.yaml,
    /// pki/ and nodes/; other files stay).
    #[arg(long)]
    pub force: bool,
}

impl GenClusterArgs {
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            name: self.name.clone(),
            control_planes: usize::from(self.control_plane),
            workers: usize::from(self.workers),
            cluster_cidr: self.cluster_cidr,
            service_cidr: self.service_cidr,
            node_cidr: self.node_cidr,
            gateway: self.gateway,
            pod_prefix: self.pod_prefix,
            mtu: self.mtu,
            uplink: self.uplink.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen_cluster(args: &[&str]) -> Result<GenClusterArgs, clap::Error> {
        let full = ["kelsonctl", "gen", "cluster"].iter().chain(args);
        let Cli { command: Command::Gen(GenCommand::Cluster(parsed)) } = Cli::try_parse_from(full)?;
        Ok(parsed)
    }

    #[test]
    fn defaults_fill_everything_but_name_workers_and_output() {
        let spec = gen_cluster(&["--name", "demo", "--workers", "2", "--output", "out"]).unwrap().spec();
        assert_eq!(spec.control_planes, 1);
        assert_eq!(spec.workers, 2);
        assert_eq!(spec.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(spec.service_cidr.to_string(), "10.96.0.0/12");
        assert_eq!(spec.node_cidr.to_string(), "192.168.100.0/24");
        assert_eq!(spec.gateway, None);
        assert_eq!(spec.pod_prefix, 24);
        assert_eq!(spec.mtu, 1460);
        assert_eq!(spec.uplink, "eth0");
    }

    #[test]
    fn a_bad_cidr_is_refused_naming_the_flag_and_the_reason() {
        let err =
            gen_cluster(&["--name", "d", "--workers", "0", "-o", "x", "--cluster-cidr", "10.244.0/16"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--cluster-cidr"), "{text}");
        assert!(text.contains("is not an IPv4 CIDR like 10.244.0.0/16"), "{text}");
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        assert!(gen_cluster(&["--name", "d", "--workers", "0", "-o", "x", "--mtu", "100"]).is_err());
        assert!(gen_cluster(&["--name", "d", "--workers", "0", "-o", "x", "--control-plane", "0"]).is_err());
        assert!(gen_cluster(&["--name", "d", "--workers", "0", "-o", "x", "--pod-prefix", "33"]).is_err());
    }
}
