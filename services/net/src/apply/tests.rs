use super::*;
use crate::fake::FakeNetlink;
use crate::iptables::tests::fake_iptables;
use crate::runner::FakeRunner;
use kelson_config::{Network, PeerRoute, Route as ConfigRoute, Uplink};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn network() -> Network {
    Network {
        uplinks: vec![Uplink {
            mac: Some("52:54:00:12:34:56".into()),
            addresses: vec!["192.168.10.5/24".into()],
            gateway4: Some("192.168.10.1".into()),
            routes: vec![ConfigRoute { to: "172.16.0.0/12".into(), via: "192.168.10.254".into() }],
            mtu: Some(1500),
            ..Default::default()
        }],
        pod_cidr: Some("10.244.1.0/24".into()),
        cluster_cidr: Some("10.244.0.0/16".into()),
        mtu: Some(1460),
        nameservers: vec!["192.168.10.1".into()],
        peer_routes: vec![PeerRoute { pod_cidr: "10.244.2.0/24".into(), via: "192.168.10.6".into() }],
        ..Default::default()
    }
}

fn plan(n: &Network) -> NetPlan {
    NetPlan::from_config(n).unwrap()
}

struct Fixture {
    host: Host<FakeNetlink, FakeRunner>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    for f in [
        "net/ipv4/ip_forward",
        "net/bridge/bridge-nf-call-iptables",
        "net/ipv4/conf/eth0/promote_secondaries",
        "net/ipv4/conf/cbr0/promote_secondaries",
    ] {
        std::fs::create_dir_all(sys.join(f).parent().unwrap()).unwrap();
        std::fs::write(sys.join(f), "0\n").unwrap();
    }
    let netlink = FakeNetlink::new();
    netlink.add_link("eth0", Some(MAC), 9000, None);
    let (runner, _) = fake_iptables();
    let paths = Paths {
        resolv_conf: dir.path().join("resolv.conf"),
        proc_sys: sys,
        iptables: "iptables".into(),
        nat_marker: dir.path().join("run/nat-touched"),
    };
    Fixture { host: Host { netlink, runner, paths }, _dir: dir }
}

fn outcome<'a>(r: &'a ApplyReport, step: &str) -> &'a Outcome {
    r.step(step).unwrap_or_else(|| panic!("no step {step:?} in {r:#?}"))
}

#[tokio::test]
async fn a_fresh_node_is_set_up_in_order() {
    let f = fixture();
    let report = apply(&plan(&network()), &f.host).await;
    assert!(report.ok(), "{report:#?}");
    assert_eq!(
        f.host.netlink.calls(),
        [
            "set_up lo",
            "set_mtu eth0 1500",
            "set_up eth0",
            "add_address eth0 192.168.10.5/24 proto 75",
            "replace_route 172.16.0.0/12 via 192.168.10.254 dev eth0 proto 75",
            "replace_route 0.0.0.0/0 via 192.168.10.1 dev eth0 proto 75",
            "create_bridge cbr0",
            "set_mtu cbr0 1460",
            "add_address cbr0 10.244.1.1/24 proto 75",
            "set_up cbr0",
            "replace_route 10.244.2.0/24 via 192.168.10.6 proto 75",
        ]
    );
    let steps: Vec<&str> = report.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(
        steps,
        [
            "lo",
            "uplink network.uplinks[0] (eth0)",
            "resolv.conf",
            "bridge cbr0",
            "sysctl net.ipv4.ip_forward",
            "sysctl net.bridge.bridge-nf-call-iptables",
            "masquerade",
            "peer routes",
            "stale addresses",
            "stale routes",
        ]
    );
    let sys = &f.host.paths.proc_sys;
    assert_eq!(std::fs::read_to_string(sys.join("net/ipv4/ip_forward")).unwrap(), "1");
    assert_eq!(std::fs::read_to_string(sys.join("net/bridge/bridge-nf-call-iptables")).unwrap(), "1");
    let resolv = std::fs::read_to_string(&f.host.paths.resolv_conf).unwrap();
    assert!(resolv.ends_with("\nnameserver 192.168.10.1\n"), "{resolv}");
}

#[tokio::test]
async fn applying_the_same_plan_twice_changes_nothing_the_second_time() {
    let f = fixture();
    let p = plan(&network());
    apply(&p, &f.host).await;
    let state = f.host.netlink.snapshot();
    f.host.netlink.clear_calls();
    let iptables_calls = f.host.runner.calls().len();

    let again = apply(&p, &f.host).await;
    assert!(again.steps.iter().all(|s| s.outcome == Outcome::Unchanged), "{again:#?}");
    assert_eq!(f.host.netlink.calls(), Vec::<String>::new());
    assert_eq!(f.host.netlink.snapshot(), state);
    let later = &f.host.runner.calls()[iptables_calls..];
    assert_eq!(later, ["iptables-save -t nat"], "a second pass only reads the table");
}

#[tokio::test]
async fn a_changed_plan_removes_what_kelson_set_and_no_longer_wants() {
    let f = fixture();
    apply(&plan(&network()), &f.host).await;
    // Someone else's route and address: never Kelson's to remove.
    let eth0 = f.host.netlink.links().await.unwrap().into_iter().find(|l| l.name == "eth0").unwrap();
    f.host.netlink.add_foreign_address(eth0.index, "192.168.10.99/24".parse().unwrap(), None);
    f.host.netlink.add_foreign_route(Route {
        dst: "10.99.0.0/16".parse().unwrap(),
        gateway: Some("192.168.10.1".parse().unwrap()),
        link: Some(eth0.index),
        protocol: 4,
    });
    f.host.netlink.clear_calls();

    let mut changed = network();
    changed.uplinks[0].addresses = vec!["192.168.10.7/24".into()];
    changed.uplinks[0].routes.clear();
    changed.peer_routes = vec![PeerRoute { pod_cidr: "10.244.3.0/24".into(), via: "192.168.10.8".into() }];
    let report = apply(&plan(&changed), &f.host).await;
    assert!(report.ok(), "{report:#?}");
    assert_eq!(
        f.host.netlink.calls(),
        [
            "add_address eth0 192.168.10.7/24 proto 75",
            "del_address eth0 192.168.10.5/24",
            "replace_route 10.244.3.0/24 via 192.168.10.8 proto 75",
            "del_route 172.16.0.0/12 via 192.168.10.254 proto 75",
            "del_route 10.244.2.0/24 via 192.168.10.6 proto 75",
        ]
    );
    let (_, addresses, routes) = f.host.netlink.snapshot();
    assert!(addresses.iter().any(|a| a.addr.to_string() == "192.168.10.99/24"));
    assert!(routes.iter().any(|r| r.dst.to_string() == "10.99.0.0/16"));
}

#[tokio::test]
async fn an_uplink_whose_gateway_changes_gets_its_default_route_replaced() {
    let f = fixture();
    apply(&plan(&network()), &f.host).await;
    f.host.netlink.clear_calls();
    let mut changed = network();
    changed.uplinks[0].gateway4 = Some("192.168.10.2".into());
    apply(&plan(&changed), &f.host).await;
    assert_eq!(f.host.netlink.calls(), ["replace_route 0.0.0.0/0 via 192.168.10.2 dev eth0 proto 75"]);
}

#[tokio::test]
async fn an_unknown_interface_names_the_field_and_the_other_steps_still_run() {
    let f = fixture();
    let mut n = network();
    n.uplinks[0].mac = None;
    n.uplinks[0].name = Some("eth9".into());
    let report = apply(&plan(&n), &f.host).await;
    assert_eq!(
        outcome(&report, "uplink network.uplinks[0]"),
        &Outcome::Failed { errors: vec!["network.uplinks[0].name: no link with name eth9".into()], changes: vec![] }
    );
    assert!(matches!(outcome(&report, "bridge cbr0"), Outcome::Changed { .. }));
    assert!(matches!(outcome(&report, "masquerade"), Outcome::Changed { .. }));
    assert!(!report.ok());
}

#[tokio::test]
async fn a_failing_bridge_address_is_reported_and_later_steps_still_run() {
    let f = fixture();
    f.host.netlink.fail_next("add_address", libc::EPERM);
    let mut n = network();
    n.uplinks.clear();
    n.peer_routes.clear();
    let report = apply(&plan(&n), &f.host).await;
    assert_eq!(
        outcome(&report, "bridge cbr0"),
        &Outcome::Failed {
            errors: vec!["adding address 10.244.1.1/24 to link cbr0: Operation not permitted (os error 1)".into()],
            changes: vec![
                "created bridge cbr0".into(),
                "MTU 1460".into(),
                "promote_secondaries on".into(),
                "up".into()
            ],
        }
    );
    assert!(matches!(outcome(&report, "masquerade"), Outcome::Changed { .. }));
    // The next pass completes what failed.
    let again = apply(&plan(&n), &f.host).await;
    assert_eq!(outcome(&again, "bridge cbr0"), &Outcome::Changed { changes: vec!["address 10.244.1.1/24".into()] });
}

#[tokio::test]
async fn a_missing_bridge_netfilter_sysctl_says_to_load_br_netfilter() {
    let f = fixture();
    std::fs::remove_file(f.host.paths.proc_sys.join("net/bridge/bridge-nf-call-iptables")).unwrap();
    let report = apply(&plan(&network()), &f.host).await;
    let path = f.host.paths.proc_sys.join("net/bridge/bridge-nf-call-iptables");
    assert_eq!(
        outcome(&report, "sysctl net.bridge.bridge-nf-call-iptables"),
        &Outcome::Failed {
            errors: vec![format!("{} does not exist (load the br_netfilter module first)", path.display())],
            changes: vec![]
        }
    );
    assert!(matches!(outcome(&report, "sysctl net.ipv4.ip_forward"), Outcome::Changed { .. }));
}

#[tokio::test]
async fn a_cbr0_that_is_not_a_bridge_is_refused_not_reused() {
    let f = fixture();
    f.host.netlink.add_link("cbr0", None, 1500, Some("dummy"));
    let report = apply(&plan(&network()), &f.host).await;
    assert_eq!(
        outcome(&report, "bridge cbr0"),
        &Outcome::Failed { errors: vec!["cbr0 exists but is a dummy link, not a bridge".into()], changes: vec![] }
    );
}

#[tokio::test]
async fn a_pass_dumps_links_addresses_and_routes_once_and_lists_nothing_again() {
    let f = fixture();
    let report = apply(&plan(&network()), &f.host).await;
    assert!(report.ok(), "{report:#?}");
    // The bridge it created is looked up once, for the index the kernel gave it.
    assert_eq!(f.host.netlink.reads(), ["links", "addresses", "routes", "link cbr0"]);
    f.host.netlink.clear_reads();
    let mut n = network();
    n.peer_routes.push(PeerRoute { pod_cidr: "10.244.3.0/24".into(), via: "192.168.10.7".into() });
    n.uplinks[0].addresses = vec!["192.168.10.9/24".into()];
    let report = apply(&plan(&n), &f.host).await;
    assert!(report.ok() && !report.changes().is_empty(), "{report:#?}");
    assert_eq!(f.host.netlink.reads(), ["links", "addresses", "routes"]);
}

#[tokio::test]
async fn a_configured_link_renamed_later_gets_its_routes_again() {
    // Linux deletes a link's IPv4 routes when it goes down, as renaming
    // needs: the pass must not count on the routes it saw before.
    let f = fixture();
    apply(&plan(&network()), &f.host).await;
    let sys = &f.host.paths.proc_sys;
    std::fs::create_dir_all(sys.join("net/ipv4/conf/lan0")).unwrap();
    std::fs::write(sys.join("net/ipv4/conf/lan0/promote_secondaries"), "1\n").unwrap();
    f.host.netlink.clear_calls();
    let mut n = network();
    n.uplinks[0].set_name = Some("lan0".into());
    let report = apply(&plan(&n), &f.host).await;
    assert!(report.ok(), "{report:#?}");
    let calls = f.host.netlink.calls();
    assert!(calls.contains(&"replace_route 0.0.0.0/0 via 192.168.10.1 dev lan0 proto 75".to_owned()), "{calls:?}");
    assert!(
        calls.contains(&"replace_route 172.16.0.0/12 via 192.168.10.254 dev lan0 proto 75".to_owned()),
        "{calls:?}"
    );
}

#[tokio::test]
async fn when_the_kernel_cannot_be_read_nothing_is_removed() {
    let f = fixture();
    apply(&plan(&network()), &f.host).await;
    f.host.netlink.clear_calls();
    f.host.netlink.fail_next("routes", libc::ENOBUFS);
    let mut n = network();
    n.peer_routes.clear();
    let report = apply(&plan(&n), &f.host).await;
    assert!(matches!(outcome(&report, "stale routes"), Outcome::Skipped { .. }), "{report:#?}");
    assert!(f.host.netlink.calls().is_empty(), "{:?}", f.host.netlink.calls());
}

#[tokio::test]
async fn a_dhcp_uplink_is_prepared_and_handed_back_for_the_client() {
    let f = fixture();
    let mut n = network();
    n.uplinks[0].addresses.clear();
    n.uplinks[0].gateway4 = None;
    n.uplinks[0].routes.clear();
    n.uplinks[0].dhcp4 = true;
    let report = apply(&plan(&n), &f.host).await;
    assert_eq!(report.dhcp_uplinks.len(), 1);
    assert_eq!(report.dhcp_uplinks[0].link.name, "eth0");
    assert_eq!(report.dhcp_uplinks[0].field, "network.uplinks[0]");
}

#[tokio::test]
async fn a_link_with_set_name_is_taken_down_renamed_and_brought_up_before_it_is_configured() {
    let f = fixture();
    let sys = &f.host.paths.proc_sys;
    std::fs::create_dir_all(sys.join("net/ipv4/conf/lan0")).unwrap();
    std::fs::write(sys.join("net/ipv4/conf/lan0/promote_secondaries"), "0\n").unwrap();
    let eth0 = f.host.netlink.snapshot().0.iter().find(|l| l.name == "eth0").unwrap().index;
    f.host.netlink.set_up(eth0).await.unwrap();
    f.host.netlink.clear_calls();
    let mut n = network();
    n.uplinks[0].set_name = Some("lan0".into());
    n.search_domains = vec!["corp.example".into()];
    let report = apply(&plan(&n), &f.host).await;
    assert!(report.ok(), "{report:#?}");
    let calls = f.host.netlink.calls();
    assert_eq!(calls[..5], ["set_up lo", "set_down eth0", "rename eth0 lan0", "set_mtu lan0 1500", "set_up lan0",]);
    assert!(calls.contains(&"add_address lan0 192.168.10.5/24 proto 75".to_owned()), "{calls:?}");
    assert!(calls.contains(&"replace_route 0.0.0.0/0 via 192.168.10.1 dev lan0 proto 75".to_owned()), "{calls:?}");
    let resolv = std::fs::read_to_string(&f.host.paths.resolv_conf).unwrap();
    assert!(resolv.ends_with("nameserver 192.168.10.1\nsearch corp.example\n"), "{resolv}");

    // A second apply finds the link under its new name and changes nothing.
    f.host.netlink.clear_calls();
    let again = apply(&plan(&n), &f.host).await;
    assert!(again.ok() && again.changes().is_empty(), "{again:#?}");
    assert!(!f.host.netlink.calls().iter().any(|c| c.starts_with("rename")));
}

#[tokio::test]
async fn a_link_picked_by_name_is_found_under_its_new_name_on_the_next_apply() {
    let f = fixture();
    let sys = &f.host.paths.proc_sys;
    std::fs::create_dir_all(sys.join("net/ipv4/conf/wan0")).unwrap();
    std::fs::write(sys.join("net/ipv4/conf/wan0/promote_secondaries"), "0\n").unwrap();
    let mut n = network();
    n.uplinks[0].mac = None;
    n.uplinks[0].name = Some("eth0".into());
    n.uplinks[0].set_name = Some("wan0".into());
    let first = apply(&plan(&n), &f.host).await;
    assert!(first.ok(), "{first:#?}");
    assert!(f.host.netlink.calls().contains(&"rename eth0 wan0".to_owned()));
    let again = apply(&plan(&n), &f.host).await;
    assert!(again.ok() && again.changes().is_empty(), "{again:#?}");
}

#[tokio::test]
async fn a_failed_rename_stops_that_uplink_and_says_which_link_and_name() {
    let f = fixture();
    f.host.netlink.fail_next("rename", libc::EEXIST);
    let mut n = network();
    n.uplinks[0].set_name = Some("lan0".into());
    let report = apply(&plan(&n), &f.host).await;
    assert!(!report.ok());
    let text = format!("{:?}", outcome(&report, "uplink network.uplinks[0]"));
    assert!(text.contains("renaming link eth0 to lan0"), "{text}");
    assert!(!f
        .host
        .netlink
        .calls()
        .iter()
        .any(|c| c.starts_with("add_address lan0") || c.starts_with("add_address eth0")));
}

#[tokio::test]
async fn without_nameservers_a_missing_resolv_conf_is_made_empty_and_an_existing_one_left_alone() {
    let f = fixture();
    let mut n = network();
    n.nameservers.clear();
    let report = apply(&plan(&n), &f.host).await;
    assert!(report.ok(), "{report:#?}");
    let made = std::fs::read_to_string(&f.host.paths.resolv_conf).unwrap();
    assert!(made.starts_with("# Written by Kelson") && !made.lines().any(|l| l.starts_with("nameserver")), "{made}");

    std::fs::write(&f.host.paths.resolv_conf, "nameserver 10.0.0.53\n").unwrap();
    let again = apply(&plan(&n), &f.host).await;
    assert!(matches!(outcome(&again, "resolv.conf"), Outcome::Skipped { .. }), "{again:#?}");
    assert_eq!(std::fs::read_to_string(&f.host.paths.resolv_conf).unwrap(), "nameserver 10.0.0.53\n");
}
