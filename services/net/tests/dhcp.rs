//! The DHCP client against Debian's dnsmasq in a second namespace, joined
//! by a veth pair. Root only.
#![allow(clippy::unwrap_used)]

mod common;

use common::{KillOnDrop, Netns};
use kelson_config::{Network, Uplink};
use kelson_net::{Host, NetPlan, Networking, Paths, RtNetlink, StdRunner};
use std::path::Path;
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

/// Two namespaces joined by a veth pair: `dsrv` (10.77.0.1) in the server's,
/// `dcli` in the client's.
fn server_and_client() -> (Netns, Netns) {
    let client = Netns::new("dhcp-c");
    let server = Netns::new("dhcp-s");
    server.sh(&["ip", "link", "add", "dsrv", "type", "veth", "peer", "name", "dcli"]);
    server.sh(&["ip", "link", "set", "dcli", "netns", &client.name]);
    server.sh(&["ip", "addr", "add", &format!("{SERVER_ADDR}/24"), "dev", "dsrv"]);
    server.sh(&["ip", "link", "set", "dsrv", "up"]);
    (server, client)
}

/// dnsmasq on `dsrv` handing out `range` (e.g. "10.77.0.50,10.77.0.60"),
/// with T1 3 s and T2 5 s (its shortest lease is 2 minutes) so the client
/// renews during a test.
fn dnsmasq(server: &Netns, range: &str, leases: &Path, log: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &server.name,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
            ])
            .args(["--interface=dsrv", "--bind-interfaces", "--dhcp-authoritative"])
            .arg(format!("--dhcp-range={range},255.255.255.0,2m"))
            .args(["--dhcp-option=option:router,10.77.0.1", "--dhcp-option=option:dns-server,10.77.0.53"])
            .args(["--dhcp-option=26,1400", "--dhcp-option=58,3", "--dhcp-option=59,5"])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--log-facility={}", log.display()))
            .args(["--log-dhcp", "--pid-file="])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting dnsmasq (Debian package dnsmasq-base)"),
    )
}

fn dhcp_plan() -> NetPlan {
    NetPlan::from_config(&Network {
        uplinks: vec![Uplink { name: Some("dcli".into()), dhcp4: true, ..Default::default() }],
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn the_client_leases_renews_and_releases_against_dnsmasq() {
    let (server, client) = server_and_client();
    let dir = tempfile::tempdir().unwrap();

    let leases = dir.path().join("dnsmasq.leases");
    let log = dir.path().join("dnsmasq.log");
    let _dnsmasq = dnsmasq(&server, "10.77.0.50,10.77.0.60", &leases, &log);
    let plan = dhcp_plan();
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

/// The paths a lease takes when its server stops answering or changes its
/// mind: renewals that get no answer give way to a broadcast rebind at T2,
/// and a NAK sends the client back to DISCOVER for a new address.
#[test]
fn the_client_rebinds_at_t2_and_starts_over_after_a_nak() {
    let (server, client) = server_and_client();
    let dir = tempfile::tempdir().unwrap();
    let (leases, log) = (dir.path().join("dnsmasq.leases"), dir.path().join("dnsmasq.log"));
    let mut dnsmasq_process = Some(dnsmasq(&server, "10.77.0.50,10.77.0.60", &leases, &log));
    let dnsmasq_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let plan = dhcp_plan();
    let resolv = dir.path().join("resolv.conf");

    client.block_on(|| async {
        let host = Host {
            netlink: RtNetlink::open().unwrap(),
            runner: StdRunner,
            paths: Paths { resolv_conf: resolv.clone(), ..Paths::default() },
        };
        let mut net = Networking::new(host);
        assert!(net.apply(&plan).await.ok());
        let mut status = net.dhcp_watch("network.uplinks[0]").expect("a DHCP client for the uplink");
        let within = |secs| Duration::from_secs(secs);
        let first = tokio::time::timeout(within(30), status.wait_for(|s| s.state == "bound"))
            .await
            .unwrap()
            .unwrap()
            .lease
            .clone()
            .unwrap();

        // Unicast renewals to the server are dropped; broadcasts still reach it.
        server.sh(&["iptables", "-I", "INPUT", "-p", "udp", "--dport", "67", "-d", SERVER_ADDR, "-j", "DROP"]);
        tokio::time::timeout(within(20), status.wait_for(|s| s.state == "rebinding"))
            .await
            .expect("rebinding after T2")
            .unwrap();
        let rebound = tokio::time::timeout(within(20), status.wait_for(|s| s.state == "bound" && s.renewals >= 1))
            .await
            .unwrap_or_else(|_| panic!("no rebind within 20 s; dnsmasq says:\n{}", dnsmasq_log()))
            .unwrap()
            .clone();
        assert_eq!(rebound.lease.as_ref().map(|l| l.address), Some(first.address), "a rebind keeps the address");
        server.sh(&["iptables", "-D", "INPUT", "-p", "udp", "--dport", "67", "-d", SERVER_ADDR, "-j", "DROP"]);

        // A server that forgot the lease and hands out another range NAKs
        // the next renewal; the client drops the address and leases anew.
        drop(dnsmasq_process.take());
        let _ = std::fs::remove_file(&leases);
        let _second = dnsmasq(&server, "10.77.0.100,10.77.0.110", &leases, &log);
        let renewed = tokio::time::timeout(
            within(30),
            status.wait_for(|s| {
                s.state == "bound" && s.lease.as_ref().is_some_and(|l| l.address.addr().octets()[3] >= 100)
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("no new lease after the NAK within 30 s; dnsmasq says:\n{}", dnsmasq_log()))
        .unwrap()
        .clone();
        let new = renewed.lease.unwrap();
        let addresses = run_here(&["ip", "-4", "addr", "show", "dcli"]);
        assert!(addresses.contains(&new.address.to_string()), "{addresses}");
        assert!(
            !addresses.contains(&format!("{} ", first.address)),
            "the NAKed address is still on the link: {addresses}"
        );
        net.shutdown().await;
    });
    let log_text = dnsmasq_log();
    assert!(log_text.contains("DHCPNAK(dsrv)"), "{log_text}");
}
