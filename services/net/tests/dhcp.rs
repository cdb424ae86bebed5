//! The DHCP client against Debian's dnsmasq in a second namespace, joined
//! by a veth pair. Root only.
#![allow(clippy::unwrap_used)]

mod common;

use common::{KillOnDrop, Netns};
use kelson_config::{Network, Uplink};
use kelson_net::{Host, NetPlan, Networking, Paths, RtNetlink, StdRunner};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SERVER_ADDR: &str = "10.77.0.1";

/// Waits (bounded) for an effect outside the test's control: dnsmasq
/// rewriting its lease file.
fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_client_leases_renews_and_releases_against_dnsmasq() {
    let client = Netns::new("dhcp-c");
    let server = Netns::new("dhcp-s");
    let dir = tempfile::tempdir().unwrap();
    server.sh(&["ip", "link", "add", "dsrv", "type", "veth", "peer", "name", "dcli"]);
    server.sh(&["ip", "link", "set", "dcli", "netns", &client.name]);
    server.sh(&["ip", "addr", "add", &format!("{SERVER_ADDR}/24"), "dev", "dsrv"]);
    server.sh(&["ip", "link", "set", "dsrv", "up"]);

    let leases = dir.path().join("dnsmasq.leases");
    let log = dir.path().join("dnsmasq.log");
    // T1 3 s and T2 5 s (dnsmasq's shortest lease is 2 minutes) so the
    // client renews during the test.
    let _dnsmasq = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &server.name, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0"])
            .args(["--interface=dsrv", "--bind-interfaces", "--dhcp-authoritative"])
            .arg("--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,2m")
            .args(["--dhcp-option=option:router,10.77.0.1", "--dhcp-option=option:dns-server,10.77.0.53"])
            .args(["--dhcp-option=26,1400", "--dhcp-option=58,3", "--dhcp-option=59,5"])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--log-facility={}", log.display()))
            .args(["--log-dhcp", "--pid-file="])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting dnsmasq (Debian package dnsmasq-base)"),
    );

    let plan = NetPlan::from_config(&Network {
        uplinks: vec![Uplink { name: Some("dcli".into()), dhcp4: true, ..Default::default() }],
        ..Default::default()
    })
    .unwrap();
    let resolv = dir.path().join("resolv.conf");
    let dnsmasq_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let (lease, address_line, route_line) = client.block_on(|| async {
        let host = Host {
            netlink: RtNetlink::open().unwrap(),
            runner: StdRunner,
            paths: Paths { resolv_conf: resolv.clone(), ..Paths::default() },
        };
        let mut net = Networking::new(host).with_hostname(Some("kelson-test".into()));
        let report = net.apply(&plan).await;
        assert!(report.ok(), "{report:#?}");
        let mut status = net.dhcp_watch("network.uplinks[0]").expect("a DHCP client for the uplink");
        let bound = tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.state == "bound"))
            .await
            .unwrap_or_else(|_| panic!("no lease within 30 s; dnsmasq says:\n{}", dnsmasq_log()))
            .unwrap()
            .clone();
        let lease = bound.lease.clone().unwrap();
        assert_eq!(bound.last_error, None);
        let address_line = run_here(&["ip", "-4", "addr", "show", "dcli"]);
        let route_line = run_here(&["ip", "-4", "route", "show", "default"]);

        // Renewal at T1 (3 s): wait on the client's own state, not a clock.
        tokio::time::timeout(Duration::from_secs(20), status.wait_for(|s| s.renewals >= 1 && s.state == "bound"))
            .await
            .unwrap_or_else(|_| panic!("no renewal within 20 s; dnsmasq says:\n{}", dnsmasq_log()))
            .unwrap();
        // Applying the same plan again keeps the running client.
        let again = net.apply(&plan).await;
        assert!(again.steps.iter().all(|s| !s.step.starts_with("dhcp4")), "{again:#?}");

        let last = net.shutdown().await;
        assert_eq!(last["network.uplinks[0]"].state, "released");
        assert!(!run_here(&["ip", "-4", "addr", "show", "dcli"]).contains(&lease.address.addr().to_string()));
        (lease, address_line, route_line)
    });

    assert!(lease.address.addr().octets()[3] >= 50 && lease.address.prefix_len() == 24, "{lease:?}");
    assert_eq!((lease.t1_secs, lease.t2_secs, lease.mtu), (3, 5, Some(1400)));
    assert!(address_line.contains(&lease.address.to_string()) && address_line.contains("mtu 1400"), "{address_line}");
    assert!(route_line.contains("default via 10.77.0.1 dev dcli proto 76"), "{route_line}");
    assert!(std::fs::read_to_string(&resolv).unwrap().contains("nameserver 10.77.0.53\n"));
    let log_text = dnsmasq_log();
    assert!(log_text.contains("DHCPDISCOVER(dsrv)") && log_text.contains("DHCPACK(dsrv)"), "{log_text}");
    assert!(log_text.matches("DHCPREQUEST(dsrv)").count() >= 2, "a renewal REQUEST reached dnsmasq:\n{log_text}");
    // dnsmasq drops a released lease from its lease file.
    let addr = lease.address.addr().to_string();
    eventually("dnsmasq to drop the released lease", Duration::from_secs(10), || {
        !std::fs::read_to_string(&leases).unwrap_or_default().contains(&addr)
    });
    assert!(log_text.contains("DHCPRELEASE(dsrv)") || dnsmasq_log().contains("DHCPRELEASE(dsrv)"));
}

/// Runs a command in the current thread's namespace (we are inside block_on).
fn run_here(args: &[&str]) -> String {
    common::text(common::run(Command::new(args[0]).args(&args[1..])))
}
