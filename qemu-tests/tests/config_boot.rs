//! The machine config under QEMU: NoCloud seeds on a FAT disk and on a
//! `cloud-localds` ISO CD-ROM, a seed the node must refuse, and a saved
//! seed used after the seed is gone; seeds fetched from a URL; a DHCP
//! uplink against a real DHCP server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use qemu_tests::{guest_layer_with_agent, ImagePaths, Vm, VmBuilder};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const SHORT: Duration = Duration::from_secs(60);

fn node() -> VmBuilder {
    let image = ImagePaths::from_env().expect("the node image (run `cargo xtask image`)");
    VmBuilder::from_image(&image).layer(guest_layer_with_agent("/bin/busybox")).append("kelson.shutdown_grace=3")
}

fn sh(vm: &mut Vm, cmd: &str) -> String {
    let out = vm.agent_exec(cmd, SHORT).unwrap_or_else(|e| panic!("agent: {cmd}: {e:#}"));
    assert_eq!(out.status, 0, "{cmd} failed: {}", out.output);
    out.output.trim().to_owned()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fat_seed(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    qemu_tests::seed::fat_seed(dir, files).unwrap()
}

fn blank_disk(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().set_len(mib << 20).unwrap();
    path
}

const MACHINE_CONFIG: &str = "apiVersion: kelson.dev/v1alpha1
kind: MachineConfig
node:
  hostname: seeded-node
  role: worker
network:
  uplinks:
    - name: eth0
      addresses: [192.168.100.21/24]
  podCIDR: 10.244.7.0/24
  clusterCIDR: 10.244.0.0/16
  mtu: 1460
files:
  - path: /etc/kelson/hello
    content: from the seed
    mode: \"0600\"
";

#[test]
fn a_fat_seed_names_the_node_and_its_files_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let seed = fat_seed(
        dir.path(),
        &[("meta-data", "instance-id: fat-1\nlocal-hostname: from-meta-data\n"), ("user-data", MACHINE_CONFIG)],
    );
    let mut vm = node().disk(&seed).boot().unwrap();
    vm.expect("cloud-init seed found device=/dev/vda fs=vfat", BOOT).unwrap();
    vm.expect("machine config accepted", BOOT).unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    assert_eq!(sh(&mut vm, "cat /proc/sys/kernel/hostname"), "seeded-node");
    assert_eq!(sh(&mut vm, "cat /etc/kelson/hello"), "from the seed");
    assert_eq!(sh(&mut vm, "stat -c %a /etc/kelson/hello"), "600");
    let sources = sh(&mut vm, "cat /run/kelson/config/sources.txt");
    assert!(sources.contains("node.hostname = \"seeded-node\"  # cloud-init user-data (/dev/vda (vfat))"), "{sources}");
    assert!(sources.contains("network.podCIDR = \"10.244.7.0/24\"  # cloud-init user-data"), "{sources}");
    assert_eq!(sh(&mut vm, "stat -c %a /run/kelson/config/effective.yaml"), "600");
}

/// Distinct markers for each kind of secret a seed carries: a
/// `write_files` content, the bootstrap token's secret half, a PKI key.
const FILE_MARKER: &str = "MARKER-WRITE-FILES-5d1c";
const TOKEN_MARKER: &str = "markertoken5d1c0";
const KEY_MARKER: &str = "MARKER-PKI-KEY-5d1c";

#[test]
fn seed_secrets_reach_only_their_files_and_the_private_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let user_data = format!(
        "#cloud-config\nhostname: secret-node\nwrite_files:\n  - path: /etc/kelson/app-secret.pem\n    \
         content: {FILE_MARKER}\n    permissions: '0600'\nkelson:\n  cluster:\n    bootstrapToken: secret.{TOKEN_MARKER}\n  \
         pki:\n    certificates:\n      marker:\n        cert: PUBLIC-CERT\n        key: {KEY_MARKER}\n"
    );
    let seed = fat_seed(dir.path(), &[("meta-data", "instance-id: secrets-1\n"), ("user-data", &user_data)]);
    let mut vm = node().disk(&seed).boot().unwrap();
    vm.expect("machine config accepted", BOOT).unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    let markers = [FILE_MARKER, TOKEN_MARKER, KEY_MARKER];

    // The written files hold their secrets (so the checks below could
    // fail), counted without printing them.
    let count = |vm: &mut Vm, marker: &str, file: &str| sh(vm, &format!("grep -c -F '{marker}' {file}"));
    assert_eq!(count(&mut vm, FILE_MARKER, "/etc/kelson/app-secret.pem"), "1");
    assert_eq!(count(&mut vm, KEY_MARKER, "/etc/kelson/pki/marker.key"), "1");
    assert_eq!(sh(&mut vm, "stat -c %a /etc/kelson/pki/marker.key /etc/kelson/app-secret.pem"), "600\n600");
    let effective = "/run/kelson/config/effective.yaml";
    for marker in markers {
        assert_eq!(count(&mut vm, marker, effective), "1", "{marker} in {effective}");
    }
    assert_eq!(sh(&mut vm, &format!("stat -c %a {effective} /run/kelson/config/sources.txt")), "600\n600");

    let console = vm.console_text().unwrap();
    let kmsg = sh(&mut vm, "dmesg");
    assert!(kmsg.contains("machine config accepted"), "dmesg holds Kelson's log: {kmsg}");
    for marker in markers {
        assert!(!console.contains(marker), "{marker} on the console:\n{console}");
        assert!(!kmsg.contains(marker), "{marker} in kmsg:\n{kmsg}");
    }
    // Every file under /run/kelson and /var holding a marker: only the
    // effective config and the saved seed (the node's own copy, 0600).
    let patterns: String = markers.iter().map(|m| format!(" -e '{m}'")).collect();
    let holders = sh(&mut vm, &format!("find /run/kelson /var -type f | xargs grep -l -F{patterns}; true"));
    let holders: Vec<&str> = holders.lines().collect();
    assert_eq!(holders, [effective, "/var/lib/kelson/config/cloud-init.yaml"], "files holding a secret");
    assert_eq!(sh(&mut vm, "stat -c %a /var/lib/kelson/config/cloud-init.yaml"), "600");
    let sources = sh(&mut vm, "cat /run/kelson/config/sources.txt");
    assert!(sources.contains("cluster.bootstrapToken = <secret>"), "{sources}");
    assert!(sources.contains("\"content\":\"<secret>\""), "{sources}");
}

/// A 1 control-plane + 1 worker cluster from `kelsonctl gen cluster`.
fn generated_cluster(dir: &Path) -> kelsonctl::gen::GeneratedCluster {
    let spec = kelsonctl::gen::ClusterSpec::with_defaults("lab", 1, 1);
    kelsonctl::gen::generate_cluster(&spec, dir, false).unwrap()
}

#[test]
fn a_node_booted_with_a_kelsonctl_gen_seed_takes_its_identity_and_pki_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cluster");
    generated_cluster(&out);
    let worker = out.join("nodes/lab-worker-1");
    let config = kelson_config_text(&worker.join("machine-config.yaml"));
    let mut vm = node().disk(worker.join("seed.img")).boot().unwrap();
    vm.expect("cloud-init seed found device=/dev/vda fs=vfat", BOOT).unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    assert_eq!(sh(&mut vm, "cat /proc/sys/kernel/hostname"), "lab-worker-1");
    let sources = sh(&mut vm, "cat /run/kelson/config/sources.txt");
    let pod_cidr =
        config.lines().find_map(|l| l.trim().strip_prefix("podCIDR: ")).unwrap().trim_matches('"').to_owned();
    assert!(
        sources.contains(&format!("network.podCIDR = \"{pod_cidr}\"  # cloud-init user-data (/dev/vda (vfat))")),
        "{sources}"
    );
    assert!(
        sources.contains("network.uplinks = [{\"name\":\"eth0\",\"addresses\":[\"192.168.100.11/24\"]}]"),
        "{sources}"
    );
    assert!(sources.contains("cluster.bootstrapToken = <secret>"), "{sources}");
    assert_eq!(sh(&mut vm, "stat -c %a /etc/kelson/pki/management-api.key"), "600");
    assert_eq!(
        sh(&mut vm, "cat /etc/kelson/pki/ca.crt"),
        std::fs::read_to_string(out.join("pki/ca.crt")).unwrap().trim()
    );
}

fn kelson_config_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A NoCloud seed ISO made by Debian's `cloud-localds` (cloud-image-utils;
/// iso9660 by default) from these three files, in `dir`.
fn cloud_localds_iso(dir: &Path, user_data: &str, network_config: &str, meta_data: &str) -> PathBuf {
    let (user, net, meta) = (dir.join("user-data"), dir.join("network-config"), dir.join("meta-data"));
    std::fs::write(&user, user_data).unwrap();
    std::fs::write(&net, network_config).unwrap();
    std::fs::write(&meta, meta_data).unwrap();
    let iso = dir.join("seed.iso");
    run(Command::new("cloud-localds").arg("--network-config").arg(&net).arg(&iso).arg(&user).arg(&meta));
    iso
}

#[test]
fn a_cloud_localds_iso_on_a_cdrom_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let iso = cloud_localds_iso(
        dir.path(),
        "#cloud-config\nhostname: iso-node\nruncmd: [reboot]\nkelson:\n  network:\n    podCIDR: 10.244.8.0/24\n    clusterCIDR: 10.244.0.0/16\n",
        "version: 2\nethernets:\n  eth0:\n    addresses: [192.168.100.22/24]\n    nameservers:\n      addresses: [192.168.100.1]\n",
        "instance-id: iso-1\n",
    );
    let mut vm = node().qemu_arg("-cdrom").qemu_arg(&iso).boot().unwrap();
    vm.expect("cloud-init seed found device=/dev/sr0 fs=iso9660", BOOT).unwrap();
    vm.expect("cloud-init: ignored user-data: runcmd (not supported on an appliance)", BOOT).unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    assert_eq!(sh(&mut vm, "cat /proc/sys/kernel/hostname"), "iso-node");
    let sources = sh(&mut vm, "cat /run/kelson/config/sources.txt");
    assert!(
        sources.contains("network.podCIDR = \"10.244.8.0/24\"  # cloud-init user-data (/dev/sr0 (iso9660))"),
        "{sources}"
    );
    assert!(sources.contains("network.uplinks = [{\"name\":\"eth0\",\"addresses\":[\"192.168.100.22/24\"]}]  # cloud-init network-config (/dev/sr0 (iso9660))"), "{sources}");
    assert!(sources.contains("network.nameservers = [\"192.168.100.1\"]"), "{sources}");
}

/// A netplan v2 network-config as cloud-init users write it: the NIC is
/// matched by MAC (the guest's second NIC, so the kernel's first name is
/// not what matches) and renamed, with static addresses, routes,
/// nameservers and search domains, on a `cloud-localds` seed.
#[test]
fn a_cloud_localds_netplan_seed_renames_the_nic_matched_by_mac_and_configures_it() {
    let dir = tempfile::tempdir().unwrap();
    let iso = cloud_localds_iso(
        dir.path(),
        "#cloud-config\nhostname: netplan-node\nkelson:\n  network:\n    podCIDR: 10.244.4.0/24\n    clusterCIDR: 10.244.0.0/16\n",
        r#"version: 2
ethernets:
  uplink:
    match:
      macaddress: "52:54:00:AA:BB:01"
    set-name: lan0
    addresses: [192.168.50.10/24]
    routes:
      - to: default
        via: 192.168.50.1
      - to: 198.51.100.0/24
        via: 192.168.50.254
    nameservers:
      addresses: [192.168.50.53, 192.168.50.54]
      search: [corp.example, lab.example]
"#,
        "instance-id: netplan-1\n",
    );
    // Two NICs on networks that reach nothing: the kernel names them eth0
    // and eth1; the seed's MAC is eth1's.
    let mut vm = node()
        .qemu_arg("-cdrom")
        .qemu_arg(&iso)
        .qemu_args([
            "-netdev",
            "user,id=other,restrict=on",
            "-device",
            "virtio-net-pci,netdev=other,mac=52:54:00:aa:bb:02",
        ])
        .qemu_args(["-netdev", "user,id=up,restrict=on", "-device", "virtio-net-pci,netdev=up,mac=52:54:00:aa:bb:01"])
        .boot()
        .unwrap();
    vm.expect("cloud-init seed found device=/dev/sr0 fs=iso9660", BOOT).unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    let console = vm.console_text().unwrap();
    assert!(!console.contains("cloud-init: ignored network-config"), "{console}");

    let links = sh(&mut vm, "ip -o link show");
    let lan0 = links.lines().find(|l| l.contains(" lan0:")).unwrap_or_else(|| panic!("no lan0 in:\n{links}"));
    assert!(lan0.contains("52:54:00:aa:bb:01") && lan0.contains(",UP"), "{lan0}");
    assert!(!links.contains(" eth1:"), "eth1 kept its kernel name:\n{links}");
    let eth0 = links.lines().find(|l| l.contains(" eth0:")).unwrap_or_else(|| panic!("no eth0 in:\n{links}"));
    assert!(eth0.contains("52:54:00:aa:bb:02"), "the other NIC was renamed or taken: {eth0}");
    assert!(sh(&mut vm, "ip -4 addr show lan0").contains("inet 192.168.50.10/24"));
    assert!(!sh(&mut vm, "ip -4 addr show eth0").contains("192.168.50."));
    let routes = sh(&mut vm, "ip -4 route");
    assert!(routes.contains("default via 192.168.50.1 dev lan0"), "{routes}");
    assert!(routes.contains("198.51.100.0/24 via 192.168.50.254 dev lan0"), "{routes}");
    let resolv = sh(&mut vm, "cat /etc/resolv.conf");
    assert!(
        resolv.contains("nameserver 192.168.50.53\nnameserver 192.168.50.54\nsearch corp.example lab.example"),
        "{resolv}"
    );
    let sources = sh(&mut vm, "cat /run/kelson/config/sources.txt");
    assert!(sources.contains("network.searchDomains = [\"corp.example\",\"lab.example\"]"), "{sources}");
}

#[test]
fn an_invalid_seed_leaves_the_node_in_maintenance_with_nothing_applied() {
    let dir = tempfile::tempdir().unwrap();
    let broken =
        MACHINE_CONFIG.replace("podCIDR: 10.244.7.0/24", "podCIDR: 10.9.0.0/24").replace("mtu: 1460", "mtu: 99999");
    let seed = fat_seed(dir.path(), &[("meta-data", "instance-id: bad-1\n"), ("user-data", &broken)]);
    let mut vm = node().disk(&seed).boot().unwrap();
    vm.expect(
        "config error: cloud-init user-data (/dev/vda (vfat)): network.podCIDR: 10.9.0.0/24 is not inside network.clusterCIDR 10.244.0.0/16",
        BOOT,
    )
    .unwrap();
    vm.expect("config error: cloud-init user-data (/dev/vda (vfat)): network.mtu: 99999 is outside 576..=9000", SHORT)
        .unwrap();
    vm.expect("maintenance: boot stopped", SHORT).unwrap();
    assert_eq!(sh(&mut vm, "test -e /etc/kelson/hello && echo written || echo absent"), "absent");
    assert_eq!(sh(&mut vm, "test -e /var/lib/kelson/config/cloud-init.yaml && echo saved || echo unsaved"), "unsaved");
    assert_ne!(sh(&mut vm, "cat /proc/sys/kernel/hostname"), "seeded-node");
    vm.system_powerdown().unwrap();
    assert!(vm.wait_exit(SHORT).unwrap().success());
}

#[test]
fn after_a_reboot_without_the_seed_the_saved_config_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let state = blank_disk(dir.path(), "state.img", 64);
    let seed = fat_seed(dir.path(), &[("meta-data", "instance-id: keep-1\n"), ("user-data", MACHINE_CONFIG)]);
    let mut first = node().disk(&state).disk(&seed).append("kelson.state=/dev/vda").boot().unwrap();
    first.expect("cloud-init seed saved for later boots", BOOT).unwrap();
    first.expect("kelson: ready", BOOT).unwrap();
    assert_eq!(sh(&mut first, "stat -c %a /var/lib/kelson/config/cloud-init.yaml"), "600");
    first.system_powerdown().unwrap();
    assert!(first.wait_exit(SHORT).unwrap().success());

    let mut second = node().disk(&state).append("kelson.state=/dev/vda").boot().unwrap();
    second.expect("no cloud-init seed attached; using the one saved at an earlier boot", BOOT).unwrap();
    second.expect("kelson: ready", BOOT).unwrap();
    assert_eq!(sh(&mut second, "cat /proc/sys/kernel/hostname"), "seeded-node");
    assert_eq!(sh(&mut second, "cat /etc/kelson/hello"), "from the seed");
}

/// Serves one HTTP request on stdin/stdout from the files in a directory:
/// QEMU's user network runs it for each connection the guest makes to the
/// `guestfwd` address, and the guest reaches nothing else.
const SEED_SERVER: &str = r#"import os, sys
root = sys.argv[1]
request = sys.stdin.buffer.readline().decode()
while sys.stdin.buffer.readline() not in (b"\r\n", b"\n", b""):
    pass
path = os.path.join(root, os.path.basename(request.split()[1]))
out = sys.stdout.buffer
if os.path.isfile(path):
    body = open(path, "rb").read()
    out.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
else:
    out.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
out.flush()
"#;

/// Boots a node whose seed is served over HTTP; `point` tells the node
/// where (command line or SMBIOS serial).
fn boot_with_url_seed(point: impl FnOnce(VmBuilder) -> VmBuilder) {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    std::fs::write(seed.join("meta-data"), "instance-id: url-1\nlocal-hostname: fetched-node\n").unwrap();
    std::fs::write(
        seed.join("user-data"),
        "#cloud-config\nkelson:\n  network:\n    podCIDR: 10.244.5.0/24\n    clusterCIDR: 10.244.0.0/16\n",
    )
    .unwrap();
    let server = dir.path().join("serve.py");
    std::fs::write(&server, SEED_SERVER).unwrap();
    // restrict=on: the guest's only way out is the guestfwd to the server.
    let netdev = format!(
        "user,id=seed,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:python3 {} {}",
        server.display(),
        seed.display()
    );
    let mut vm =
        point(node().qemu_args(["-netdev", netdev.as_str(), "-device", "virtio-net-pci,netdev=seed"])).boot().unwrap();
    vm.expect("DHCP lease taken to fetch the seed link=eth0", BOOT).unwrap();
    vm.expect("cloud-init seed fetched url=http://10.0.2.100/", BOOT).unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    assert_eq!(sh(&mut vm, "cat /proc/sys/kernel/hostname"), "fetched-node");
    let sources = sh(&mut vm, "cat /run/kelson/config/sources.txt");
    assert!(
        sources.contains("network.podCIDR = \"10.244.5.0/24\"  # cloud-init user-data (http://10.0.2.100/)"),
        "{sources}"
    );
    // The lease taken for the fetch was given back before the network stage.
    assert!(!sh(&mut vm, "ip -4 addr show eth0").contains("10.0.2."), "the fetch's DHCP address is still there");
}

#[test]
fn a_seed_is_fetched_from_the_url_on_the_command_line() {
    boot_with_url_seed(|vm| vm.append("ds=nocloud;s=http://10.0.2.100/"));
}

#[test]
fn a_seed_is_fetched_from_the_url_in_the_smbios_serial() {
    boot_with_url_seed(|vm| vm.qemu_args(["-smbios", "type=1,serial=ds=nocloud;s=http://10.0.2.100/"]));
}

/// Relays one guest connection to an HTTP server on the host's loopback
/// (QEMU runs it per connection, as for [`SEED_SERVER`]). When that server
/// has stopped, the connect fails and the guest's connection is closed
/// without an answer, as a stopped seed server looks to a client.
const LOOPBACK_RELAY: &str = r#"import socket, sys, threading
upstream = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def pump():
    while True:
        data = upstream.recv(65536)
        if not data:
            break
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
reader = threading.Thread(target=pump)
reader.start()
while True:
    data = sys.stdin.buffer.read1(65536)
    if not data:
        break
    upstream.sendall(data)
reader.join()
"#;

#[test]
fn a_node_configured_from_a_url_boots_with_its_saved_seed_when_the_server_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let state = blank_disk(dir.path(), "state.img", 64);
    let seed = dir.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    std::fs::write(seed.join("meta-data"), "instance-id: url-keep-1\nlocal-hostname: url-saved-node\n").unwrap();
    std::fs::write(
        seed.join("user-data"),
        "#cloud-config\nkelson:\n  network:\n    podCIDR: 10.244.9.0/24\n    clusterCIDR: 10.244.0.0/16\n",
    )
    .unwrap();
    let port = qemu_tests::free_loopback_port().unwrap();
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&seed)
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting python3 -m http.server");
    // Wait until the server listens (it takes a moment to start).
    let listening = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(listening, "the seed server on 127.0.0.1:{port} did not start");
    let relay = dir.path().join("relay.py");
    std::fs::write(&relay, LOOPBACK_RELAY).unwrap();
    // restrict=on: the guest's only way out is the guestfwd to the relay.
    let netdev = format!("user,id=seed,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:python3 {} {port}", relay.display());
    let boot = || {
        node()
            .disk(&state)
            .append("kelson.state=/dev/vda")
            .append("ds=nocloud;s=http://10.0.2.100/")
            .qemu_args(["-netdev", netdev.as_str(), "-device", "virtio-net-pci,netdev=seed"])
            .boot()
            .unwrap()
    };

    let mut first = boot();
    first.expect("cloud-init seed fetched url=http://10.0.2.100/", BOOT).unwrap();
    first.expect("cloud-init seed saved for later boots", BOOT).unwrap();
    first.expect("kelson: ready", BOOT).unwrap();
    assert_eq!(sh(&mut first, "cat /proc/sys/kernel/hostname"), "url-saved-node");
    assert_eq!(
        sh(&mut first, "head -n 1 /var/lib/kelson/config/cloud-init.yaml"),
        "# cloud-init instance-id: \"url-keep-1\""
    );
    first.system_powerdown().unwrap();
    assert!(first.wait_exit(SHORT).unwrap().success());

    // The seed server stops; the same state disk boots again.
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the seed server still answers");
    let mut second = boot();
    let warning = second
        .expect(
            "the cloud-init seed at http://10.0.2.100/ could not be fetched (fetching http://10.0.2.100/meta-data:",
            BOOT,
        )
        .unwrap();
    assert!(warning.contains("booting with the seed saved at an earlier boot"), "{warning}");
    second.expect("using the one saved at an earlier boot", SHORT).unwrap();
    second.expect("kelson: ready", BOOT).unwrap();
    assert_eq!(sh(&mut second, "cat /proc/sys/kernel/hostname"), "url-saved-node");
    let sources = sh(&mut second, "cat /run/kelson/config/sources.txt");
    assert!(sources.contains("network.podCIDR = \"10.244.9.0/24\""), "{sources}");
    let console = second.console_text().unwrap();
    assert!(!console.contains("maintenance: boot stopped"), "{console}");
}

#[test]
fn a_node_never_configured_stops_in_maintenance_naming_the_seed_url_that_failed() {
    // The guest reaches the relay, but nothing listens on its loopback port.
    let port = qemu_tests::free_loopback_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = dir.path().join("relay.py");
    std::fs::write(&relay, LOOPBACK_RELAY).unwrap();
    let netdev = format!("user,id=seed,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:python3 {} {port}", relay.display());
    let mut vm = node()
        .append("ds=nocloud;s=http://10.0.2.100/")
        .qemu_args(["-netdev", netdev.as_str(), "-device", "virtio-net-pci,netdev=seed"])
        .boot()
        .unwrap();
    let error = vm
        .expect(
            "config error: http://10.0.2.100/: document: the cloud-init seed at http://10.0.2.100/ could not be fetched (",
            BOOT,
        )
        .unwrap();
    assert!(error.contains("and no seed was saved at an earlier boot"), "{error}");
    vm.expect("maintenance: boot stopped", SHORT).unwrap();
}

/// A DHCP server the guest can reach and nothing else: Debian's dnsmasq on a
/// tap device inside a network namespace of its own, with QEMU started in
/// that namespace (so the tap is the guest's only link, and the namespace
/// has no route anywhere). QEMU's own user network cannot stand in: with
/// `restrict=on` its DHCP server leaves out the router and DNS options.
struct DhcpNet {
    netns: String,
    dir: tempfile::TempDir,
    dnsmasq: std::process::Child,
}

impl DhcpNet {
    /// T1 and T2 are 3 s and 5 s so the guest renews while the test looks
    /// (dnsmasq's shortest lease is 2 minutes).
    fn start() -> DhcpNet {
        let netns = format!("kelson-dhcp-{}", std::process::id());
        let ns = |args: &[&str]| run(Command::new("ip").args(["netns", "exec", &netns]).args(args));
        run(Command::new("ip").args(["netns", "add", &netns]));
        ns(&["ip", "link", "set", "lo", "up"]);
        ns(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ns(&["ip", "addr", "add", "10.99.0.1/24", "dev", "tap0"]);
        ns(&["ip", "link", "set", "tap0", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let dnsmasq = Command::new("ip")
            .args(["netns", "exec", &netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0"])
            .args(["--interface=tap0", "--bind-interfaces", "--dhcp-authoritative", "--pid-file="])
            .arg("--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,2m")
            .args(["--dhcp-option=option:router,10.99.0.1", "--dhcp-option=option:dns-server,10.99.0.53"])
            .args(["--dhcp-option=58,3", "--dhcp-option=59,5", "--log-dhcp"])
            .arg(format!("--dhcp-leasefile={}", dir.path().join("leases").display()))
            .arg(format!("--log-facility={}", dir.path().join("log").display()))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting dnsmasq (Debian package dnsmasq-base)");
        DhcpNet { netns, dir, dnsmasq }
    }

    /// A wrapper that runs QEMU inside the namespace; `ip netns exec` execs,
    /// so QEMU keeps the pid (and the parent-death signal) the harness gave it.
    fn qemu_wrapper(&self) -> PathBuf {
        let path = self.dir.path().join("qemu-in-netns");
        std::fs::write(&path, format!("#!/bin/sh\nexec ip netns exec {} qemu-system-x86_64 \"$@\"\n", self.netns))
            .unwrap();
        run(Command::new("chmod").arg("755").arg(&path));
        path
    }

    fn leases(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("leases")).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for DhcpNet {
    fn drop(&mut self) {
        let _ = self.dnsmasq.kill();
        let _ = self.dnsmasq.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

#[test]
fn a_dhcp_uplink_gets_its_lease_route_and_nameserver_renews_and_releases_it_at_shutdown() {
    let dhcp = DhcpNet::start();
    let dir = tempfile::tempdir().unwrap();
    let config = "apiVersion: kelson.dev/v1alpha1
kind: MachineConfig
node:
  hostname: dhcp-node
network:
  uplinks:
    - name: eth0
      dhcp4: true
  podCIDR: 10.244.6.0/24
  clusterCIDR: 10.244.0.0/16
";
    let seed = fat_seed(dir.path(), &[("meta-data", "instance-id: dhcp-1\n"), ("user-data", config)]);
    let mut vm = node()
        .qemu_binary(dhcp.qemu_wrapper())
        .disk(&seed)
        .qemu_args(["-netdev", "tap,id=up,ifname=tap0,script=no,downscript=no", "-device", "virtio-net-pci,netdev=up"])
        .boot()
        .unwrap();
    // The client keeps going after the stage; the lease may come after ready.
    vm.expect("kelson: ready", BOOT).unwrap();
    let bound = vm.expect("DHCP lease bound link=eth0 address=10.99.0.", BOOT).unwrap();
    assert!(bound.contains("server=10.99.0.1 router=10.99.0.1"), "{bound}");
    let address = sh(&mut vm, "ip -4 -o addr show eth0");
    let address =
        address.split_whitespace().find(|w| w.starts_with("10.99.0.")).expect("a leased address on eth0").to_owned();
    assert!(sh(&mut vm, "ip route").contains("default via 10.99.0.1 dev eth0"));
    assert!(sh(&mut vm, "cat /etc/resolv.conf").contains("nameserver 10.99.0.53"));
    assert!(sh(&mut vm, "ip -4 addr show cbr0").contains("inet 10.244.6.1/24"));
    // The server sees the node by name and the guest reaches it.
    let ip = address.split('/').next().unwrap();
    assert!(dhcp.leases().contains(&format!("{ip} dhcp-node")), "{}", dhcp.leases());
    sh(&mut vm, "ping -c 1 -W 5 10.99.0.1");
    // T1 is 3 s: a renewal with the same server, the address kept.
    vm.expect("DHCP lease renewed link=eth0", SHORT).unwrap();
    assert!(dhcp.log().matches(&format!("DHCPACK(tap0) {ip}")).count() >= 2, "{}", dhcp.log());
    assert!(sh(&mut vm, "ip -4 -o addr show eth0").contains(&address));

    vm.system_powerdown().unwrap();
    vm.expect("network: DHCP leases released", SHORT).unwrap();
    assert!(vm.wait_exit(SHORT).unwrap().success());
    assert!(dhcp.log().contains(&format!("DHCPRELEASE(tap0) {ip}")), "{}", dhcp.log());
    assert!(!dhcp.leases().contains(ip), "the lease is still held: {}", dhcp.leases());
}
