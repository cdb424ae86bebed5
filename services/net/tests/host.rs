//! kelson-net against a real kernel, real iptables (nft) and the real CNI
//! bridge plugin, inside network namespaces each test creates and deletes.
//! Root only: without root every test fails saying so.
#![allow(clippy::unwrap_used)]

mod common;

use common::Netns;
use kelson_config::{Network, PeerRoute, Route, Uplink};
use kelson_net::{apply, Host, NetPlan, Outcome, Paths, RtNetlink, StdRunner};
use std::path::Path;

fn host(dir: &Path) -> Host<RtNetlink, StdRunner> {
    Host {
        netlink: RtNetlink::open().expect("netlink socket"),
        runner: StdRunner,
        paths: Paths { resolv_conf: dir.join("resolv.conf"), nat_marker: dir.join("nat-touched"), ..Paths::default() },
    }
}

fn network(mac: &str) -> Network {
    Network {
        uplinks: vec![Uplink {
            mac: Some(mac.into()),
            addresses: vec!["192.168.77.5/24".into()],
            gateway4: Some("192.168.77.1".into()),
            routes: vec![Route { to: "172.16.0.0/12".into(), via: "192.168.77.254".into() }],
            mtu: Some(1400),
            ..Default::default()
        }],
        pod_cidr: Some("10.244.1.0/24".into()),
        cluster_cidr: Some("10.244.0.0/16".into()),
        mtu: Some(1460),
        nameservers: vec!["192.168.77.1".into()],
        peer_routes: vec![PeerRoute { pod_cidr: "10.244.2.0/24".into(), via: "192.168.77.6".into() }],
        ..Default::default()
    }
}

/// Everything apply can touch, as text, with counters and generated lines
/// stripped so two reads of an unchanged state compare equal.
fn state(ns: &Netns) -> String {
    // Bridge timers tick; they are not configuration.
    let links = ns.sh(&["ip", "-o", "-d", "link", "show"]);
    let mut words = links.split(' ').filter(|w| !w.is_empty()).peekable();
    let mut kept = Vec::new();
    while let Some(w) = words.next() {
        if w.ends_with("_timer") {
            words.next();
        } else {
            kept.push(w);
        }
    }
    let links = kept.join(" ");
    let addrs = ns.sh(&["ip", "-o", "-4", "addr", "show"]);
    let routes = ns.sh(&["ip", "-4", "route", "show", "table", "all"]);
    let rules: String = ns
        .sh(&["iptables-save", "-t", "nat"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| if l.starts_with(':') { l.split(" [").next().unwrap_or(l) } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    // Link counters and lifetimes are not configuration.
    let addrs: String = addrs.lines().map(|l| l.split("valid_lft").next().unwrap_or(l)).collect::<Vec<_>>().join("\n");
    format!("{links}\n{addrs}\n{routes}\n{rules}")
}

const MAC: &str = "52:54:00:77:00:05";

/// The uplink: one end of a veth pair (this kernel may lack the dummy
/// driver), its peer up so up0 has carrier.
fn add_uplink(ns: &Netns) {
    ns.sh(&["ip", "link", "add", "up0", "address", MAC, "type", "veth", "peer", "name", "up0peer"]);
    ns.sh(&["ip", "link", "set", "up0peer", "up"]);
}

#[test]
fn apply_sets_up_bridge_uplink_routes_sysctls_and_one_masquerade_rule() {
    let ns = Netns::new("apply");
    add_uplink(&ns);
    let dir = tempfile::tempdir().unwrap();
    let plan = NetPlan::from_config(&network(MAC)).unwrap();
    let report = ns.block_on(|| async { apply(&plan, &host(dir.path())).await });
    assert!(report.ok(), "{report:#?}");

    let cbr0 = ns.sh(&["ip", "-d", "link", "show", "cbr0"]);
    assert!(cbr0.contains("mtu 1460") && cbr0.contains("bridge") && cbr0.contains(",UP"), "{cbr0}");
    assert!(ns.sh(&["ip", "-4", "addr", "show", "cbr0"]).contains("inet 10.244.1.1/24"));
    let up0 = ns.sh(&["ip", "addr", "show", "up0"]);
    assert!(up0.contains("mtu 1400") && up0.contains("inet 192.168.77.5/24"), "{up0}");
    assert!(ns.sh(&["ip", "link", "show", "lo"]).contains("UP"));
    let kelson_routes = ns.sh(&["ip", "-4", "route", "show", "proto", "75"]);
    for want in [
        "default via 192.168.77.1 dev up0",
        "172.16.0.0/12 via 192.168.77.254 dev up0",
        "10.244.2.0/24 via 192.168.77.6 dev up0",
    ] {
        assert!(kelson_routes.contains(want), "missing {want:?} in:\n{kelson_routes}");
    }
    let nat = ns.sh(&["iptables-save", "-t", "nat"]);
    assert_eq!(nat.matches("-A POSTROUTING -j KELSON-POSTROUTING").count(), 1, "{nat}");
    let masquerade: Vec<&str> = nat.lines().filter(|l| l.starts_with("-A KELSON-POSTROUTING")).collect();
    assert_eq!(masquerade, ["-A KELSON-POSTROUTING ! -d 10.244.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE"]);
    assert_eq!(ns.sh(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "1");
    assert_eq!(ns.sh(&["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"]).trim(), "1");
    assert!(std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap().contains("nameserver 192.168.77.1\n"));
}

#[test]
fn applying_twice_leaves_the_same_kernel_state_and_reports_no_change() {
    let ns = Netns::new("twice");
    add_uplink(&ns);
    let dir = tempfile::tempdir().unwrap();
    let plan = NetPlan::from_config(&network(MAC)).unwrap();
    ns.block_on(|| async { apply(&plan, &host(dir.path())).await });
    let first = state(&ns);
    let again = ns.block_on(|| async { apply(&plan, &host(dir.path())).await });
    assert_eq!(state(&ns), first);
    let changed: Vec<_> = again.steps.iter().filter(|s| s.outcome != Outcome::Unchanged).collect();
    assert!(changed.is_empty(), "{changed:#?}");
}

#[test]
fn a_changed_plan_converges_and_leaves_other_routes_alone() {
    let ns = Netns::new("converge");
    add_uplink(&ns);
    let dir = tempfile::tempdir().unwrap();
    ns.block_on(|| async { apply(&NetPlan::from_config(&network(MAC)).unwrap(), &host(dir.path())).await });
    // Not Kelson's: must survive. (Device-only, because a route via a
    // gateway in the old subnet would be flushed by the kernel itself when
    // the old address goes.)
    ns.sh(&["ip", "route", "add", "10.99.0.0/16", "dev", "up0", "proto", "static"]);

    let mut changed = network(MAC);
    changed.uplinks[0].addresses = vec!["192.168.77.7/24".into()];
    changed.uplinks[0].routes.clear();
    changed.cluster_cidr = Some("10.240.0.0/12".into());
    changed.peer_routes = vec![PeerRoute { pod_cidr: "10.244.3.0/24".into(), via: "192.168.77.8".into() }];
    let report = ns.block_on(|| async { apply(&NetPlan::from_config(&changed).unwrap(), &host(dir.path())).await });
    assert!(report.ok(), "{report:#?}");

    let addrs = ns.sh(&["ip", "-4", "addr", "show", "up0"]);
    assert!(addrs.contains("192.168.77.7/24") && !addrs.contains("192.168.77.5/24"), "{addrs}");
    let routes = ns.sh(&["ip", "-4", "route", "show"]);
    assert!(routes.contains("10.244.3.0/24 via 192.168.77.8"), "{routes}");
    assert!(!routes.contains("10.244.2.0/24") && !routes.contains("172.16.0.0/12"), "{routes}");
    assert!(routes.contains("10.99.0.0/16 dev up0 proto static"), "{routes}");
    let nat = ns.sh(&["iptables-save", "-t", "nat"]);
    let masquerade: Vec<&str> = nat.lines().filter(|l| l.starts_with("-A KELSON-POSTROUTING")).collect();
    assert_eq!(masquerade, ["-A KELSON-POSTROUTING ! -d 10.240.0.0/12 -m addrtype ! --dst-type LOCAL -j MASQUERADE"]);
    assert_eq!(nat.matches("-j KELSON-POSTROUTING").count(), 1, "{nat}");

    // No cluster at all: Kelson's chain and jump go, the bridge stays.
    let mut bare = changed.clone();
    bare.pod_cidr = None;
    bare.cluster_cidr = None;
    bare.peer_routes.clear();
    ns.block_on(|| async { apply(&NetPlan::from_config(&bare).unwrap(), &host(dir.path())).await });
    let nat = ns.sh(&["iptables-save", "-t", "nat"]);
    assert!(!nat.contains("KELSON-POSTROUTING"), "{nat}");
}

#[test]
fn an_unknown_uplink_is_reported_by_field_and_the_bridge_still_comes_up() {
    let ns = Netns::new("unknown");
    let dir = tempfile::tempdir().unwrap();
    let plan = NetPlan::from_config(&network("52:54:00:00:00:99")).unwrap();
    let report = ns.block_on(|| async { apply(&plan, &host(dir.path())).await });
    assert_eq!(
        report.step("uplink network.uplinks[0]"),
        Some(&Outcome::Failed {
            errors: vec!["network.uplinks[0].mac: no link with MAC 52:54:00:00:00:99".into()],
            changes: vec![]
        })
    );
    assert!(ns.sh(&["ip", "-4", "addr", "show", "cbr0"]).contains("10.244.1.1/24"));
    // The peer route's gateway is unreachable without the uplink: reported, not fatal.
    assert!(matches!(report.step("peer routes"), Some(Outcome::Failed { .. })), "{report:#?}");
}

#[test]
fn an_uplink_with_set_name_is_renamed_then_addressed_and_routed_under_its_new_name() {
    let ns = Netns::new("rename");
    add_uplink(&ns);
    // The link is up before, as a NIC the kernel or an earlier fetch raised.
    ns.sh(&["ip", "link", "set", "up0", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = network(MAC);
    config.uplinks[0].set_name = Some("lan0".into());
    config.search_domains = vec!["corp.example".into(), "lab.example".into()];
    let plan = NetPlan::from_config(&config).unwrap();
    let report = ns.block_on(|| async { apply(&plan, &host(dir.path())).await });
    assert!(report.ok(), "{report:#?}");

    let links = ns.sh(&["ip", "-o", "link", "show"]);
    assert!(!links.contains("up0:") && !links.contains("up0@"), "up0 is still there:\n{links}");
    let lan0 = ns.sh(&["ip", "addr", "show", "lan0"]);
    assert!(lan0.contains(MAC) && lan0.contains(",UP") && lan0.contains("mtu 1400"), "{lan0}");
    assert!(lan0.contains("inet 192.168.77.5/24"), "{lan0}");
    let routes = ns.sh(&["ip", "-4", "route", "show", "proto", "75"]);
    assert!(routes.contains("default via 192.168.77.1 dev lan0"), "{routes}");
    assert!(routes.contains("172.16.0.0/12 via 192.168.77.254 dev lan0"), "{routes}");
    let resolv = std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 192.168.77.1\nsearch corp.example lab.example\n"), "{resolv}");

    // Applied again (a config reload): found by MAC under the new name, nothing changes.
    let first = state(&ns);
    let again = ns.block_on(|| async { apply(&plan, &host(dir.path())).await });
    assert_eq!(state(&ns), first);
    let changed: Vec<_> = again.steps.iter().filter(|s| s.outcome != Outcome::Unchanged).collect();
    assert!(changed.is_empty(), "{changed:#?}");
}
