//! Node networking under QEMU: two nodes of one `kelsonctl gen` cluster on
//! a loopback socket network. Pods (network namespaces attached with
//! kelson-net's attach API by the test-only `pod-net` program) reach each
//! other by pod IP over the direct peer routes, with no overlay and no
//! masquerading; traffic from a pod to an address outside the cluster CIDR
//! is masqueraded by the node's rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use qemu_tests::{free_loopback_port, guest_layer_with_agent, ImagePaths, Layer, Vm, VmBuilder};
use std::path::Path;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const SHORT: Duration = Duration::from_secs(60);
const GUEST_POD_NET: &str = "/kelson-test/pod-net";

fn node(seed: &Path) -> VmBuilder {
    let image = ImagePaths::from_env().expect("the node image (run `cargo xtask image`)");
    let tools = Layer::new()
        .file_from_host(GUEST_POD_NET, env!("CARGO_BIN_EXE_pod-net"), 0o755)
        // busybox httpd answers with the address the request came from.
        // busybox httpd listens on IPv6 and writes IPv4 peers as
        // [::ffff:a.b.c.d]; the script prints the plain IPv4 address.
        .file(
            "/kelson-test/www/cgi-bin/ip",
            "#!/kelson-test/busybox sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\" | sed -e 's/^\\[::ffff://' -e 's/\\]$//'\n",
            0o755,
        );
    VmBuilder::from_image(&image)
        .layer(guest_layer_with_agent("/bin/busybox"))
        .layer(tools)
        .disk(seed)
        .append("kelson.shutdown_grace=3")
}

fn sh(vm: &mut Vm, cmd: &str) -> String {
    let out = vm.agent_exec(cmd, SHORT).unwrap_or_else(|e| panic!("agent: {cmd}: {e:#}"));
    assert_eq!(out.status, 0, "{cmd} failed: {}", out.output);
    out.output.trim().to_owned()
}

/// Makes a pod-like network namespace held open by a sleeping process and
/// pinned at /run/NAME, attaches it, and returns the pod's address.
fn make_pod(vm: &mut Vm, name: &str) -> String {
    sh(vm, &format!("unshare -n sleep 100000 & echo $! > /run/{name}.pid"));
    sh(vm, &format!("touch /run/{name} && mount --bind /proc/$(cat /run/{name}.pid)/ns/net /run/{name}"));
    let cidr = sh(vm, &format!("{GUEST_POD_NET} attach /run/{name} {name}"));
    cidr.split('/').next().unwrap().to_owned()
}

fn in_pod(vm: &mut Vm, pod: &str, cmd: &str) -> String {
    sh(vm, &format!("nsenter --net=/run/{pod} sh -c '{cmd}'"))
}

/// The packet count of the MASQUERADE rule in Kelson's chain.
fn masquerade_packets(vm: &mut Vm) -> u64 {
    let listing = sh(vm, "iptables -t nat -L KELSON-POSTROUTING -v -x -n");
    let line =
        listing.lines().find(|l| l.contains("MASQUERADE")).unwrap_or_else(|| panic!("no MASQUERADE rule:\n{listing}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn pods_on_two_nodes_talk_by_pod_ip_and_leave_the_cluster_masqueraded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cluster");
    let spec = kelsonctl::gen::ClusterSpec::with_defaults("net", 1, 1);
    kelsonctl::gen::generate_cluster(&spec, &out, false).unwrap();
    let port = free_loopback_port().unwrap();
    // Routing between nodes is the point here, not a control plane.
    let seed = qemu_tests::seed::without_control_plane(&out.join("nodes/net-cp-1")).unwrap();
    let mut a = node(&seed).socket_nic_listen(port, "52:54:00:6e:00:01").boot().unwrap();
    let mut b =
        node(&out.join("nodes/net-worker-1/seed.img")).socket_nic_connect(port, "52:54:00:6e:00:02").boot().unwrap();
    for vm in [&mut a, &mut b] {
        vm.expect("network applied", BOOT).unwrap();
        vm.expect("kelson: ready", BOOT).unwrap();
    }

    // What the seed asked for, as the kernel and iptables see it.
    assert!(sh(&mut a, "ip -4 addr show eth0").contains("inet 192.168.100.10/24"));
    let bridge = sh(&mut a, "ip -4 addr show cbr0");
    assert!(bridge.contains("mtu 1460") && bridge.contains("inet 10.244.0.1/24"), "{bridge}");
    assert!(sh(&mut a, "ip route").contains("10.244.1.0/24 via 192.168.100.11 dev eth0"));
    assert!(sh(&mut b, "ip route").contains("10.244.0.0/24 via 192.168.100.10 dev eth0"));
    let rules = sh(&mut a, "iptables-save -t nat");
    assert!(rules.contains("-A POSTROUTING -j KELSON-POSTROUTING"), "{rules}");
    assert!(
        rules.contains("-A KELSON-POSTROUTING ! -d 10.244.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE"),
        "{rules}"
    );
    assert!(sh(&mut a, "cat /etc/cni/net.d/10-kelson.conflist").contains("\"bridge\": \"cbr0\""));

    let pod_a = make_pod(&mut a, "pod-a");
    let pod_b = make_pod(&mut b, "pod-b");
    assert!(pod_a.starts_with("10.244.0."), "{pod_a}");
    assert!(pod_b.starts_with("10.244.1."), "{pod_b}");

    // Pod to pod across nodes: routed directly, the source address kept.
    in_pod(&mut a, "pod-a", &format!("ping -c 2 -W 5 {pod_b}"));
    in_pod(&mut b, "pod-b", "httpd -p 8080 -h /kelson-test/www");
    let before = masquerade_packets(&mut a);
    let seen = in_pod(&mut a, "pod-a", &format!("wget -q -O - http://{pod_b}:8080/cgi-bin/ip"));
    assert_eq!(seen, pod_a, "pod-to-pod traffic must not be masqueraded");
    assert_eq!(masquerade_packets(&mut a), before);

    // Pod to an address outside the cluster CIDR (node B's own address):
    // masqueraded to node A's address, and the rule counts it.
    sh(&mut b, "httpd -p 8081 -h /kelson-test/www");
    let seen = in_pod(&mut a, "pod-a", "wget -q -O - http://192.168.100.11:8081/cgi-bin/ip");
    assert_eq!(seen, "192.168.100.10", "traffic leaving the cluster CIDR must be masqueraded");
    assert!(masquerade_packets(&mut a) > before, "the MASQUERADE rule's counter did not rise");

    // Detach gives the address back and removes the veth.
    let veths_before = sh(&mut a, "ls /sys/class/net/cbr0/brif | wc -l");
    sh(&mut a, &format!("{GUEST_POD_NET} detach pod-a"));
    let veths_after = sh(&mut a, "ls /sys/class/net/cbr0/brif | wc -l");
    assert_eq!(veths_after.parse::<u32>().unwrap() + 1, veths_before.parse::<u32>().unwrap());
}
