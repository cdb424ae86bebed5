//! Kelson's node networking, as the seed notes describe it, over netlink
//! instead of shell commands.
//!
//! What it does:
//! - [`NetPlan::from_config`] validates the machine config's `network`
//!   section into a plan before anything is touched; each error names its
//!   field (`network.podCIDR: ...`).
//! - [`apply()`] (or [`Networking::apply`], which also runs DHCP clients) sets
//!   up, in order: lo up; uplinks by name or MAC (MTU, static addresses,
//!   gateway, routes, or DHCPv4); /etc/resolv.conf; the cbr0 bridge (MTU,
//!   first address of the pod CIDR, up); `ip_forward` and
//!   `bridge-nf-call-iptables`; the MASQUERADE rule in Kelson's own nat chain
//!   `KELSON-POSTROUTING`; routes to other nodes' pod CIDRs. Every step is
//!   reported ([`ApplyReport`]) and logged; a failed step does not stop the
//!   later ones.
//! - Idempotent and convergent: a step changes only what differs. Kelson owns
//!   exactly the addresses and routes carrying protocol
//!   [`netlink::KELSON_PROTO`] (75) and its iptables chain; a pass removes
//!   those the plan no longer wants and never touches anything else. The
//!   ownership mark lives in the kernel, so it survives a restart of PID 1
//!   without a state file. Addresses need IFA_PROTO (Linux 6.1+).
//! - [`dhcp`]: a DHCPv4 client per uplink (packet socket, renew at T1,
//!   rebind at T2, release on stop).
//! - [`PodNetwork`]: attach/detach a pod's network namespace (veth on cbr0,
//!   eth0 inside, an address from the lower half of the pod CIDR persisted
//!   under /var/lib/kelson/net).
//! - [`cni`]: the `10-kelson.conflist` for containerd's pods (the upper half).
//!
//! What it does not do: IPv6; load kernel modules (bridge, veth,
//! br_netfilter, ...: PID 1's job); watch netlink events or peers (the caller
//! re-applies on change); run programs itself (iptables goes through the
//! caller's [`CommandRunner`], because PID 1 owns all reaping).
//!
//! Kernel access is behind [`Netlink`] ([`RtNetlink`] for real,
//! [`fake::FakeNetlink`] for tests) and [`CommandRunner`].

pub mod apply;
pub mod cni;
pub mod dhcp;
pub mod fake;
pub mod iptables;
pub mod netlink;
mod node;
pub mod plan;
pub mod pods;
pub mod rtnl;
pub mod runner;

pub use apply::{apply, ApplyReport, Host, Outcome, Paths, StepReport};
pub use netlink::Netlink;
pub use node::Networking;
pub use plan::{NetPlan, PlanError};
pub use pods::{PodAttachment, PodNetError, PodNetwork};
pub use rtnl::RtNetlink;
pub use runner::{CommandRunner, StdRunner};
