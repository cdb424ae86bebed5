pub mod apply;
mod atomic;
pub mod fake;
pub mod iptables;
pub mod netlink;
pub mod plan;
pub mod rtnl;
pub mod runner;
