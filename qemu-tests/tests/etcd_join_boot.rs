//! Three control-plane nodes form one etcd cluster with no one running
//! etcdctl: the first from `kelsonctl gen cluster`, the other two added
//! afterwards with `kelsonctl gen node --role control-plane`, each joining
//! at its first boot through PID 1 (held back, added as a learner,
//! started with etcd's `--initial-cluster`, promoted). etcd only: every
//! seed keeps the etcd static pod alone, and the kubelet and kube-proxy are
//! pointed at a program that is not there, to keep the emulated CPU load
//! down (three VMs under TCG on a shared machine).
//!
//! The nodes share a UDP multicast socket network (the node network); each
//! also has QEMU's user network with hostfwds to its etcd (the manifest
//! also listens on the user network's address; its certificate names
//! 127.0.0.1, which the host dials) and its management API. The host
//! writes and reads through etcd-client with the cluster's
//! `apiserver-etcd-client` certificate.
//!
//! Checked: all three voting members, each node's status saying so; a key
//! written through the first is read on the third; `kill -9` of the third's
//! etcd keeps the cluster writable, and once PID 1's pod manager has
//! restarted it the member has caught up with what was written meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use qemu_tests::kelsonctl::Kelsonctl;
use qemu_tests::{free_loopback_port, guest_layer_with_agent, ImagePaths, Vm, VmBuilder};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CLUSTER: &str = "e";
const NODES: [&str; 3] = ["e-cp-1", "e-cp-2", "e-cp-3"];
const NODE_MACS: [&str; 3] = ["52:54:00:6e:00:10", "52:54:00:6e:00:11", "52:54:00:6e:00:12"];
const USER_MACS: [&str; 3] = ["52:54:00:6e:01:10", "52:54:00:6e:01:11", "52:54:00:6e:01:12"];
/// Each node's address on its own QEMU user network, where the hostfwds land.
const USER_ADDRESS: &str = "10.0.2.15";
/// A program the nodes do not have: the kubelet and kube-proxy stay absent.
const ABSENT: &str = "/usr/bin/not-in-this-test";
const BOOT: Duration = Duration::from_secs(900);
/// From the joining nodes' boot to three voting members.
const MEMBERS_UP: Duration = Duration::from_secs(1500);
/// A killed etcd restarted by the pod manager, and caught up.
const CATCH_UP: Duration = Duration::from_secs(600);
const AGENT: Duration = Duration::from_secs(120);

/// The seed of `node` with only its etcd static pod, listening on the user
/// network too; its uplinks chosen by MAC; no kubelet, kube-proxy or
/// cluster reporter.
fn etcd_only_seed(out: &Path, index: usize) -> PathBuf {
    qemu_tests::seed::edited(&out.join(format!("nodes/{}", NODES[index])), "etcd-only", |config| {
        let pods = config["staticPods"].as_array_mut().unwrap();
        pods.retain(|p| p["name"] == "etcd.yaml");
        let manifest = pods[0]["manifest"].as_str().unwrap();
        let mut manifest: Value = serde_saphyr::from_str(manifest).unwrap();
        let command = manifest["spec"]["containers"][0]["command"].as_array_mut().unwrap();
        for argument in command.iter_mut() {
            if let Some(urls) = argument.as_str().and_then(|a| a.strip_prefix("--listen-client-urls=")) {
                *argument = format!("--listen-client-urls={urls},https://{USER_ADDRESS}:2379").into();
            }
        }
        pods[0]["manifest"] = serde_saphyr::to_string(&manifest).unwrap().into();
        config.insert("kubelet".into(), serde_json::json!({ "binary": ABSENT }));
        config.insert("kubeProxy".into(), serde_json::json!({ "binary": ABSENT }));
        config["cluster"].as_object_mut().unwrap().remove("apiServerEndpoint");
        let uplinks = config["network"]["uplinks"].as_array_mut().unwrap();
        let node_uplink = uplinks[0].as_object_mut().unwrap();
        node_uplink.remove("name");
        node_uplink.insert("mac".into(), NODE_MACS[index].into());
        uplinks.push(serde_json::json!({"mac": USER_MACS[index], "addresses": [format!("{USER_ADDRESS}/24")]}));
    })
    .unwrap()
}

struct Node {
    vm: Vm,
    etcd_port: u16,
    api_port: u16,
}

fn boot(image: &ImagePaths, dir: &Path, out: &Path, index: usize, network: u16) -> Node {
    let name = NODES[index];
    let node_dir = dir.join(name);
    std::fs::create_dir_all(&node_dir).unwrap();
    let seed = etcd_only_seed(out, index);
    let disk = image.disk_overlay(&node_dir, "4G").unwrap();
    let (etcd_port, api_port) = (free_loopback_port().unwrap(), free_loopback_port().unwrap());
    let netdev = format!(
        "user,id=up,restrict=on,hostfwd=tcp:127.0.0.1:{etcd_port}-{USER_ADDRESS}:2379,\
         hostfwd=tcp:127.0.0.1:{api_port}-{USER_ADDRESS}:50000"
    );
    let vm = VmBuilder::firmware()
        .name(name)
        .ovmf(&node_dir)
        .unwrap()
        .disk_qcow2(&disk)
        .disk(&seed)
        .memory_mib(1280)
        .layer(guest_layer_with_agent("/bin/busybox"))
        .socket_nic_mcast(network, NODE_MACS[index])
        .qemu_args(["-netdev", &netdev, "-device", &format!("virtio-net-pci,netdev=up,mac={}", USER_MACS[index])])
        .boot()
        .unwrap();
    Node { vm, etcd_port, api_port }
}

/// An etcd client of one node, through its forwarded port, with the
/// cluster's API-server etcd client certificate.
async fn client(out: &Path, port: u16) -> Client {
    let read = |name: &str| std::fs::read_to_string(out.join("pki").join(name)).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read("etcd/ca.crt")))
        .identity(Identity::from_pem(read("apiserver-etcd-client.crt"), read("apiserver-etcd-client.key")));
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(20));
    Client::connect([format!("https://127.0.0.1:{port}")], Some(options)).await.unwrap()
}

/// Runs `check` every 5 s until it gives a value, or panics after `timeout`
/// with its last error and the nodes' console tails.
async fn until<T>(
    nodes: &[&Node],
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            let mut tails = String::new();
            for node in nodes {
                let console = node.vm.console_text().unwrap_or_default();
                let tail: Vec<&str> = console.lines().rev().take(40).collect();
                tails += &format!("\n--- {} ---\n", node.vm.name());
                tails += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            }
            panic!("{what}: not within {timeout:?}; last: {last}{tails}");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// A serializable read: the member's own copy, as it has applied it.
async fn local_value(client: &mut Client, key: &str) -> Result<Option<String>, String> {
    let answer =
        client.get(key, Some(GetOptions::new().with_serializable())).await.map_err(|e| format!("get {key}: {e}"))?;
    Ok(answer.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_control_plane_nodes_join_one_etcd_that_stays_writable_when_a_member_is_killed() {
    let started = Instant::now();
    let image = ImagePaths::disk_from_env().expect("the disk image (run `cargo xtask image`)");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cluster");
    let spec = kelsonctl::gen::ClusterSpec::with_defaults(CLUSTER, 1, 0);
    kelsonctl::gen::generate_cluster(&spec, &out, false).unwrap();
    for name in &NODES[1..] {
        let node = kelsonctl::gen::NodeSpec { name: (*name).to_owned(), role: kelson_config::Role::ControlPlane };
        let added = kelsonctl::gen::generate_node(&out, &node).unwrap();
        assert!(added.etcd_join_through.is_some());
    }
    let network = free_loopback_port().unwrap();

    let mut first = boot(&image, dir.path(), &out, 0, network);
    first.vm.expect("kelson: ready", BOOT).unwrap();
    // The other two boot together: etcd takes one learner at a time, so one
    // of them retries until the other is promoted.
    let mut second = boot(&image, dir.path(), &out, 1, network);
    let mut third = boot(&image, dir.path(), &out, 2, network);
    second.vm.expect("kelson: ready", BOOT).unwrap();
    third.vm.expect("kelson: ready", BOOT).unwrap();
    println!("three nodes ready after {:?}", started.elapsed());

    let mut through_first = client(&out, first.etcd_port).await;
    let members = until(&[&first, &second, &third], "three voting members", MEMBERS_UP, async || {
        let list = through_first.member_list().await.map_err(|e| format!("member list: {e}"))?;
        let members: Vec<(String, bool)> =
            list.members().iter().map(|m| (m.name().to_owned(), m.is_learner())).collect();
        let voters = members.iter().filter(|(name, learner)| !name.is_empty() && !learner).count();
        if voters == 3 {
            Ok(members)
        } else {
            Err(format!("{members:?}"))
        }
    })
    .await;
    println!("three voting members after {:?}: {members:?}", started.elapsed());
    let mut names: Vec<String> = members.into_iter().map(|(name, _)| name).collect();
    names.sort();
    assert_eq!(names, NODES);

    // Each joining node's status says it is a member, and shows the three.
    for (index, node) in [(1, &second), (2, &third)] {
        let ctl = Kelsonctl::beside_tests(&out.join("kelsonconfig"), NODES[index], node.api_port).unwrap();
        let status = until(&[node], "the status's etcd members", CATCH_UP, async || {
            let status = ctl.json(&["status"]).map_err(|e| e.to_string())?;
            let reachable = status["etcd"]["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["reachable"] == true && m["learner"] == false).count());
            if reachable == 3 {
                Ok(status)
            } else {
                Err(status["etcd"].to_string())
            }
        })
        .await;
        assert_eq!(status["etcd"]["join"]["state"], "member", "{}", status["etcd"]);
        println!("{}", ctl.run(&["status"]).unwrap());
    }

    // Written through the first, read on the third.
    through_first.put("/kelson/test/before", "one", None).await.unwrap();
    let mut through_third = client(&out, third.etcd_port).await;
    let seen = until(&[&third], "the key on the third member", CATCH_UP, async || {
        local_value(&mut through_third, "/kelson/test/before").await?.ok_or_else(|| "not yet".to_owned())
    })
    .await;
    assert_eq!(seen, "one");

    // kill -9 of the third's etcd: two of three still make a quorum.
    let killed = third.vm.agent_exec("kill -9 $(pidof etcd) && echo killed", AGENT).unwrap();
    assert!(killed.output.contains("killed"), "{}", killed.output);
    let killed_at = Instant::now();
    until(&[&first, &second], "a write with the third member down", CATCH_UP, async || {
        through_first.put("/kelson/test/during", "two", None).await.map(drop).map_err(|e| format!("put: {e}"))
    })
    .await;
    // The pod manager starts it again; it catches up from the others.
    let caught_up = until(&[&third], "the third member caught up", CATCH_UP, async || {
        local_value(&mut through_third, "/kelson/test/during").await?.ok_or_else(|| "not yet".to_owned())
    })
    .await;
    assert_eq!(caught_up, "two");
    println!(
        "third member back and caught up {:?} after its kill; whole test {:?}",
        killed_at.elapsed(),
        started.elapsed()
    );
    let list = through_first.member_list().await.unwrap();
    assert_eq!(list.members().iter().filter(|m| !m.is_learner()).count(), 3);
}
