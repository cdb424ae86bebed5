//! Good and broken machine configs, each broken one with the exact errors
//! it must produce.
#![allow(clippy::unwrap_used)]

use kelson_config::{parse, Role};

const GOOD: &str = r#"
apiVersion: kelson.dev/v1alpha1
kind: MachineConfig
node:
  hostname: node-a
  role: control-plane
  labels:
    zone: lab
network:
  uplinks:
    - name: eth0
      addresses: [192.0.2.10/24]
      gateway4: 192.0.2.1
      routes:
        - to: 198.51.100.0/24
          via: 192.0.2.254
  podCIDR: 10.244.1.0/24
  clusterCIDR: 10.244.0.0/16
  serviceCIDR: 10.96.0.0/12
  mtu: 1460
  nameservers: [192.0.2.53]
  peerRoutes:
    - podCIDR: 10.244.2.0/24
      via: 192.0.2.11
cluster:
  name: lab
  etcdEndpoints: [https://192.0.2.10:2379]
  apiServerEndpoint: https://192.0.2.10:6443
  dnsAddress: 10.96.0.10
  dnsDomain: cluster.local
  bootstrapToken: abcdef.0123456789abcdef
kubelet:
  extraArgs: [--v=2]
files:
  - path: /etc/motd
    content: hello
    mode: "0644"
sysctls:
  vm.max_map_count: "262144"
kernelModules: [ip_vs]
install:
  disk: /dev/vda
  wipe: true
"#;

#[test]
fn a_complete_config_parses_with_every_section() {
    let c = parse("good.yaml", GOOD).unwrap();
    assert_eq!(c.node.hostname.as_deref(), Some("node-a"));
    assert_eq!(c.node.role, Role::ControlPlane);
    assert_eq!(c.network.pod_cidr.as_deref(), Some("10.244.1.0/24"));
    assert_eq!(c.network.mtu, Some(1460));
    assert_eq!(c.network.peer_routes[0].via, "192.0.2.11");
    assert_eq!(c.cluster.dns_domain.as_deref(), Some("cluster.local"));
    assert_eq!(c.files[0].path, "/etc/motd");
    assert_eq!(c.kernel_modules, vec!["ip_vs"]);
    assert_eq!((c.install.disk.as_deref(), c.install.wipe), (Some("/dev/vda"), true));
}

#[test]
fn a_minimal_config_is_enough() {
    let c = parse("min.yaml", "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\n").unwrap();
    assert_eq!(c.node.role, Role::Worker);
    assert!(c.network.uplinks.is_empty());
}

/// (document, expected errors, one per line)
const BROKEN: &[(&str, &str)] = &[
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  podCidr: 10.0.0.0/24\n",
        "broken.yaml: network.podCidr: unknown field (did you mean `podCIDR`?)",
    ),
    (
        "apiVersion: v1\nkind: Pod\n",
        "broken.yaml: apiVersion: \"v1\" is not supported (use \"kelson.dev/v1alpha1\")\n\
         broken.yaml: kind: \"Pod\" is not \"MachineConfig\"",
    ),
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  podCIDR: 10.245.1.0/24\n  clusterCIDR: 10.244.0.0/16\n  serviceCIDR: 10.244.128.0/20\n  mtu: 100\n",
        "broken.yaml: network.podCIDR: 10.245.1.0/24 is not inside network.clusterCIDR 10.244.0.0/16\n\
         broken.yaml: network.serviceCIDR: 10.244.128.0/20 overlaps network.clusterCIDR 10.244.0.0/16\n\
         broken.yaml: network.mtu: 100 is outside 576..=9000",
    ),
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  podCIDR: 10.244.1.5/24\n  uplinks:\n    - dhcp4: true\n      mac: 52:54:00:zz:00:01\n",
        "broken.yaml: network.podCIDR: \"10.244.1.5/24\" has host bits set (the network is 10.244.1.0/24)\n\
         broken.yaml: network.uplinks[0].mac: \"52:54:00:zz:00:01\" is not a MAC address like 52:54:00:12:34:56",
    ),
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  podCIDR: 10.244.1.0/24\n  peerRoutes:\n    - podCIDR: 10.244.1.128/25\n      via: 192.0.2.11\n    - podCIDR: 10.244.2.0/24\n      via: nowhere\n",
        "broken.yaml: network.peerRoutes[0].podCIDR: 10.244.1.128/25 overlaps this node's network.podCIDR 10.244.1.0/24\n\
         broken.yaml: network.peerRoutes[1].via: \"nowhere\" is not an IP address",
    ),
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: Node_A\ncluster:\n  bootstrapToken: secret-value-here\nfiles:\n  - path: etc/x\n    content: x\n    mode: \"0999\"\n",
        "broken.yaml: node.hostname: \"Node_A\" is not a lowercase RFC 1123 name of at most 63 characters\n\
         broken.yaml: cluster.bootstrapToken: not a bootstrap token of the form [a-z0-9]{6}.[a-z0-9]{16}\n\
         broken.yaml: files[0].path: \"etc/x\" is not an absolute path\n\
         broken.yaml: files[0].mode: \"0999\" is not an octal file mode like \"0644\"",
    ),
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\ninstall:\n  disk: vda\n  wipe: yes-please\n",
        "broken.yaml: install.wipe: expected true or false, found a string",
    ),
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\ninstall:\n  disk: /dev/../etc/passwd\n",
        "broken.yaml: install.disk: \"/dev/../etc/passwd\" is not a whole disk's device like /dev/vda",
    ),
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\ninstall:\n  wipe: true\n",
        "broken.yaml: install.wipe: set without install.disk (which disk to wipe?)",
    ),
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnetwork:\n  mtu: lots\n",
        "broken.yaml: network.mtu: expected an integer, found a string",
    ),
    (
        // Every structural error at once, each with its path.
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostnam: a\n  role: master\nnetwork:\n  mtu: big\n  uplinks:\n    - name: eth0\n      dhcp4: [yes]\n      routes:\n        - to: 10.0.0.0/8\ncluster:\n  bootstrapToken: [not, a, string]\nfiles: {}\n",
        "broken.yaml: node.hostnam: unknown field (did you mean `hostname`?)\n\
         broken.yaml: node.role: `master` is not one of `control-plane`, `worker`\n\
         broken.yaml: network.mtu: expected an integer, found a string\n\
         broken.yaml: network.uplinks[0].dhcp4: expected true or false, found a list\n\
         broken.yaml: network.uplinks[0].routes[0].via: missing (required)\n\
         broken.yaml: cluster.bootstrapToken: expected a string, found a list\n\
         broken.yaml: files: expected a list, found a mapping",
    ),
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\ncluster:\n  etcdJoin: true\n  etcdEndpoints: [http://192.0.2.10:2379]\n",
        "broken.yaml: cluster.etcdJoin: only a control-plane node runs an etcd member to join\n\
         broken.yaml: cluster.etcdJoin: needs the static pod etcd.yaml (staticPods), whose --initial-cluster it sets\n\
         broken.yaml: cluster.etcdEndpoints[0]: \"http://192.0.2.10:2379\" is not an https:// URL (etcd is reached over mutual TLS)\n\
         broken.yaml: cluster.apiServerEndpoint: a worker needs the API server endpoint to join",
    ),
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  role: control-plane\ncluster:\n  etcdJoin: true\nstaticPods:\n  - name: etcd.yaml\n    manifest: 'kind: Pod'\n",
        "broken.yaml: cluster.etcdJoin: needs cluster.etcdEndpoints: the running members it adds itself through",
    ),
    (
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnetwork: [\n",
        "broken.yaml: line 3 column 10: unclosed bracket '['",
    ),
];

#[test]
fn each_broken_config_gives_exactly_its_errors() {
    for (text, expected) in BROKEN {
        let err = parse("broken.yaml", text).unwrap_err();
        assert_eq!(err.to_string(), *expected, "for document:\n{text}");
    }
}

#[test]
fn secrets_never_appear_in_errors() {
    let err = parse(
        "s.yaml",
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\ncluster:\n  bootstrapToken: hunter2-not-a-token\n",
    )
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_config_written_as_yaml_reads_back_unchanged() {
    let c = parse("good.yaml", GOOD).unwrap();
    let text = c.to_yaml_with_secrets();
    assert_eq!(parse("round-trip.yaml", &text).unwrap(), c, "{text}");
    let empty = kelson_config::MachineConfig::empty();
    assert_eq!(parse("empty.yaml", &empty.to_yaml()).unwrap(), empty);
}
