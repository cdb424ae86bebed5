//! Pod networking against a real kernel: Kelson's own veth attach/detach,
//! and Debian's CNI `bridge` plugin run with Kelson's conflist. Root only.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run, text, Netns};
use kelson_config::Network;
use kelson_net::{apply, cni, Host, NetPlan, Paths, PodNetwork, RtNetlink, StdRunner};
use std::io::{Read, Write};
use std::process::{Command, Stdio};

fn plan() -> NetPlan {
    NetPlan::from_config(&Network {
        pod_cidr: Some("10.244.1.0/24".into()),
        cluster_cidr: Some("10.244.0.0/16".into()),
        mtu: Some(1460),
        ..Default::default()
    })
    .unwrap()
}

/// A node namespace with cbr0 applied.
fn node(tag: &str, dir: &std::path::Path) -> Netns {
    let node = Netns::new(tag);
    let report = node.block_on(|| async {
        let host = Host {
            netlink: RtNetlink::open().unwrap(),
            runner: StdRunner,
            paths: Paths {
                resolv_conf: dir.join("resolv.conf"),
                nat_marker: dir.join("nat-touched"),
                ..Paths::default()
            },
        };
        apply(&plan(), &host).await
    });
    assert!(report.ok(), "{report:#?}");
    node
}

#[test]
fn attach_gives_the_pod_eth0_an_address_and_a_default_route_and_detach_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = node("attach", dir.path());
    let pod = Netns::new("attach-pod");
    let state = dir.path().join("state");
    let bridge = plan().bridge.unwrap();

    let attachment = node.block_on(|| async {
        let pods = PodNetwork::new(RtNetlink::open().unwrap(), bridge.clone(), &state);
        let a = pods.attach(&pod.path, "pod-1").await.unwrap();
        assert_eq!(pods.attach(&pod.path, "pod-1").await.unwrap(), a, "attaching again changes nothing");
        a
    });
    assert_eq!(attachment.ip.to_string(), "10.244.1.2/24");

    let eth0 = pod.sh(&["ip", "-4", "addr", "show", "eth0"]);
    assert!(eth0.contains("inet 10.244.1.2/24") && eth0.contains("mtu 1460") && eth0.contains("UP"), "{eth0}");
    assert!(pod.sh(&["ip", "link", "show", "lo"]).contains("UP"));
    assert!(pod.sh(&["ip", "-4", "route"]).contains("default via 10.244.1.1 dev eth0"));
    let host_end = node.sh(&["ip", "link", "show", &attachment.host_veth]);
    assert!(host_end.contains("master cbr0") && host_end.contains("UP"), "{host_end}");

    // Traffic flows node → pod over cbr0: a TCP connect to a listener in the pod.
    let listener = pod.block_on(|| async { std::net::TcpListener::bind("10.244.1.2:0").unwrap() });
    let port = listener.local_addr().unwrap().port();
    node.block_on(|| async {
        let mut conn = std::net::TcpStream::connect(("10.244.1.2", port)).expect("connecting from the node to the pod");
        conn.write_all(b"hi").unwrap();
    });
    let (mut accepted, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip().to_string(), "10.244.1.1", "the node reaches the pod from the bridge address");
    let mut got = String::new();
    accepted.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hi");

    node.block_on(|| async {
        let pods = PodNetwork::new(RtNetlink::open().unwrap(), bridge.clone(), &state);
        pods.detach("pod-1").await.unwrap();
        assert!(pods.allocations().await.unwrap().is_empty());
    });
    assert!(!node.sh(&["ip", "link", "show"]).contains(&attachment.host_veth));
    assert!(!pod.sh(&["ip", "link", "show"]).contains("eth0"));
}

#[test]
fn debians_cni_bridge_plugin_accepts_the_conflist_and_uses_the_upper_half() {
    let dir = tempfile::tempdir().unwrap();
    let node = node("cni", dir.path());
    let pod = Netns::new("cni-pod");
    let bridge = plan().bridge.unwrap();

    // The conflist as written, then the bridge plugin's entry as the CNI
    // runtime hands it over (with name and cniVersion).
    let path = dir.path().join("net.d/10-kelson.conflist");
    cni::write_conflist(&path, &bridge).unwrap();
    let conflist: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["ipam"]["dataDir"] = dir.path().join("cni-ipam").to_string_lossy().into();
    let conf = conf.to_string();

    let cni = |command: &str| {
        let netns = pod.path.to_string_lossy().into_owned();
        node.block_on(|| async {
            let mut child = Command::new("/usr/lib/cni/bridge")
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", "kelson-cni-test")
                .env("CNI_NETNS", &netns)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/usr/lib/cni")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("running /usr/lib/cni/bridge (containernetworking-plugins)");
            child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "bridge {command}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let result: serde_json::Value = serde_json::from_str(&cni("ADD")).unwrap();
    let ip = result["ips"][0]["address"].as_str().unwrap().to_owned();
    assert_eq!(ip, "10.244.1.128/24", "the first address of CNI's half: {result}");
    assert_eq!(result["ips"][0]["gateway"], "10.244.1.1");

    let eth0 = pod.sh(&["ip", "-4", "addr", "show", "eth0"]);
    assert!(eth0.contains("inet 10.244.1.128/24") && eth0.contains("mtu 1460"), "{eth0}");
    assert!(pod.sh(&["ip", "-4", "route"]).contains("default via 10.244.1.1 dev eth0"));
    // The plugin found Kelson's address on cbr0 and left it the only one.
    let cbr0 = node.sh(&["ip", "-4", "addr", "show", "cbr0"]);
    assert_eq!(cbr0.matches("inet ").count(), 1, "{cbr0}");
    // ipMasq false: the only NAT rule is Kelson's.
    let nat = text(run(Command::new("ip").args(["netns", "exec", &node.name, "iptables-save", "-t", "nat"])));
    assert!(!nat.contains("CNI-"), "{nat}");

    cni("DEL");
    assert!(!pod.sh(&["ip", "link", "show"]).contains("eth0"));
}
