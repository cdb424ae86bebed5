//! The node's status as PID 1 knows it: each boot stage's state and times,
//! the conditions stages declare (`network-ready`), the node's addresses,
//! and whether boot ended ready or in maintenance, and why. Published on a
//! `watch` channel: later stages and the management API read it from there
//! instead of asking the kernel what an earlier stage decided.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use tokio::sync::watch;

/// Where a condition stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state", content = "reason")]
pub enum Condition {
    /// Its stage has not said yet.
    Pending,
    True,
    /// Its stage ended without setting it; whatever waits for it is
    /// blocked, with this reason.
    Unreachable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageState {
    Running,
    Done,
    /// A non-critical stage failed; boot went on.
    Degraded,
    /// A critical stage failed; boot stopped in maintenance.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    pub name: &'static str,
    pub state: StageState,
    /// CLOCK_BOOTTIME at its start, in milliseconds.
    pub started_ms: u64,
    pub elapsed_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "phase")]
pub enum Phase {
    Booting,
    Ready,
    Maintenance { stage: &'static str, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub phase: Phase,
    pub stages: Vec<StageStatus>,
    pub conditions: BTreeMap<&'static str, Condition>,
    /// The node's own IPv4 addresses on its uplinks (static, or leased by
    /// DHCP), first the one the node is known by.
    pub addresses: Vec<Ipv4Addr>,
    /// The version running and how it was booted; `None` until the
    /// boot-entry stage has run, and on boots without a boot loader.
    pub boot: Option<BootStatus>,
    /// A control-plane node's etcd: its joining, and the members as last
    /// checked. `None` on other nodes.
    pub etcd: Option<EtcdView>,
}

/// A control-plane node's etcd as PID 1 sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdView {
    /// Where joining a running etcd stands (`cluster.etcdJoin`); `None`
    /// when the node does not join, or its etcd had data already.
    pub join: Option<EtcdJoin>,
    /// Each member asked on its own client URLs, as last checked.
    pub members: Vec<EtcdMemberHealth>,
    /// Why the members could not be listed at the last check.
    pub members_error: Option<String>,
}

/// One member, asked on its own client URLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMemberHealth {
    /// In hexadecimal, as etcdctl prints it.
    pub id: String,
    /// Empty for a learner that has not started.
    pub name: String,
    pub learner: bool,
    pub reachable: bool,
    pub leader: bool,
    /// Why it could not be reached, or the errors it reports.
    pub errors: Vec<String>,
}

impl From<kelson_etcd::MemberHealth> for EtcdMemberHealth {
    fn from(m: kelson_etcd::MemberHealth) -> Self {
        EtcdMemberHealth {
            id: m.id.to_string(),
            name: m.name,
            learner: m.is_learner,
            reachable: m.reachable,
            leader: m.is_leader,
            errors: m.errors,
        }
    }
}

/// A joining member's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum EtcdJoin {
    /// Adding itself as a learner through the running members; its etcd
    /// is held back until that succeeds.
    Adding { attempts: u32, last_error: Option<String> },
    /// Added as this learner and its etcd started; waiting to promote it.
    Learner { id: String, attempts: u32, last_error: Option<String> },
    /// Promoted to a voting member.
    Member { id: String },
    /// The join cannot start (its manifest or certificates); nothing was
    /// changed.
    Failed { reason: String },
}

/// The version a node runs, whether it is still on trial, and the newer
/// versions it fell back from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootStatus {
    pub version: String,
    /// The boot entry's file in the ESP, as booted.
    pub entry: Option<String>,
    /// Booted from a counted entry not yet marked good.
    pub on_trial: bool,
    /// Newer versions whose tries ran out without reaching ready.
    pub failed_updates: Vec<crate::boot_entry::FailedUpdate>,
}

impl Default for NodeStatus {
    fn default() -> Self {
        NodeStatus {
            phase: Phase::Booting,
            stages: Vec::new(),
            conditions: BTreeMap::new(),
            addresses: Vec::new(),
            boot: None,
            etcd: None,
        }
    }
}

impl NodeStatus {
    pub fn condition(&self, name: &str) -> &Condition {
        self.conditions.get(name).unwrap_or(&Condition::Pending)
    }

    pub fn stage(&self, name: &str) -> Option<&StageStatus> {
        self.stages.iter().rev().find(|s| s.name == name)
    }
}

/// The writing end of the node status; cheap to clone, so a stage can hand
/// it to the tasks it leaves running.
#[derive(Debug, Clone)]
pub struct StatusPublisher(Arc<watch::Sender<NodeStatus>>);

impl Default for StatusPublisher {
    fn default() -> Self {
        StatusPublisher(Arc::new(watch::Sender::new(NodeStatus::default())))
    }
}

impl StatusPublisher {
    pub fn subscribe(&self) -> watch::Receiver<NodeStatus> {
        self.0.subscribe()
    }

    /// The status now.
    pub fn current(&self) -> NodeStatus {
        self.0.borrow().clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut NodeStatus)) {
        self.0.send_modify(change);
    }

    pub fn set_condition(&self, name: &'static str, condition: Condition) {
        self.update(|s| {
            s.conditions.insert(name, condition);
        });
    }

    /// Changes the etcd view, making one first if there is none.
    pub fn update_etcd(&self, change: impl FnOnce(&mut EtcdView)) {
        self.update(|s| change(s.etcd.get_or_insert_with(EtcdView::default)));
    }

    /// Adds `address` to the node's addresses unless it is there already.
    pub fn add_address(&self, address: Ipv4Addr) {
        self.0.send_if_modified(|s| {
            if s.addresses.contains(&address) {
                return false;
            }
            s.addresses.push(address);
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_see_conditions_and_addresses_as_they_change() {
        let status = StatusPublisher::default();
        let mut seen = status.subscribe();
        assert_eq!(seen.borrow().condition("network-ready"), &Condition::Pending);
        status.set_condition("network-ready", Condition::True);
        assert!(seen.has_changed().unwrap());
        assert_eq!(seen.borrow_and_update().condition("network-ready"), &Condition::True);
        status.add_address(Ipv4Addr::new(192, 0, 2, 1));
        status.add_address(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(seen.borrow_and_update().addresses, vec![Ipv4Addr::new(192, 0, 2, 1)]);
        status.add_address(Ipv4Addr::new(192, 0, 2, 1));
        assert!(!seen.has_changed().unwrap(), "an address already known is no change");
    }

    #[test]
    fn the_status_serializes_for_the_api() {
        let status = NodeStatus {
            phase: Phase::Maintenance { stage: "config", reason: "rejected".into() },
            conditions: [("network-ready", Condition::Unreachable("no network".into()))].into(),
            ..NodeStatus::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"]["phase"], "maintenance");
        assert_eq!(json["phase"]["stage"], "config");
        assert_eq!(json["conditions"]["network-ready"]["state"], "unreachable");
        assert_eq!(json["conditions"]["network-ready"]["reason"], "no network");
    }
}
