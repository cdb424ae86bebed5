//! Applying a [`NetPlan`] to the node: each step compares what the kernel
//! has with what the plan wants and changes only the difference, so a second
//! pass changes nothing; what Kelson added earlier and the plan no longer
//! wants (addresses and routes with protocol [`KELSON_PROTO`], Kelson's
//! iptables chain) is removed. A failing step is reported and the later,
//! independent steps still run.

use crate::iptables::{ensure_masquerade, IptablesError};
use crate::netlink::{by_name, Address, Link, Netlink, NlError, Route, KELSON_PROTO};
use crate::plan::{BridgePlan, LinkSelector, NetPlan, UplinkMode, UplinkPlan};
use crate::runner::CommandRunner;
use ipnet::Ipv4Net;
use kelson_base::atomic::{write_atomic, AtomicWriteError};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// Where `apply` reads and writes outside netlink; tests point these into a
/// temporary directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub resolv_conf: PathBuf,
    /// Root of the sysctl tree (`/proc/sys`).
    pub proc_sys: PathBuf,
    /// The iptables binary (found on PATH when not absolute).
    pub iptables: PathBuf,
    /// Marks that this boot's nat table has been touched by Kelson; it must
    /// live on a filesystem that is empty at boot, like the table itself
    /// (see [`crate::iptables::ensure_masquerade`]).
    pub nat_marker: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            proc_sys: PathBuf::from("/proc/sys"),
            iptables: PathBuf::from("iptables"),
            nat_marker: PathBuf::from("/run/kelson/net/nat-touched"),
        }
    }
}

/// The node's kernel and programs, as `apply` reaches them.
#[derive(Debug, Clone)]
pub struct Host<N, R> {
    pub netlink: N,
    pub runner: R,
    pub paths: Paths,
}

/// One step's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// The kernel already had what the plan wants.
    Unchanged,
    Changed {
        changes: Vec<String>,
    },
    Skipped {
        reason: String,
    },
    /// Some or all of the step failed; `changes` lists what it did do.
    Failed {
        errors: Vec<String>,
        changes: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    pub step: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// An uplink the plan gives to DHCP, with the link it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpUplink {
    pub field: String,
    pub link: Link,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub steps: Vec<StepReport>,
    /// Uplinks prepared (found, MTU, up) for a DHCP client; see
    /// [`crate::Networking`], which runs the clients.
    #[serde(skip)]
    pub dhcp_uplinks: Vec<DhcpUplink>,
}

impl ApplyReport {
    pub fn ok(&self) -> bool {
        !self.steps.iter().any(|s| matches!(s.outcome, Outcome::Failed { .. }))
    }

    /// Every change made, as "step: change".
    pub fn changes(&self) -> Vec<String> {
        self.steps
            .iter()
            .flat_map(|s| match &s.outcome {
                Outcome::Changed { changes } | Outcome::Failed { changes, .. } => {
                    changes.iter().map(|c| format!("{}: {c}", s.step)).collect()
                }
                _ => Vec::new(),
            })
            .collect()
    }

    pub fn step(&self, name: &str) -> Option<&Outcome> {
        self.steps.iter().find(|s| s.step == name).map(|s| &s.outcome)
    }

    pub(crate) fn push(&mut self, step: String, outcome: Outcome) {
        match &outcome {
            Outcome::Unchanged => tracing::info!(step = %step, "unchanged"),
            Outcome::Changed { changes } => tracing::info!(step = %step, changes = %changes.join("; "), "changed"),
            Outcome::Skipped { reason } => tracing::info!(step = %step, reason = %reason, "skipped"),
            Outcome::Failed { errors, changes } => {
                tracing::error!(step = %step, errors = %errors.join("; "), changes = %changes.join("; "), "failed")
            }
        }
        self.steps.push(StepReport { step, outcome });
    }
}

/// What went wrong inside a step, naming what was being done and to what.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("listing links")]
    ListLinks(#[source] NlError),
    #[error("listing addresses")]
    ListAddresses(#[source] NlError),
    #[error("listing routes")]
    ListRoutes(#[source] NlError),
    #[error("{field}: no link with {select}")]
    UnknownLink { field: String, select: LinkSelector },
    #[error("link {link} is missing")]
    MissingLink { link: String },
    #[error("setting link {link} down to rename it to {name}")]
    SetDown {
        link: String,
        name: String,
        #[source]
        source: NlError,
    },
    #[error("renaming link {link} to {name}")]
    Rename {
        link: String,
        name: String,
        #[source]
        source: NlError,
    },
    #[error("setting link {link} up")]
    SetUp {
        link: String,
        #[source]
        source: NlError,
    },
    #[error("setting MTU {mtu} on link {link}")]
    SetMtu {
        link: String,
        mtu: u32,
        #[source]
        source: NlError,
    },
    #[error("creating bridge {name}")]
    CreateBridge {
        name: String,
        #[source]
        source: NlError,
    },
    #[error("{name} exists but is a {kind} link, not a bridge")]
    NotABridge { name: String, kind: String },
    #[error("adding address {addr} to link {link}")]
    AddAddress {
        link: String,
        addr: Ipv4Net,
        #[source]
        source: NlError,
    },
    #[error("removing address {addr} from link {link}")]
    DelAddress {
        link: String,
        addr: Ipv4Net,
        #[source]
        source: NlError,
    },
    #[error("adding route {route}")]
    AddRoute {
        route: String,
        #[source]
        source: NlError,
    },
    #[error("removing route {route}")]
    DelRoute {
        route: String,
        #[source]
        source: NlError,
    },
    #[error("{path} does not exist ({hint})")]
    MissingSysctl { path: PathBuf, hint: &'static str },
    #[error("reading {path}")]
    ReadSysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {value:?} to {path}")]
    WriteSysctl {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: AtomicWriteError,
    },
    #[error("setting up the MASQUERADE rule")]
    Masquerade(#[source] IptablesError),
    #[error("setting up the MASQUERADE rule: the task running iptables failed: {0}")]
    MasqueradeTask(String),
}

pub(crate) use kelson_base::error_chain as chain;

#[derive(Default)]
struct Step {
    changes: Vec<String>,
    errors: Vec<String>,
}

impl Step {
    fn change(&mut self, what: impl Into<String>) {
        self.changes.push(what.into());
    }

    fn fail(&mut self, e: StepError) {
        self.errors.push(chain(&e));
    }

    fn outcome(self) -> Outcome {
        if !self.errors.is_empty() {
            Outcome::Failed { errors: self.errors, changes: self.changes }
        } else if self.changes.is_empty() {
            Outcome::Unchanged
        } else {
            Outcome::Changed { changes: self.changes }
        }
    }
}

pub(crate) fn route_text(r: &Route, links: &[Link]) -> String {
    let mut text = r.dst.to_string();
    if let Some(gw) = r.gateway {
        text.push_str(&format!(" via {gw}"));
    }
    if let Some(i) = r.link {
        let name = links.iter().find(|l| l.index == i).map_or_else(|| format!("#{i}"), |l| l.name.clone());
        text.push_str(&format!(" dev {name}"));
    }
    text
}

fn link_name(links: &[Link], index: u32) -> String {
    links.iter().find(|l| l.index == index).map_or_else(|| format!("#{index}"), |l| l.name.clone())
}

/// Whether `have` already is the route `want` asks for (a route without a
/// link lets the kernel pick one).
fn same_route(have: &Route, want: &Route) -> bool {
    have.dst == want.dst
        && have.gateway == want.gateway
        && have.protocol == want.protocol
        && (want.link.is_none() || have.link == want.link)
}

/// Everything the plan wants, gathered while steps run, so the final
/// clean-up removes only what Kelson owns and no longer wants.
#[derive(Default)]
struct Wanted {
    addresses: Vec<(u32, Ipv4Net)>,
    routes: Vec<Route>,
    /// A step could not tell what it wants (netlink failed): clean-up is
    /// skipped rather than guessing.
    unknown: bool,
}

/// The kernel's links, addresses and routes, dumped once at the start of a
/// pass and kept up to date with the pass's own changes, so that no step
/// lists them again. A dump that failed fails every step that needs it.
struct Observed {
    links: Result<Vec<Link>, NlError>,
    addresses: Result<Vec<Address>, NlError>,
    routes: Result<Vec<Route>, NlError>,
}

impl Observed {
    async fn read<N: Netlink>(nl: &N) -> Observed {
        Observed { links: nl.links().await, addresses: nl.addresses().await, routes: nl.routes().await }
    }

    fn links(&mut self) -> Result<&mut Vec<Link>, StepError> {
        self.links.as_mut().map_err(|e| StepError::ListLinks(e.clone()))
    }

    fn addresses(&mut self) -> Result<&mut Vec<Address>, StepError> {
        self.addresses.as_mut().map_err(|e| StepError::ListAddresses(e.clone()))
    }

    fn routes(&mut self) -> Result<&mut Vec<Route>, StepError> {
        self.routes.as_mut().map_err(|e| StepError::ListRoutes(e.clone()))
    }

    fn link_mut(&mut self, index: u32) -> Option<&mut Link> {
        self.links.as_mut().ok()?.iter_mut().find(|l| l.index == index)
    }

    /// A link set down loses its routes: Linux deletes the IPv4 routes
    /// through a link that goes down.
    fn went_down(&mut self, index: u32) {
        if let Some(link) = self.link_mut(index) {
            link.up = false;
        }
        if let Ok(routes) = self.routes.as_mut() {
            routes.retain(|r| r.link != Some(index));
        }
    }
}

/// Applies `plan`. Steps, in order: lo, uplinks, resolv.conf, bridge,
/// sysctls, MASQUERADE, peer routes, stale addresses, stale routes.
///
/// The kernel's links, addresses and routes are dumped once for the whole
/// pass (see [`Observed`]); the only other read is the bridge's own link
/// after creating it, for its index.
pub async fn apply<N: Netlink, R: CommandRunner + Clone + 'static>(plan: &NetPlan, host: &Host<N, R>) -> ApplyReport {
    let mut report = ApplyReport::default();
    let mut wanted = Wanted::default();
    let nl = &host.netlink;
    // The rule needs nothing the netlink steps make, and iptables is a
    // process whose start-up (loading its libraries from /usr) dominates the
    // pass on a cold boot, so it runs beside them; its outcome is still
    // reported in step order.
    let masquerade = {
        let (runner, paths, cluster) = (host.runner.clone(), host.paths.clone(), plan.cluster_cidr);
        tokio::task::spawn_blocking(move || ensure_masquerade(&runner, &paths.iptables, &paths.nat_marker, cluster))
    };
    let mut observed = Observed::read(nl).await;

    report.push("lo".into(), lo_up(nl, &mut observed).await.outcome());

    for uplink in &plan.uplinks {
        let (name, step, dhcp) = apply_uplink(nl, &host.paths.proc_sys, uplink, &mut observed, &mut wanted).await;
        if let Some(dhcp) = dhcp {
            report.dhcp_uplinks.push(dhcp);
        }
        report.push(format!("uplink {}{name}", uplink.field), step.outcome());
    }

    let resolv = if plan.nameservers.is_empty() && host.paths.resolv_conf.exists() {
        Outcome::Skipped { reason: "no network.nameservers (resolv.conf is left to DHCP or as it is)".into() }
    } else if plan.nameservers.is_empty() {
        // Programs that read the file by name need it to exist (the
        // kubelet gives it to every pod sandbox and fails without it); a
        // DHCP lease fills it in later.
        write_resolv_conf(
            &host.paths.resolv_conf,
            &[],
            &[],
            "a machine config without network.nameservers: none known yet",
        )
        .outcome()
    } else {
        write_resolv_conf(&host.paths.resolv_conf, &plan.nameservers, &plan.search, "the machine config").outcome()
    };
    report.push("resolv.conf".into(), resolv);

    match &plan.bridge {
        Some(bridge) => {
            report.push(
                format!("bridge {}", bridge.name),
                apply_bridge(nl, &host.paths.proc_sys, bridge, &mut observed, &mut wanted).await.outcome(),
            );
            for (name, hint) in [
                ("net.ipv4.ip_forward", "is /proc mounted?"),
                ("net.bridge.bridge-nf-call-iptables", "load the br_netfilter module first"),
            ] {
                report.push(format!("sysctl {name}"), set_sysctl(&host.paths.proc_sys, name, "1", hint).outcome());
            }
        }
        None => report.push("bridge".into(), Outcome::Skipped { reason: "no network.podCIDR".into() }),
    }

    let mut step = Step::default();
    match masquerade.await {
        Ok(Ok(changes)) => changes.into_iter().for_each(|c| step.change(c)),
        Ok(Err(e)) => step.fail(StepError::Masquerade(e)),
        Err(e) => step.fail(StepError::MasqueradeTask(e.to_string())),
    }
    report.push("masquerade".into(), step.outcome());

    report.push("peer routes".into(), apply_peer_routes(nl, plan, &mut observed, &mut wanted).await.outcome());

    if wanted.unknown {
        let reason = "an earlier step could not read the kernel's state; nothing is removed on a guess".to_owned();
        report.push("stale addresses".into(), Outcome::Skipped { reason: reason.clone() });
        report.push("stale routes".into(), Outcome::Skipped { reason });
    } else {
        report.push("stale addresses".into(), remove_stale_addresses(nl, &observed, &wanted).await.outcome());
        report.push("stale routes".into(), remove_stale_routes(nl, &observed, &wanted).await.outcome());
    }
    report
}

async fn lo_up<N: Netlink>(nl: &N, observed: &mut Observed) -> Step {
    let mut step = Step::default();
    let lo = match observed.links() {
        Err(e) => {
            step.fail(e);
            return step;
        }
        Ok(links) => by_name(links, "lo").cloned(),
    };
    match lo {
        None => step.fail(StepError::MissingLink { link: "lo".into() }),
        Some(lo) if lo.up => {}
        Some(lo) => match nl.set_up(lo.index).await {
            Ok(()) => {
                step.change("up");
                if let Some(link) = observed.link_mut(lo.index) {
                    link.up = true;
                }
            }
            Err(source) => step.fail(StepError::SetUp { link: "lo".into(), source }),
        },
    }
    step
}

fn select<'a>(links: &'a [Link], select: &LinkSelector) -> Option<&'a Link> {
    match select {
        LinkSelector::Name(name) => by_name(links, name),
        LinkSelector::Mac(mac) => links.iter().find(|l| l.mac.as_ref() == Some(mac)),
    }
}

/// Finds the link, renames it if asked (down, rename: Linux renames only a
/// link that is down), sets MTU and up: what both static and DHCP uplinks
/// need.
async fn prepare_link<N: Netlink>(
    nl: &N,
    field: &str,
    sel: &LinkSelector,
    rename: Option<&str>,
    mtu: Option<u32>,
    observed: &mut Observed,
    step: &mut Step,
) -> Option<Link> {
    let links = match observed.links() {
        Ok(l) => l,
        Err(e) => {
            step.fail(e);
            return None;
        }
    };
    // A link picked by its old name was renamed by an earlier apply.
    let renamed_earlier = || match sel {
        LinkSelector::Name(_) => rename.and_then(|new| by_name(links, new)),
        LinkSelector::Mac(_) => None,
    };
    let Some(mut link) = select(links, sel).or_else(renamed_earlier).cloned() else {
        let field = match sel {
            LinkSelector::Name(_) => format!("{field}.name"),
            LinkSelector::Mac(_) => format!("{field}.mac"),
        };
        step.fail(StepError::UnknownLink { field, select: sel.clone() });
        return None;
    };
    if let Some(new) = rename.filter(|new| *new != link.name) {
        if link.up {
            if let Err(source) = nl.set_down(link.index).await {
                step.fail(StepError::SetDown { link: link.name.clone(), name: new.to_owned(), source });
                return None;
            }
            link.up = false;
            observed.went_down(link.index);
        }
        match nl.rename(link.index, new).await {
            Ok(()) => {
                step.change(format!("renamed from {}", link.name));
                link.name = new.to_owned();
            }
            Err(source) => {
                step.fail(StepError::Rename { link: link.name.clone(), name: new.to_owned(), source });
                return None;
            }
        }
    }
    if let Some(mtu) = mtu.filter(|m| *m != link.mtu) {
        match nl.set_mtu(link.index, mtu).await {
            Ok(()) => {
                step.change(format!("MTU {mtu}"));
                link.mtu = mtu;
            }
            Err(source) => step.fail(StepError::SetMtu { link: link.name.clone(), mtu, source }),
        }
    }
    if !link.up {
        match nl.set_up(link.index).await {
            Ok(()) => {
                step.change("up");
                link.up = true;
            }
            Err(source) => step.fail(StepError::SetUp { link: link.name.clone(), source }),
        }
    }
    if let Some(seen) = observed.link_mut(link.index) {
        *seen = link.clone();
    }
    Some(link)
}

/// Turns on promote_secondaries for a link whose addresses Kelson manages.
/// An address change adds the new address before removing the old: removing
/// the last address first would make the kernel flush every route through
/// the link (other owners' too), and without promotion removing a primary
/// takes the new secondary in its subnet with it.
fn promote_secondaries(proc_sys: &Path, link: &str, step: &mut Step) {
    let path = proc_sys.join("net/ipv4/conf").join(link).join("promote_secondaries");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match std::fs::write(&path, "1") {
            Ok(()) => step.change("promote_secondaries on"),
            Err(source) => step.fail(StepError::WriteSysctl { path, value: "1".into(), source }),
        },
        Err(source) => step.fail(StepError::ReadSysctl { path, source }),
    }
}

/// Removes Kelson's addresses on `link` that are not in `want` (after the
/// wanted ones are in place; see [`promote_secondaries`]).
async fn remove_unwanted_on_link<N: Netlink>(
    nl: &N,
    have: &mut Vec<Address>,
    link: &Link,
    want: &[Ipv4Net],
    step: &mut Step,
) {
    let unwanted: Vec<Address> = have
        .iter()
        .filter(|a| a.link == link.index && a.protocol == Some(KELSON_PROTO) && !want.contains(&a.addr))
        .copied()
        .collect();
    for a in unwanted {
        match nl.del_address(link.index, a.addr).await {
            Ok(()) => step.change(format!("removed {}", a.addr)),
            Err(e) if e.is_gone() => {}
            Err(source) => {
                step.fail(StepError::DelAddress { link: link.name.clone(), addr: a.addr, source });
                continue;
            }
        }
        have.retain(|h| *h != a);
    }
}

/// Adds `addr` unless present (any protocol: an address someone else set is
/// accepted as is, and stays theirs).
async fn ensure_address<N: Netlink>(nl: &N, have: &mut Vec<Address>, link: &Link, addr: Ipv4Net, step: &mut Step) {
    if have.iter().any(|a| a.link == link.index && a.addr == addr) {
        return;
    }
    match nl.add_address(link.index, addr, KELSON_PROTO).await {
        Ok(()) => step.change(format!("address {addr}")),
        Err(e) if e.is_exists() => {}
        Err(source) => {
            step.fail(StepError::AddAddress { link: link.name.clone(), addr, source });
            return;
        }
    }
    have.push(Address { link: link.index, addr, protocol: Some(KELSON_PROTO) });
}

async fn ensure_route<N: Netlink>(nl: &N, have: &mut Vec<Route>, links: &[Link], want: Route, step: &mut Step) {
    if have.iter().any(|r| same_route(r, &want)) {
        return;
    }
    match nl.replace_route(want).await {
        Ok(()) => {
            step.change(format!("route {}", route_text(&want, links)));
            // A replace takes the place of the main table's route to the
            // same destination.
            have.retain(|r| r.dst != want.dst);
            have.push(want);
        }
        Err(source) => step.fail(StepError::AddRoute { route: route_text(&want, links), source }),
    }
}

async fn apply_uplink<N: Netlink>(
    nl: &N,
    proc_sys: &Path,
    uplink: &UplinkPlan,
    observed: &mut Observed,
    wanted: &mut Wanted,
) -> (String, Step, Option<DhcpUplink>) {
    let mut step = Step::default();
    let Some(link) =
        prepare_link(nl, &uplink.field, &uplink.select, uplink.rename.as_deref(), uplink.mtu, observed, &mut step)
            .await
    else {
        if step.errors.iter().any(|e| e.starts_with("listing")) {
            wanted.unknown = true;
        }
        return (String::new(), step, None);
    };
    let name = format!(" ({})", link.name);
    let UplinkMode::Static { addresses, gateway, routes } = &uplink.mode else {
        let dhcp = DhcpUplink { field: uplink.field.clone(), link };
        return (name, step, Some(dhcp));
    };
    promote_secondaries(proc_sys, &link.name, &mut step);
    match observed.addresses() {
        Ok(have) => {
            for addr in addresses {
                ensure_address(nl, have, &link, *addr, &mut step).await;
            }
            remove_unwanted_on_link(nl, have, &link, addresses, &mut step).await;
        }
        Err(e) => {
            wanted.unknown = true;
            step.fail(e);
        }
    }
    wanted.addresses.extend(addresses.iter().map(|addr| (link.index, *addr)));
    let mut want_routes: Vec<Route> = routes
        .iter()
        .map(|r| Route { dst: r.to, gateway: Some(r.via), link: Some(link.index), protocol: KELSON_PROTO })
        .collect();
    if let Some(gw) = gateway {
        want_routes.push(Route {
            dst: Ipv4Net::default(),
            gateway: Some(*gw),
            link: Some(link.index),
            protocol: KELSON_PROTO,
        });
    }
    wanted.routes.extend(&want_routes);
    if want_routes.is_empty() {
        return (name, step, None);
    }
    match observed.routes() {
        Ok(have) => {
            for want in want_routes {
                ensure_route(nl, have, std::slice::from_ref(&link), want, &mut step).await;
            }
        }
        Err(e) => {
            wanted.unknown = true;
            step.fail(e);
        }
    }
    (name, step, None)
}

async fn apply_bridge<N: Netlink>(
    nl: &N,
    proc_sys: &Path,
    bridge: &BridgePlan,
    observed: &mut Observed,
    wanted: &mut Wanted,
) -> Step {
    let mut step = Step::default();
    let found = match observed.links() {
        Ok(links) => by_name(links, &bridge.name).cloned(),
        Err(e) => {
            wanted.unknown = true;
            step.fail(e);
            return step;
        }
    };
    let link = match found {
        Some(link) => link,
        None => {
            match nl.create_bridge(&bridge.name).await {
                Ok(()) => step.change(format!("created bridge {}", bridge.name)),
                Err(e) if e.is_exists() => {}
                Err(source) => {
                    step.fail(StepError::CreateBridge { name: bridge.name.clone(), source });
                    return step;
                }
            }
            // Its index is the kernel's to choose: one look at this link.
            match nl.link(&bridge.name).await {
                Ok(Some(link)) => {
                    if let Ok(links) = observed.links() {
                        links.push(link.clone());
                    }
                    link
                }
                Ok(None) => {
                    step.fail(StepError::MissingLink { link: bridge.name.clone() });
                    return step;
                }
                Err(e) => {
                    wanted.unknown = true;
                    step.fail(StepError::ListLinks(e));
                    return step;
                }
            }
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        step.fail(StepError::NotABridge { name: link.name, kind: link.kind.unwrap_or_else(|| "physical".into()) });
        return step;
    }
    if link.mtu != bridge.mtu {
        match nl.set_mtu(link.index, bridge.mtu).await {
            Ok(()) => step.change(format!("MTU {}", bridge.mtu)),
            Err(source) => step.fail(StepError::SetMtu { link: link.name.clone(), mtu: bridge.mtu, source }),
        }
    }
    wanted.addresses.push((link.index, bridge.address));
    match observed.addresses() {
        Ok(have) => {
            promote_secondaries(proc_sys, &link.name, &mut step);
            ensure_address(nl, have, &link, bridge.address, &mut step).await;
            remove_unwanted_on_link(nl, have, &link, &[bridge.address], &mut step).await;
        }
        Err(e) => {
            wanted.unknown = true;
            step.fail(e);
        }
    }
    if !link.up {
        match nl.set_up(link.index).await {
            Ok(()) => step.change("up"),
            Err(source) => step.fail(StepError::SetUp { link: link.name.clone(), source }),
        }
    }
    step
}

async fn apply_peer_routes<N: Netlink>(nl: &N, plan: &NetPlan, observed: &mut Observed, wanted: &mut Wanted) -> Step {
    let mut step = Step::default();
    let want: Vec<Route> = plan
        .peer_routes
        .iter()
        .map(|p| Route { dst: p.pod_cidr, gateway: Some(p.via), link: None, protocol: KELSON_PROTO })
        .collect();
    wanted.routes.extend(&want);
    if want.is_empty() {
        return step;
    }
    let links = match observed.links() {
        Ok(links) => links.clone(),
        Err(e) => {
            wanted.unknown = true;
            step.fail(e);
            return step;
        }
    };
    let have = match observed.routes() {
        Ok(have) => have,
        Err(e) => {
            wanted.unknown = true;
            step.fail(e);
            return step;
        }
    };
    for route in want {
        ensure_route(nl, have, &links, route, &mut step).await;
    }
    step
}

async fn remove_stale_addresses<N: Netlink>(nl: &N, observed: &Observed, wanted: &Wanted) -> Step {
    let mut step = Step::default();
    let (have, links) = match (observed.addresses.as_ref(), observed.links.as_ref()) {
        (Ok(a), Ok(l)) => (a, l),
        (Err(e), _) => {
            step.fail(StepError::ListAddresses(e.clone()));
            return step;
        }
        (_, Err(e)) => {
            step.fail(StepError::ListLinks(e.clone()));
            return step;
        }
    };
    for a in have.iter().filter(|a| a.protocol == Some(KELSON_PROTO)) {
        if wanted.addresses.contains(&(a.link, a.addr)) {
            continue;
        }
        let link = link_name(links, a.link);
        match nl.del_address(a.link, a.addr).await {
            Ok(()) => step.change(format!("removed {} from {link}", a.addr)),
            Err(e) if e.is_gone() => {}
            Err(source) => step.fail(StepError::DelAddress { link, addr: a.addr, source }),
        }
    }
    step
}

async fn remove_stale_routes<N: Netlink>(nl: &N, observed: &Observed, wanted: &Wanted) -> Step {
    let mut step = Step::default();
    let (have, links) = match (observed.routes.as_ref(), observed.links.as_ref()) {
        (Ok(r), Ok(l)) => (r, l),
        (Err(e), _) => {
            step.fail(StepError::ListRoutes(e.clone()));
            return step;
        }
        (_, Err(e)) => {
            step.fail(StepError::ListLinks(e.clone()));
            return step;
        }
    };
    for r in have.iter().filter(|r| r.protocol == KELSON_PROTO) {
        if wanted.routes.iter().any(|w| same_route(r, w)) {
            continue;
        }
        match nl.del_route(*r).await {
            Ok(()) => step.change(format!("removed route {}", route_text(r, links))),
            Err(e) if e.is_gone() => {}
            Err(source) => step.fail(StepError::DelRoute { route: route_text(r, links), source }),
        }
    }
    step
}

/// resolv.conf's text for these nameservers and search domains.
pub fn render_resolv_conf(nameservers: &[IpAddr], search: &[String], source: &str) -> String {
    let mut text = format!("# Written by Kelson from {source}; changes are overwritten.\n");
    for ns in nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    text
}

/// Rewrites resolv.conf when its content differs.
pub(crate) fn write_resolv_conf(path: &Path, nameservers: &[IpAddr], search: &[String], source: &str) -> StepResult {
    let text = render_resolv_conf(nameservers, search, source);
    if std::fs::read_to_string(path).is_ok_and(|have| have == text) {
        return StepResult(Ok(None));
    }
    match write_atomic(path, text.as_bytes(), 0o644) {
        Ok(()) => {
            let mut change = if nameservers.is_empty() {
                "no nameservers (written empty)".to_owned()
            } else {
                format!("nameservers {}", nameservers.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" "))
            };
            if !search.is_empty() {
                change.push_str(&format!(", search {}", search.join(" ")));
            }
            StepResult(Ok(Some(change)))
        }
        Err(source) => StepResult(Err(StepError::WriteFile { path: path.to_owned(), source })),
    }
}

/// A one-action step's result: Some(change), None (unchanged), or an error.
pub(crate) struct StepResult(pub(crate) Result<Option<String>, StepError>);

impl StepResult {
    pub(crate) fn outcome(self) -> Outcome {
        let mut step = Step::default();
        match self.0 {
            Ok(Some(change)) => step.change(change),
            Ok(None) => {}
            Err(e) => step.fail(e),
        }
        step.outcome()
    }
}

/// Writes `value` to the sysctl `name` (dotted) under `root` unless it
/// already reads so.
fn set_sysctl(root: &Path, name: &str, value: &str, hint: &'static str) -> StepResult {
    let path = root.join(name.replace('.', "/"));
    StepResult(match std::fs::read_to_string(&path) {
        Ok(have) if have.trim() == value => Ok(None),
        Ok(_) => std::fs::write(&path, value)
            .map(|()| Some(format!("set to {value}")))
            .map_err(|source| StepError::WriteSysctl { path, value: value.into(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StepError::MissingSysctl { path, hint }),
        Err(source) => Err(StepError::ReadSysctl { path, source }),
    })
}

/// The first address of `net` (the bridge's), for callers that only have a CIDR.
pub fn first_address(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(1))
}

#[cfg(test)]
mod tests;
