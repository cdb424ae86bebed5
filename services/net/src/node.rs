//! [`Networking`]: `apply` plus the DHCP clients it needs, kept across passes.

use crate::apply::{apply, ApplyReport, Host, Outcome};
use crate::dhcp::{self, DhcpConfig, DhcpHandle, DhcpStatus};
use crate::netlink::Netlink;
use crate::plan::NetPlan;
use crate::runner::CommandRunner;
use std::collections::BTreeMap;

/// The node's networking across passes: applies plans and runs one DHCP
/// client per DHCP uplink, started when a plan first wants it and released
/// when a plan no longer does (or on [`shutdown`](Self::shutdown)).
pub struct Networking<N, R> {
    host: Host<N, R>,
    /// By uplink field (`network.uplinks[0]`): the link index and its client.
    dhcp: BTreeMap<String, (u32, DhcpHandle)>,
    hostname: Option<String>,
}

impl<N: Netlink + Clone + 'static, R: CommandRunner + Clone + 'static> Networking<N, R> {
    pub fn new(host: Host<N, R>) -> Self {
        Networking { host, dhcp: BTreeMap::new(), hostname: None }
    }

    /// The hostname DHCP clients send (option 12).
    pub fn with_hostname(mut self, hostname: Option<String>) -> Self {
        self.hostname = hostname;
        self
    }

    pub fn host(&self) -> &Host<N, R> {
        &self.host
    }

    /// Applies `plan` (see [`apply`]) and then starts or stops DHCP clients,
    /// one report step per client change ("dhcp4 network.uplinks[0]").
    /// Must run in the node's network namespace (clients open their packet
    /// sockets where they start).
    pub async fn apply(&mut self, plan: &NetPlan) -> ApplyReport {
        let mut report = apply(plan, &self.host).await;
        let wanted: BTreeMap<String, _> = report.dhcp_uplinks.iter().map(|d| (d.field.clone(), d.clone())).collect();

        let stale: Vec<String> = self
            .dhcp
            .iter()
            .filter(|(field, (index, _))| wanted.get(*field).is_none_or(|w| w.link.index != *index))
            .map(|(field, _)| field.clone())
            .collect();
        for field in stale {
            if let Some((_, handle)) = self.dhcp.remove(&field) {
                let last = handle.release().await;
                let what = match last.lease {
                    Some(l) => format!("client stopped, lease {} released", l.address),
                    None => "client stopped".to_owned(),
                };
                report.push(format!("dhcp4 {field}"), Outcome::Changed { changes: vec![what] });
            }
        }

        for (field, uplink) in wanted {
            if self.dhcp.contains_key(&field) {
                continue;
            }
            let fixed_mtu = plan.uplink(&field).and_then(|u| u.mtu);
            let config = DhcpConfig {
                link: uplink.link.clone(),
                resolv_conf: plan.nameservers.is_empty().then(|| self.host.paths.resolv_conf.clone()),
                fixed_mtu,
                hostname: self.hostname.clone(),
            };
            match dhcp::spawn(self.host.netlink.clone(), config) {
                Ok(handle) => {
                    self.dhcp.insert(field.clone(), (uplink.link.index, handle));
                    report.push(
                        format!("dhcp4 {field}"),
                        Outcome::Changed { changes: vec![format!("client started on {}", uplink.link.name)] },
                    );
                }
                Err(e) => report.push(
                    format!("dhcp4 {field}"),
                    Outcome::Failed { errors: vec![crate::apply::chain(&e)], changes: vec![] },
                ),
            }
        }
        report
    }

    /// Each DHCP client's status, by uplink field.
    pub fn dhcp_status(&self) -> BTreeMap<String, DhcpStatus> {
        self.dhcp.iter().map(|(field, (_, h))| (field.clone(), h.status())).collect()
    }

    /// A DHCP client's status receiver, to wait for a lease.
    pub fn dhcp_watch(&self, field: &str) -> Option<tokio::sync::watch::Receiver<DhcpStatus>> {
        self.dhcp.get(field).map(|(_, h)| h.watch())
    }

    /// Releases every DHCP lease (for an orderly shutdown). Static
    /// configuration stays: the node keeps its addresses until power-off.
    pub async fn shutdown(&mut self) -> BTreeMap<String, DhcpStatus> {
        let mut last = BTreeMap::new();
        for (field, (_, handle)) in std::mem::take(&mut self.dhcp) {
            last.insert(field, handle.release().await);
        }
        last
    }
}
