//! The command line, as clap types. Kept apart from `main` so the parsing
//! (defaults, ranges, CIDR checks) is testable without a process.

use crate::api::output::{Format, FormatError};
use crate::api::verbs::{parse_log_source, LogSourceError, Verb};
use crate::gen::cidr::{self, CidrError};
use crate::gen::cluster::defaults;
use crate::gen::{ClusterSpec, NodeSpec};
use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;
use kelson_api::types::{LogSource, ServiceAction};
use kelson_config::Role;
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
    #[command(flatten)]
    Node(NodeCommand),
}

#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Write a cluster folder: CA and certificates, and per node a machine
    /// config and a NoCloud seed image (FAT, label CIDATA).
    Cluster(GenClusterArgs),
    /// Add a node to a cluster folder written by `gen cluster`: signed by
    /// its CA, at the next free address and pod CIDR, listed in its
    /// cluster.yaml and kelsonconfigs.
    Node(GenNodeArgs),
}

/// The role of a node added by `gen node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeRoleArg {
    Worker,
    /// Runs the control plane's static pods; its etcd member joins the
    /// running ones at its first boot (`cluster.etcdJoin`).
    ControlPlane,
}

#[derive(Debug, Clone, Args)]
pub struct GenNodeArgs {
    /// The cluster folder `gen cluster` wrote (it must hold pki/ca.key).
    #[arg(long, value_name = "DIR")]
    pub cluster: PathBuf,
    /// The new node's name (a lowercase hostname).
    #[arg(long)]
    pub name: String,
    #[arg(long, value_enum, default_value_t = NodeRoleArg::Worker)]
    pub role: NodeRoleArg,
}

impl GenNodeArgs {
    pub fn spec(&self) -> NodeSpec {
        let role = match self.role {
            NodeRoleArg::Worker => Role::Worker,
            NodeRoleArg::ControlPlane => Role::ControlPlane,
        };
        NodeSpec { name: self.name.clone(), role }
    }
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

fn format_arg(value: &str) -> Result<Format, FormatError> {
    value.parse()
}

fn log_source_arg(value: &str) -> Result<LogSource, LogSourceError> {
    parse_log_source(value)
}

/// Which config and nodes a node verb uses, and how it prints.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The kelsonconfig (else $KELSONCONFIG, else ./kelsonconfig).
    #[arg(long, value_name = "FILE")]
    pub kelsonconfig: Option<PathBuf>,
    /// Nodes to act on, concurrently: names from the kelsonconfig,
    /// NAME=HOST:PORT to reach a node elsewhere (still verified by NAME), or
    /// `all`. Default: the kelsonconfig's first node.
    #[arg(long, value_name = "NODE,..", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// table (every row under NODE), json or yaml (the API's objects; for
    /// several nodes a map from node name to answer).
    #[arg(long, short = 'o', value_name = "FORMAT", default_value = "table", value_parser = format_arg)]
    pub output: Format,
}

#[derive(Debug, Clone, Args)]
pub struct TargetOnly {
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// The supervised service (containerd, kubelet, ...).
    pub service: String,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Clone, Args)]
pub struct FollowArgs {
    /// Keep printing new lines as they come (until interrupted).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines already there.
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// SERVICE, POD/CONTAINER (a static pod in kube-system) or
    /// NAMESPACE/POD/CONTAINER.
    #[arg(value_name = "SOURCE", value_parser = log_source_arg)]
    pub source: LogSource,
    #[command(flatten)]
    pub follow: FollowArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// A MachineConfig document (YAML or JSON): it replaces the API layer.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Validate and show the diff; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    /// The node's name: the node refuses a reset that does not name it.
    #[arg(long, value_name = "NODE")]
    pub confirm: String,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    /// Where to write the snapshot (via FILE.partial); it holds the
    /// cluster's Secrets.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    /// The update bundle (tar), streamed to each node.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Reboot into the new version once installed.
    #[arg(long)]
    pub reboot: bool,
    #[command(flatten)]
    pub target: Target,
}

/// The verbs that talk to nodes over the management API.
#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// The node's name, image version and API version.
    Version(TargetOnly),
    /// Boot phase, stages, conditions, addresses, memory and boot entry.
    Status(TargetOnly),
    /// The supervised services and their states.
    Services(TargetOnly),
    /// Start a service.
    Start(ServiceArgs),
    /// Stop a service.
    Stop(ServiceArgs),
    /// Restart a service.
    Restart(ServiceArgs),
    /// A service's or a static pod container's log.
    Logs(LogsArgs),
    /// The kernel's log.
    Dmesg(FollowArgs),
    /// PID 1's own log.
    InitLog(FollowArgs),
    /// The static pods PID 1 runs.
    Pods(TargetOnly),
    /// The node's config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Reboot the node.
    Reboot(TargetOnly),
    /// Power the node off.
    Shutdown(TargetOnly),
    /// Wipe the node's state partition and reboot.
    Reset(ResetArgs),
    /// The node's etcd member.
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// Install an update bundle into the inactive slot.
    Upgrade(UpgradeArgs),
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// The effective config (secrets redacted) as YAML.
    Get(TargetOnly),
    /// Replace the API layer of the config: prints the diff and what was
    /// applied live and what needs a reboot.
    Apply(ApplyArgs),
}

#[derive(Debug, Clone, Subcommand)]
pub enum EtcdCommand {
    /// The cluster's members.
    Members(TargetOnly),
    /// The local member's status.
    Status(TargetOnly),
    /// Active alarms.
    Alarms(TargetOnly),
    /// Write a snapshot of etcd's database to FILE (one node).
    Snapshot(SnapshotArgs),
}

impl NodeCommand {
    pub fn target(&self) -> &Target {
        match self {
            NodeCommand::Version(a)
            | NodeCommand::Status(a)
            | NodeCommand::Services(a)
            | NodeCommand::Pods(a)
            | NodeCommand::Reboot(a)
            | NodeCommand::Shutdown(a)
            | NodeCommand::Config(ConfigCommand::Get(a))
            | NodeCommand::Etcd(EtcdCommand::Members(a) | EtcdCommand::Status(a) | EtcdCommand::Alarms(a)) => &a.target,
            NodeCommand::Start(a) | NodeCommand::Stop(a) | NodeCommand::Restart(a) => &a.target,
            NodeCommand::Logs(a) => &a.follow.target,
            NodeCommand::Dmesg(a) | NodeCommand::InitLog(a) => &a.target,
            NodeCommand::Config(ConfigCommand::Apply(a)) => &a.target,
            NodeCommand::Reset(a) => &a.target,
            NodeCommand::Etcd(EtcdCommand::Snapshot(a)) => &a.target,
            NodeCommand::Upgrade(a) => &a.target,
        }
    }

    pub fn verb(&self) -> Verb {
        let service = |a: &ServiceArgs, action| Verb::Service { name: a.service.clone(), action };
        let logs = |source: LogSource, a: &FollowArgs| Verb::Logs { source, follow: a.follow, tail: a.tail };
        match self {
            NodeCommand::Version(_) => Verb::Version,
            NodeCommand::Status(_) => Verb::Status,
            NodeCommand::Services(_) => Verb::Services,
            NodeCommand::Start(a) => service(a, ServiceAction::Start),
            NodeCommand::Stop(a) => service(a, ServiceAction::Stop),
            NodeCommand::Restart(a) => service(a, ServiceAction::Restart),
            NodeCommand::Logs(a) => logs(a.source.clone(), &a.follow),
            NodeCommand::Dmesg(a) => logs(LogSource::Kernel, a),
            NodeCommand::InitLog(a) => logs(LogSource::Init, a),
            NodeCommand::Pods(_) => Verb::Pods,
            NodeCommand::Config(ConfigCommand::Get(_)) => Verb::ConfigGet,
            NodeCommand::Config(ConfigCommand::Apply(a)) => {
                Verb::ConfigApply { file: a.file.clone(), dry_run: a.dry_run }
            }
            NodeCommand::Reboot(_) => Verb::Reboot,
            NodeCommand::Shutdown(_) => Verb::Shutdown,
            NodeCommand::Reset(a) => Verb::Reset { confirm: a.confirm.clone() },
            NodeCommand::Etcd(EtcdCommand::Members(_)) => Verb::EtcdMembers,
            NodeCommand::Etcd(EtcdCommand::Status(_)) => Verb::EtcdStatus,
            NodeCommand::Etcd(EtcdCommand::Alarms(_)) => Verb::EtcdAlarms,
            NodeCommand::Etcd(EtcdCommand::Snapshot(a)) => Verb::EtcdSnapshot { file: a.file.clone() },
            NodeCommand::Upgrade(a) => Verb::Upgrade { image: a.image.clone(), reboot: a.reboot },
        }
    }
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
        match Cli::try_parse_from(full)?.command {
            Command::Gen(GenCommand::Cluster(parsed)) => Ok(parsed),
            other => panic!("parsed as {other:?}"),
        }
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

    fn gen_node(args: &[&str]) -> Result<GenNodeArgs, clap::Error> {
        match Cli::try_parse_from(["kelsonctl", "gen", "node"].iter().chain(args))?.command {
            Command::Gen(GenCommand::Node(parsed)) => Ok(parsed),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn gen_node_adds_a_worker_unless_told_otherwise() {
        let args = gen_node(&["--cluster", "demo-cluster", "--name", "demo-worker-3"]).unwrap();
        assert_eq!(args.cluster, PathBuf::from("demo-cluster"));
        assert_eq!(args.spec(), NodeSpec { name: "demo-worker-3".into(), role: Role::Worker });
        let args = gen_node(&["--cluster", "c", "--name", "n", "--role", "control-plane"]).unwrap();
        assert_eq!(args.spec().role, Role::ControlPlane);
        let err = gen_node(&["--cluster", "c", "--name", "n", "--role", "etcd"]).unwrap_err().to_string();
        assert!(err.contains("worker") && err.contains("control-plane"), "{err}");
        assert!(gen_node(&["--name", "n"]).is_err());
    }

    fn node_command(args: &[&str]) -> Result<NodeCommand, clap::Error> {
        match Cli::try_parse_from(["kelsonctl"].iter().chain(args))?.command {
            Command::Node(command) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn node_verbs_take_nodes_config_and_output_after_the_verb() {
        let command =
            node_command(&["restart", "kubelet", "--nodes", "cp1,w1=127.0.0.1:1", "-o", "json", "--kelsonconfig", "k"])
                .unwrap();
        assert_eq!(command.verb(), Verb::Service { name: "kubelet".into(), action: ServiceAction::Restart });
        let target = command.target();
        assert_eq!(target.nodes, ["cp1", "w1=127.0.0.1:1"]);
        assert_eq!(target.output, Format::Json);
        assert_eq!(target.kelsonconfig.as_deref(), Some(std::path::Path::new("k")));
    }

    #[test]
    fn logs_of_a_pod_without_namespace_read_kube_system() {
        let command = node_command(&["logs", "-f", "--tail", "5", "etcd-cp1/etcd"]).unwrap();
        assert_eq!(
            command.verb(),
            Verb::Logs {
                source: LogSource::Container {
                    namespace: "kube-system".into(),
                    pod: "etcd-cp1".into(),
                    container: "etcd".into()
                },
                follow: true,
                tail: Some(5)
            }
        );
        assert_eq!(
            node_command(&["dmesg"]).unwrap().verb(),
            Verb::Logs { source: LogSource::Kernel, follow: false, tail: None }
        );
        assert_eq!(command.target().output, Format::Table);
    }

    #[test]
    fn reset_needs_the_confirming_node_name_and_output_a_known_format() {
        assert!(node_command(&["reset"]).is_err());
        assert_eq!(node_command(&["reset", "--confirm", "cp1"]).unwrap().verb(), Verb::Reset { confirm: "cp1".into() });
        let err = node_command(&["status", "-o", "xml"]).unwrap_err().to_string();
        assert!(err.contains("output format \"xml\" is not table, json or yaml"), "{err}");
    }
}
