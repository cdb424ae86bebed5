//! A config sent through the API: validated as the boot would validate it
//! (the new API layer over the layers the boot read), compared with the
//! config in effect, and sorted into what can change on a running node and
//! what waits for the next boot. Pure: applying is [`super::backend`]'s job.

use kelson_api::types::ConfigProblem;
use kelson_config::{resolve, ConfigError, Effective, Layer, MachineConfig, Source};
use kelson_net::NetPlan;

/// How the API layer is named in errors and in the provenance.
pub const API_DOCUMENT: &str = "API config";

/// A part of the config that a running node takes on without a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveChange {
    /// `files`: written again.
    Files,
    /// `pki`: certificates written again; the API's own reloads.
    Pki,
    /// `staticPods`: manifests written or removed; the pods follow them.
    StaticPods,
    Sysctls,
    /// `network.peerRoutes`: the network is applied again.
    PeerRoutes,
}

impl LiveChange {
    pub fn label(self) -> &'static str {
        match self {
            LiveChange::Files => "files",
            LiveChange::Pki => "pki",
            LiveChange::StaticPods => "static pods",
            LiveChange::Sysctls => "sysctls",
            LiveChange::PeerRoutes => "peer routes",
        }
    }
}

/// An accepted config and what taking it on means.
#[derive(Debug)]
pub struct Planned {
    pub layer: Layer,
    pub effective: Effective,
    pub net_plan: NetPlan,
    /// Old to new, secrets redacted.
    pub diff: String,
    pub live: Vec<LiveChange>,
    /// Changed sections that only the next boot applies.
    pub reboot_required: Vec<String>,
}

fn problem(e: ConfigError) -> ConfigProblem {
    ConfigProblem { document: e.document, path: e.path, reason: e.reason }
}

/// Validates `document` as the API layer over `base` (the other layers the
/// boot read) and compares the result with `current`. `unreadable` lists
/// layers the boot rejected outright: they stop every boot whatever the API
/// layer says, so a config cannot be accepted while there are any.
pub fn plan(
    base: &[Layer],
    unreadable: &[ConfigError],
    current: Option<&Effective>,
    document: &str,
) -> Result<Planned, Vec<ConfigProblem>> {
    let mut problems: Vec<ConfigProblem> = unreadable
        .iter()
        .map(|e| ConfigProblem {
            document: e.document.clone(),
            path: e.path.clone(),
            reason: format!("{} (this layer is rejected at every boot; an API config cannot override it)", e.reason),
        })
        .collect();
    let layer = match Layer::from_document(Source::Api, API_DOCUMENT, document) {
        Ok(layer) => layer,
        Err(errors) => {
            problems.extend(errors.0.into_iter().map(problem));
            return Err(problems);
        }
    };
    let mut layers: Vec<Layer> = base.iter().filter(|l| l.source != Source::Api).cloned().collect();
    layers.push(layer.clone());
    let effective = match resolve(&layers) {
        Ok(effective) => effective,
        Err(errors) => {
            problems.extend(errors.0.into_iter().map(problem));
            return Err(problems);
        }
    };
    let net_plan = match crate::stages::config::plan_network(&effective) {
        Ok(plan) => plan,
        Err(errors) => {
            problems.extend(errors.into_iter().map(problem));
            return Err(problems);
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let old_yaml = current.map(|c| c.config.to_yaml()).unwrap_or_default();
    let diff = unified_diff(&old_yaml, &effective.config.to_yaml());
    let (live, reboot_required) = match current {
        Some(current) => classify(&current.config, &effective.config),
        None => (Vec::new(), vec!["everything: the node booted without an accepted config".to_owned()]),
    };
    Ok(Planned { layer, effective, net_plan, diff, live, reboot_required })
}

fn unified_diff(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new).unified_diff().context_radius(2).header("in effect", "sent").to_string()
}

/// The live changes and the sections waiting for a reboot, old to new.
pub fn classify(old: &MachineConfig, new: &MachineConfig) -> (Vec<LiveChange>, Vec<String>) {
    let mut live = Vec::new();
    let mut reboot = Vec::new();
    let mut check = |changed: bool, outcome: Result<LiveChange, &str>| {
        if changed {
            match outcome {
                Ok(change) => live.push(change),
                Err(section) => reboot.push(section.to_owned()),
            }
        }
    };
    check(old.files != new.files, Ok(LiveChange::Files));
    check(old.pki != new.pki, Ok(LiveChange::Pki));
    check(old.static_pods != new.static_pods, Ok(LiveChange::StaticPods));
    check(old.sysctls != new.sysctls, Ok(LiveChange::Sysctls));
    check(old.network.peer_routes != new.network.peer_routes, Ok(LiveChange::PeerRoutes));
    let without_peers = |c: &MachineConfig| {
        let mut n = c.network.clone();
        n.peer_routes.clear();
        n
    };
    check(without_peers(old) != without_peers(new), Err("network"));
    check(old.node != new.node, Err("node"));
    check(old.cluster != new.cluster, Err("cluster"));
    check(old.time != new.time, Err("time"));
    check(old.kubelet != new.kubelet, Err("kubelet"));
    check(old.kube_proxy != new.kube_proxy, Err("kubeProxy"));
    check(old.kernel_modules != new.kernel_modules, Err("kernelModules"));
    check(old.install != new.install, Err("install"));
    (live, reboot)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: n1\nnetwork:\n  podCIDR: 10.244.1.0/24\n  clusterCIDR: 10.244.0.0/16\n";

    fn base() -> Vec<Layer> {
        vec![Layer::from_document(Source::CloudInit, "user-data", SEED).unwrap()]
    }

    fn current() -> Effective {
        resolve(&base()).unwrap()
    }

    #[test]
    fn a_peer_route_and_a_sysctl_are_live_and_the_diff_shows_them() {
        let doc = "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nsysctls:\n  vm.swappiness: \"10\"\nnetwork:\n  peerRoutes:\n  - podCIDR: 10.244.2.0/24\n    via: 192.168.50.12\n";
        let planned = plan(&base(), &[], Some(&current()), doc).unwrap();
        assert_eq!(planned.live, vec![LiveChange::Sysctls, LiveChange::PeerRoutes]);
        assert!(planned.reboot_required.is_empty(), "{:?}", planned.reboot_required);
        assert!(planned.diff.contains("+  vm.swappiness"), "{}", planned.diff);
        assert!(planned.diff.contains("10.244.2.0/24"), "{}", planned.diff);
        assert_eq!(planned.effective.source_of("sysctls.vm.swappiness").map(|(s, _)| s), Some(Source::Api));
    }

    #[test]
    fn a_new_hostname_waits_for_a_reboot() {
        let doc = "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: n2\n";
        let planned = plan(&base(), &[], Some(&current()), doc).unwrap();
        assert!(planned.live.is_empty());
        assert_eq!(planned.reboot_required, vec!["node".to_owned()]);
    }

    #[test]
    fn every_problem_is_returned_with_its_path() {
        let doc =
            "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  mtu: 10\n  podCIDR: 10.244.9.0/33\n";
        let problems = plan(&base(), &[], Some(&current()), doc).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"network.mtu") && paths.contains(&"network.podCIDR"), "{problems:?}");
        assert!(problems.iter().all(|p| p.document == API_DOCUMENT), "{problems:?}");
    }

    #[test]
    fn a_layer_the_boot_rejects_outright_is_reported_and_blocks_the_config() {
        let unreadable = [ConfigError::new("/dev/vdb", "document", "not YAML".into())];
        let problems = plan(&base(), &unreadable, None, SEED).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].reason.contains("rejected at every boot"), "{problems:?}");
    }

    #[test]
    fn secrets_stay_out_of_the_diff() {
        let doc = "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nfiles:\n- path: /etc/x\n  content: hunter2\n";
        let planned = plan(&base(), &[], Some(&current()), doc).unwrap();
        assert!(!planned.diff.contains("hunter2"), "{}", planned.diff);
        assert_eq!(planned.live, vec![LiveChange::Files]);
    }
}
