//! NoCloud seeds: meta-data, user-data (MachineConfig and #cloud-config),
//! network-config v1 and v2, each mapped onto the config or reported.
#![allow(clippy::unwrap_used)]

use kelson_config::nocloud::{read_seed, SeedFiles};
use kelson_config::{resolve, Effective};

fn seed(meta: Option<&str>, user: Option<&str>, net: Option<&str>) -> SeedFiles {
    SeedFiles {
        origin: "/dev/sr0".into(),
        meta_data: meta.map(str::to_owned),
        user_data: user.map(str::to_owned),
        network_config: net.map(str::to_owned),
    }
}

fn effective(files: &SeedFiles) -> (Effective, Vec<String>) {
    let s = read_seed(files).unwrap();
    (resolve(&s.layers).unwrap(), s.ignored)
}

#[test]
fn meta_data_gives_the_instance_id_and_hostname() {
    let files = seed(Some("instance-id: iid-abc\nlocal-hostname: node-7\npublic-keys: [x]\n"), None, None);
    let s = read_seed(&files).unwrap();
    assert_eq!(s.instance_id.as_deref(), Some("iid-abc"));
    assert_eq!(s.ignored, vec!["meta-data: public-keys (not used by Kelson)"]);
    let e = resolve(&s.layers).unwrap();
    assert_eq!(e.config.node.hostname.as_deref(), Some("node-7"));
    assert_eq!(e.source_of("node.hostname").unwrap().1, "cloud-init meta-data (/dev/sr0)");
}

#[test]
fn a_machine_config_user_data_wins_over_meta_data() {
    let user = "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: from-user-data\nnetwork:\n  podCIDR: 10.244.1.0/24\n";
    let (e, ignored) = effective(&seed(Some("instance-id: i\nlocal-hostname: from-meta\n"), Some(user), None));
    assert_eq!(e.config.node.hostname.as_deref(), Some("from-user-data"));
    assert_eq!(e.config.network.pod_cidr.as_deref(), Some("10.244.1.0/24"));
    assert!(ignored.is_empty());
}

#[test]
fn cloud_config_keys_are_mapped_and_the_rest_reported_by_name() {
    let user = r#"#cloud-config
hostname: web-1
fqdn: web-1.example.org
packages: [nginx]
runcmd: [echo hi]
ntp:
  servers: [ntp1.example.org]
  pools: [0.pool.ntp.org]
write_files:
  - path: /etc/kelson/motd
    content: hello
    permissions: '0600'
  - path: /etc/b64
    encoding: b64
    content: aGVsbG8gd29ybGQ=
    owner: root:root
kelson:
  network:
    podCIDR: 10.244.9.0/24
    clusterCIDR: 10.244.0.0/16
"#;
    let (e, ignored) = effective(&seed(None, Some(user), None));
    let c = &e.config;
    assert_eq!(c.node.hostname.as_deref(), Some("web-1"));
    assert_eq!(c.time.servers, vec!["ntp1.example.org", "0.pool.ntp.org"]);
    assert_eq!(c.files.len(), 2);
    assert_eq!(c.files[0].mode.as_deref(), Some("0600"));
    assert_eq!(c.files[1].content.expose(), "hello world");
    assert_eq!(c.network.pod_cidr.as_deref(), Some("10.244.9.0/24"));
    assert_eq!(
        ignored,
        vec![
            "user-data: packages (not supported on an appliance)",
            "user-data: runcmd (not supported on an appliance)",
        ]
    );
}

#[test]
fn fqdn_alone_gives_the_short_hostname() {
    let (e, _) = effective(&seed(None, Some("#cloud-config\nfqdn: db-2.example.org\n"), None));
    assert_eq!(e.config.node.hostname.as_deref(), Some("db-2"));
}

#[test]
fn network_config_v2_maps_onto_uplinks() {
    let net = r#"version: 2
ethernets:
  uplink:
    match:
      macaddress: "52:54:00:AB:CD:EF"
    set-name: lan0
    addresses: [192.0.2.10/24]
    routes:
      - to: default
        via: 192.0.2.1
      - to: 198.51.100.0/24
        via: 192.0.2.254
    nameservers:
      addresses: [192.0.2.53]
      search: [example.org]
    mtu: 1400
  eth1:
    dhcp4: true
"#;
    let (e, ignored) = effective(&seed(None, None, Some(net)));
    let n = &e.config.network;
    assert_eq!(n.uplinks.len(), 2);
    assert_eq!(n.uplinks[0].mac.as_deref(), Some("52:54:00:ab:cd:ef"));
    assert_eq!(n.uplinks[0].addresses, vec!["192.0.2.10/24"]);
    assert_eq!(n.uplinks[0].gateway4.as_deref(), Some("192.0.2.1"));
    assert_eq!(n.uplinks[0].routes.len(), 1);
    assert_eq!(n.uplinks[0].routes[0].to, "198.51.100.0/24");
    assert_eq!(n.uplinks[0].mtu, Some(1400));
    assert_eq!(n.uplinks[1].name.as_deref(), Some("eth1"));
    assert!(n.uplinks[1].dhcp4);
    assert_eq!(n.uplinks[0].set_name.as_deref(), Some("lan0"));
    assert_eq!(n.uplinks[1].set_name, None);
    assert_eq!(n.nameservers, vec!["192.0.2.53"]);
    assert_eq!(n.search_domains, vec!["example.org"]);
    assert!(ignored.is_empty(), "{ignored:?}");
}

#[test]
fn network_config_v2_set_name_with_a_name_match_renames_that_link() {
    let net = "version: 2\nethernets:\n  a:\n    match:\n      name: ens3\n    set-name: wan0\n    dhcp4: true\n";
    let (e, _) = effective(&seed(None, None, Some(net)));
    assert_eq!(e.config.network.uplinks[0].name.as_deref(), Some("ens3"));
    assert_eq!(e.config.network.uplinks[0].set_name.as_deref(), Some("wan0"));
}

#[test]
fn network_config_v2_search_domains_from_several_links_are_merged_once() {
    let net = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n    nameservers:\n      search: [a.example, b.example]\n  eth1:\n    dhcp4: true\n    nameservers:\n      search: [b.example, c.example]\n";
    let (e, _) = effective(&seed(None, None, Some(net)));
    assert_eq!(e.config.network.search_domains, vec!["a.example", "b.example", "c.example"]);
}

#[test]
fn network_config_v2_keys_that_cannot_change_routing_are_ignored_with_a_note() {
    let net = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n    dhcp6: false\n    optional: true\n";
    let (e, ignored) = effective(&seed(None, None, Some(net)));
    assert!(e.config.network.uplinks[0].dhcp4);
    assert_eq!(ignored, vec!["network-config: ethernets.eth0.optional (Kelson does not wait for links at boot)"]);
}

/// Each key Kelson cannot honour and that would change where traffic goes
/// is an error naming the file, the field and why.
#[test]
fn network_config_keys_that_would_change_routing_if_ignored_are_refused() {
    let doc = "cloud-init network-config (/dev/sr0)";
    let cases: &[(&str, String)] = &[
        (
            "version: 2\nethernets:\n  eth0:\n    routes:\n      - to: 10.1.0.0/16\n        via: 192.0.2.1\n        metric: 100\n",
            format!("{doc}: ethernets.eth0.routes[0].metric: not supported (routes take only to and via); ignoring it would change where traffic goes"),
        ),
        (
            "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n    dhcp4-overrides:\n      use-routes: false\n",
            format!("{doc}: ethernets.eth0.dhcp4-overrides: not supported: Kelson's DHCP client always installs the lease's router and nameservers, so overrides would be silently ignored"),
        ),
        (
            "version: 2\nethernets:\n  nic:\n    match:\n      driver: virtio_net\n    dhcp4: true\n",
            format!("{doc}: ethernets.nic.match.driver: only name and macaddress matches are supported (a match Kelson ignored could configure another link)"),
        ),
        (
            "version: 2\nethernets:\n  nic:\n    match:\n      name: en*\n    dhcp4: true\n",
            format!("{doc}: ethernets.nic.match.name: \"en*\": name patterns are not supported; give the interface name or its MAC"),
        ),
        (
            "version: 2\nethernets:\n  eth0:\n    dhcp6: true\n",
            format!("{doc}: ethernets.eth0.dhcp6: IPv6 is not supported by Kelson yet"),
        ),
        (
            "version: 2\nethernets:\n  eth0:\n    routing-policy:\n      - from: 192.0.2.0/24\n        table: 100\n",
            format!("{doc}: ethernets.eth0.routing-policy: not supported; it is refused rather than ignored because it could change where traffic goes"),
        ),
        (
            "version: 2\nethernets:\n  eth0:\n    set-name: lan0\n    dhcp4: true\n",
            format!("{doc}: ethernets.eth0.set-name: set-name needs a match (macaddress or name)"),
        ),
        (
            "version: 1\nconfig:\n  - type: physical\n    name: eth0\n    subnets:\n      - type: static\n        address: 192.0.2.5/24\n        routes:\n          - network: 10.9.0.0/16\n            gateway: 192.0.2.1\n            metric: 50\n",
            format!("{doc}: config[0].subnets[0].routes[0].metric: not supported (routes take network, netmask and gateway); ignoring it would change where traffic goes"),
        ),
    ];
    for (net, want) in cases {
        let errors = read_seed(&seed(None, None, Some(net))).unwrap_err().to_string();
        assert_eq!(&errors, want, "for {net}");
    }
}

#[test]
fn network_config_v1_dns_search_and_a_named_mac_become_search_domains_and_a_rename() {
    let net = "version: 1\nconfig:\n  - type: physical\n    name: lan0\n    mac_address: \"52:54:00:12:34:56\"\n    subnets:\n      - type: static\n        address: 192.0.2.20/24\n        dns_nameservers: [192.0.2.53]\n        dns_search: [corp.example]\n  - type: nameserver\n    address: [192.0.2.54]\n    search: [corp.example, lab.example]\n";
    let (e, ignored) = effective(&seed(None, None, Some(net)));
    let n = &e.config.network;
    assert_eq!(n.uplinks[0].mac.as_deref(), Some("52:54:00:12:34:56"));
    assert_eq!(n.uplinks[0].set_name.as_deref(), Some("lan0"));
    assert_eq!(n.search_domains, vec!["corp.example", "lab.example"]);
    assert!(ignored.is_empty(), "{ignored:?}");
}

#[test]
fn network_config_v2_under_a_network_key_is_accepted() {
    let net = "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n";
    let (e, _) = effective(&seed(None, None, Some(net)));
    assert!(e.config.network.uplinks[0].dhcp4);
}

#[test]
fn network_config_v1_maps_onto_uplinks() {
    let net = r#"version: 1
config:
  - type: physical
    name: eth0
    mac_address: "52:54:00:12:34:56"
    mtu: 1500
    subnets:
      - type: static
        address: 192.0.2.20
        netmask: 255.255.255.0
        gateway: 192.0.2.1
        dns_nameservers: [192.0.2.53]
        routes:
          - network: 10.20.0.0
            netmask: 255.255.0.0
            gateway: 192.0.2.254
  - type: physical
    name: eth1
    subnets:
      - type: dhcp
  - type: nameserver
    address: [192.0.2.54]
"#;
    let (e, ignored) = effective(&seed(None, None, Some(net)));
    let n = &e.config.network;
    assert_eq!(n.uplinks[0].mac.as_deref(), Some("52:54:00:12:34:56"));
    assert_eq!(n.uplinks[0].set_name.as_deref(), Some("eth0"));
    assert_eq!(n.uplinks[0].addresses, vec!["192.0.2.20/24"]);
    assert_eq!(n.uplinks[0].gateway4.as_deref(), Some("192.0.2.1"));
    assert_eq!(n.uplinks[0].routes[0].to, "10.20.0.0/16");
    assert_eq!(n.uplinks[1].name.as_deref(), Some("eth1"));
    assert!(n.uplinks[1].dhcp4);
    assert_eq!(n.nameservers, vec!["192.0.2.53", "192.0.2.54"]);
    assert!(ignored.is_empty(), "{ignored:?}");
}

#[test]
fn broken_seeds_give_errors_naming_the_file_and_field() {
    let cases: &[(SeedFiles, &str)] = &[
        (
            seed(None, Some("#!/bin/sh\necho hi\n"), None),
            "cloud-init user-data (/dev/sr0): document: a shell script as user-data is not supported on Kelson (use a MachineConfig or #cloud-config)",
        ),
        (
            seed(None, None, Some("version: 3\n")),
            "cloud-init network-config (/dev/sr0): version: network-config must say version: 1 or version: 2",
        ),
        (
            seed(None, None, Some("version: 2\nethernets:\n  all:\n    match:\n      name: en*\n")),
            "cloud-init network-config (/dev/sr0): ethernets.all.match.name: \"en*\": name patterns are not supported; give the interface name or its MAC",
        ),
        (
            seed(None, Some("#cloud-config\nwrite_files:\n  - path: /x\n    contnet: y\n"), None),
            "cloud-init user-data (/dev/sr0): write_files[0].contnet: unknown write_files key (did you mean `content`?)",
        ),
        (
            seed(None, Some("#cloud-config\nwrite_files:\n  - path: /x\n    encoding: gz\n    content: hi\n"), None),
            "cloud-init user-data (/dev/sr0): write_files[0].encoding: \"gz\" is not supported (use text/plain or b64)",
        ),
        (
            seed(None, Some("apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnetwrk: {}\n"), None),
            "cloud-init user-data (/dev/sr0): netwrk: unknown field (did you mean `network`?)",
        ),
        (
            seed(Some("instance-id: [a\n"), None, None),
            "cloud-init meta-data (/dev/sr0): line 1 column 14: unclosed bracket",
        ),
    ];
    for (files, expected) in cases {
        let err = read_seed(files).unwrap_err().to_string();
        assert!(err.starts_with(expected), "expected {expected:?}\n     got {err:?}");
    }
}

#[test]
fn invalid_values_in_a_seed_are_reported_against_the_seed_file() {
    let net = "version: 2\nethernets:\n  eth0:\n    addresses: [192.0.2.300/24]\n";
    let s = read_seed(&seed(None, None, Some(net))).unwrap();
    let err = resolve(&s.layers).unwrap_err().to_string();
    assert_eq!(
        err,
        "cloud-init network-config (/dev/sr0): network.uplinks[0].addresses[0]: \"192.0.2.300/24\" is not an address with a prefix length (10.0.0.5/24)"
    );
}

#[test]
fn a_seed_combined_for_saving_resolves_to_the_same_config() {
    let files = seed(
        Some("instance-id: i\nlocal-hostname: n1\n"),
        Some("#cloud-config\nkelson:\n  network:\n    mtu: 1460\n"),
        Some("version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"),
    );
    let s = read_seed(&files).unwrap();
    let combined = s.combined("saved seed").unwrap();
    assert_eq!(resolve(&s.layers).unwrap().config, resolve(&[combined]).unwrap().config);
}
