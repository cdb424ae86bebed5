//! A real one-node Kubernetes cluster: the disk image booted by OVMF with
//! the seed `kelsonctl gen cluster` wrote for its control-plane node. PID 1
//! runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler
//! from the generated kubeadm-style manifests; the supervisor runs
//! containerd, the kubelet and kube-proxy. The host reaches the API server
//! through one `hostfwd` to 127.0.0.1 and drives it with the same kubectl
//! build the node ships (`target/image/kubectl`).
//!
//! One cluster serves every check (boots are the cost under TCG): the
//! node Ready at the pinned version, the API server ready and the
//! controller manager and scheduler holding their leases, Kelson's node
//! condition, a Pod run by the real kubelet through containerd and the CNI
//! bridge, kube-apiserver killed and restarted by PID 1 (with an Event and
//! the condition's restart count), and a reboot that keeps the Pod object
//! (etcd's data on /var, the disk's state partition).
//!
//! A worker added afterwards with `kelsonctl gen node` joins on a loopback
//! socket network (the node network; the control-plane node's second NIC
//! is QEMU's user network, for the hostfwds). The control-plane node's
//! seed has no route to it: that route comes from PID 1's Node watcher,
//! the worker's pod CIDR from its config written into its Node by its
//! PID 1. A Pod on the worker answers the control-plane node by pod IP;
//! a NodePort Service in front of it answers by cluster IP on both nodes
//! and in a pod, and from the host by its node port (a third hostfwd);
//! `kubectl delete node` of the worker takes its route away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use qemu_tests::kelsonctl::Kelsonctl;
use qemu_tests::{free_loopback_port, guest_layer_with_agent, ImagePaths, Vm, VmBuilder, GUEST_APPLET_DIR};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const CLUSTER: &str = "k";
const NODE: &str = "k-cp-1";
const WORKER: &str = "k-worker-1";
/// The nodes' MACs on the node network, and the control-plane node's on
/// QEMU's user network: each uplink is chosen by MAC, whatever the
/// kernel names the NICs.
const NODE_MAC: &str = "52:54:00:6b:00:10";
const WORKER_MAC: &str = "52:54:00:6b:00:11";
const HOSTFWD_MAC: &str = "52:54:00:6b:01:10";
/// Workers joining by bootstrap token: one from the join seed, one with a
/// wrong CA hash (and a NIC on QEMU's user network for its management API).
const TOKEN_WORKER: &str = "k-tw-1";
const TOKEN_WORKER_MAC: &str = "52:54:00:6b:00:12";
const WRONG_HASH_WORKER: &str = "k-worker-2";
const WRONG_HASH_WORKER_MAC: &str = "52:54:00:6b:00:13";
const WRONG_HASH_HOSTFWD_MAC: &str = "52:54:00:6b:01:13";
/// The control-plane node's address on QEMU's user network (its DHCP
/// default, configured statically), where the hostfwds land.
const HOSTFWD_ADDRESS: &str = "10.0.2.15";
/// Boot to PID 1's "ready" (all stages run; the control plane is starting).
const BOOT: Duration = Duration::from_secs(600);
/// From ready to the API server answering and the node Ready: minutes of
/// Go start-up under software emulation.
const CLUSTER_UP: Duration = Duration::from_secs(1200);
const AGENT: Duration = Duration::from_secs(120);
/// The worker's web Service's node port, forwarded from the host.
const NODE_PORT: u16 = 30080;

/// kubectl on the host, pointed at the node through the forwarded port.
struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    server: String,
}

impl Kubectl {
    /// Runs kubectl with `args`; Ok(stdout) when it exits 0, else Err(its
    /// output).
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--server", &self.server, "--request-timeout", "30s"])
            .args(args)
            .output()
            .expect("running kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("kubectl {args:?}: {}{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Runs kubectl until `done` accepts its output, or panics after
    /// `timeout` with the last output and the node's console tail.
    fn until(&self, vm: &Vm, what: &str, args: &[&str], timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        poll_until(timeout, Duration::from_secs(5), || match self.run(args) {
            Ok(out) if done(&out) => Ok(out),
            Ok(out) => Err(format!("{out:?}")),
            Err(e) => Err(e),
        })
        .unwrap_or_else(|last| {
            let console = vm.console_text().unwrap_or_default();
            let tail: Vec<&str> = console.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("{what}: not within {timeout:?}; last: {last}\nconsole tail:\n{}", tail.join("\n"));
        })
    }
}

/// Tries `attempt` every `every` until it gives a value, or gives its last
/// problem once `timeout` has passed.
fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(problem) if Instant::now() >= deadline => return Err(problem),
            Err(_) => std::thread::sleep(every),
        }
    }
}

fn sh(vm: &mut Vm, cmd: &str) -> String {
    let out = vm.agent_exec(cmd, AGENT).unwrap();
    assert!(out.status == 0, "{cmd}: exit {}: {}", out.status, out.output);
    out.output.trim().to_owned()
}

/// kube-apiserver's restart count in the KelsonStaticPodsHealthy message
/// (`kube-apiserver-<node> running ready (restarts N)`).
fn apiserver_restarts(message: &str) -> Option<u32> {
    let rest = message.split(&format!("kube-apiserver-{NODE} ")).nth(1)?;
    rest.split("(restarts ").nth(1)?.split(')').next()?.parse().ok()
}

/// Runs `wget` on `vm` until it answers (kube-proxy's rules arrive within
/// its sync period), and checks the answer is the worker's pod.
fn service_answers(vm: &mut Vm, from: &str, wget: &str) {
    let body = poll_until(Duration::from_secs(120), Duration::from_secs(2), || {
        let answer = vm.agent_exec(wget, AGENT).unwrap();
        if answer.status == 0 {
            Ok(answer.output)
        } else {
            Err(answer.output)
        }
    })
    .unwrap_or_else(|last| panic!("the Service from {from} not answering: {last}"));
    assert_eq!(body.trim(), "hello from web-worker", "the Service from {from}");
}

/// The body of `GET /` from `address` (host:port), over plain HTTP/1.0.
fn http_get(address: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => Ok(body.to_owned()),
        _ => Err(std::io::Error::other(format!("not a 200 answer: {response:?}"))),
    }
}

/// The first line of `ip route` on `vm` for `network`, polled until
/// `present` holds of it (Some) or not (None), within a minute.
fn route_until(vm: &mut Vm, network: &str, present: bool) -> Option<String> {
    poll_until(Duration::from_secs(60), Duration::from_secs(1), || {
        let routes = sh(vm, &format!("ip route show {network}"));
        let line = routes.lines().next().map(str::to_owned);
        if line.is_some() == present {
            Ok(line)
        } else {
            Err(routes)
        }
    })
    .unwrap_or_else(|routes| panic!("route to {network} present={present} not within a minute: {routes:?}"))
}

/// The worker turns Ready, each node's pod CIDR is in its Node, each node
/// routes to the other's pod CIDR (the control-plane node's route learnt
/// from the worker's Node: its seed has none), pods answer across nodes by
/// pod IP, a NodePort Service (kube-proxy) in front of the worker's pod
/// answers by its cluster IP on both nodes and from a pod on the
/// control-plane node, and by its node port from the host, and deleting
/// the worker's Node takes its route away on the control-plane node.
fn the_worker_joins_and_routes_follow_its_node(
    kubectl: &Kubectl,
    vm: &mut Vm,
    worker: &mut Vm,
    cp_pod_ip: &str,
    dir: &std::path::Path,
    node_port_forward: u16,
) {
    let ready = r#"{.status.conditions[?(@.type=="Ready")].status}"#;
    kubectl.until(
        worker,
        "the worker Ready",
        &["get", "node", WORKER, "-o", &format!("jsonpath={ready}")],
        CLUSTER_UP,
        |o| o == "True",
    );
    // PID 1 on the control-plane node applied the grant the Node
    // watchers need (a node may read only its own Node otherwise).
    let bound = kubectl.until(
        vm,
        "the kelson:node-reader binding",
        &["get", "clusterrolebinding", "kelson:node-reader", "-o", "jsonpath={.subjects[0].name}"],
        CLUSTER_UP,
        |o| !o.is_empty(),
    );
    assert_eq!(bound, "system:nodes");
    let cidrs = kubectl.until(
        vm,
        "both nodes' pod CIDRs",
        &["get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR} {end}"],
        CLUSTER_UP,
        |o| o.split_whitespace().count() == 2 && !o.contains("= "),
    );
    assert_eq!(cidrs.trim(), format!("{NODE}=10.244.0.0/24 {WORKER}=10.244.1.0/24"));
    // The control-plane node's seed has no route to the worker: this one
    // is the Node watcher's.
    let to_worker = route_until(vm, "10.244.1.0/24", true).unwrap();
    assert!(to_worker.contains("via 192.168.100.11"), "{to_worker}");
    let to_cp = route_until(worker, "10.244.0.0/24", true).unwrap();
    assert!(to_cp.contains("via 192.168.100.10"), "{to_cp}");

    // A Pod on the worker, reached by pod IP from the control-plane node,
    // and the control-plane node's Pod from the worker.
    sh(
        worker,
        "tar -C /usr/lib/kelson/images/busybox -c oci-layout index.json blobs \
         | ctr -n k8s.io images import --snapshotter overlayfs - >/dev/null",
    );
    let pod: serde_json::Value = serde_json::from_str(WEB_POD).unwrap();
    let mut pod = pod;
    pod["metadata"]["name"] = "web-worker".into();
    pod["spec"]["nodeName"] = WORKER.into();
    let pod_file = dir.join("web-worker.json");
    std::fs::write(&pod_file, pod.to_string()).unwrap();
    kubectl.run(&["apply", "-f", pod_file.to_str().unwrap()]).unwrap();
    let running = kubectl.until(
        worker,
        "Pod web-worker running",
        &["get", "pod", "web-worker", "-o", "jsonpath={.status.phase} {.status.podIP}"],
        CLUSTER_UP,
        |o| o.starts_with("Running "),
    );
    let worker_pod_ip = running.split(' ').nth(1).unwrap().to_owned();
    assert!(worker_pod_ip.starts_with("10.244.1."), "pod IP {worker_pod_ip} outside the worker's pod CIDR");
    // `timeout`, not wget's -T: busybox 1.35's wget -T segfaults.
    assert_eq!(sh(vm, &format!("timeout 20 wget -q -O - http://{worker_pod_ip}:8080/")), "hello from web-worker");
    assert_eq!(sh(worker, &format!("timeout 20 wget -q -O - http://{cp_pod_ip}:8080/")), "hello from web");

    // Source addresses, as a CGI script under busybox httpd sees them: from
    // pod to pod across nodes the pod's own; from a pod to an address
    // outside the cluster CIDR (the worker's node address, where a
    // host-side httpd listens) the control-plane node's, by the
    // MASQUERADE rule.
    let peer_seen = |url: &str| {
        kubectl
            .until(
                vm,
                &format!("Pod web fetching {url}"),
                &["exec", "web", "--", "timeout", "10", "wget", "-q", "-O", "-", url],
                Duration::from_secs(120),
                |o| !o.trim().is_empty(),
            )
            // busybox httpd listens on IPv6 and writes an IPv4 peer as a
            // mapped address in brackets: "[::ffff:10.244.0.128]".
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_start_matches("::ffff:")
            .to_owned()
    };
    let from_pod = peer_seen(&format!("http://{worker_pod_ip}:8080/cgi-bin/peer"));
    assert_eq!(from_pod, cp_pod_ip, "the pod's source address was not kept across nodes");
    sh(
        worker,
        &format!(
            "mkdir -p /tmp/peer/cgi-bin && printf '#!{GUEST_APPLET_DIR}/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' \
             > /tmp/peer/cgi-bin/peer && chmod 755 /tmp/peer/cgi-bin/peer && httpd -p 8081 -h /tmp/peer"
        ),
    );
    let outside = peer_seen("http://192.168.100.11:8081/cgi-bin/peer");
    assert_eq!(outside, "192.168.100.10", "traffic leaving the cluster CIDR not masqueraded to the node's address");

    // A NodePort Service in front of the worker's Pod (it has a cluster IP
    // too): kube-proxy on each node sends its traffic to the worker's pod.
    kubectl.run(&["label", "pod", "web-worker", "app=web-worker"]).unwrap();
    let node_port = NODE_PORT.to_string();
    kubectl.run(&["create", "service", "nodeport", "web-worker", "--tcp=80:8080", "--node-port", &node_port]).unwrap();
    let cluster_ip = kubectl.run(&["get", "service", "web-worker", "-o", "jsonpath={.spec.clusterIP}"]).unwrap();
    let service_cidr = kelsonctl::gen::ClusterSpec::with_defaults(CLUSTER, 1, 0).service_cidr;
    let address: std::net::Ipv4Addr = cluster_ip.parse().unwrap();
    assert!(service_cidr.contains(&address), "cluster IP {cluster_ip} outside {service_cidr}");
    let service_url = format!("http://{cluster_ip}/");
    // kube-proxy writes the Service's rules within its sync period.
    // From the control-plane node itself, from a pod on it (the answer
    // crosses to the worker), and from the worker node.
    service_answers(vm, "the control-plane node", &format!("timeout 10 wget -q -O - {service_url}"));
    let from_pod = kubectl.until(
        vm,
        "the Service from Pod web",
        &["exec", "web", "--", "timeout", "10", "wget", "-q", "-O", "-", &service_url],
        Duration::from_secs(120),
        |o| !o.is_empty(),
    );
    assert_eq!(from_pod.trim(), "hello from web-worker");
    service_answers(worker, "the worker node", &format!("timeout 10 wget -q -O - {service_url}"));
    // The NodePort from the host: QEMU forwards a loopback port to the
    // control-plane node's port 30080, kube-proxy sends it on to the worker.
    let body = poll_until(Duration::from_secs(120), Duration::from_secs(2), || {
        http_get(&format!("127.0.0.1:{node_port_forward}")).map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("the NodePort through the hostfwd: {e}"));
    assert_eq!(body.trim(), "hello from web-worker");

    // The worker's Node deleted: its route goes from the control-plane
    // node; the worker still routes to the control plane's pods.
    kubectl.run(&["delete", "service", "web-worker"]).unwrap();
    kubectl.run(&["delete", "pod", "web-worker", "--wait=false"]).unwrap();
    kubectl.run(&["delete", "node", WORKER]).unwrap();
    assert_eq!(route_until(vm, "10.244.1.0/24", false), None);
    assert!(route_until(worker, "10.244.0.0/24", true).is_some());
}

/// A worker from the join seed: its user-data is `gen cluster`'s
/// `join/user-data` (endpoint, token, CA hash) as any number of workers
/// would share it; its own are the meta-data (name), the network-config
/// (address on the node network, chosen by MAC) and the kernel command
/// line (`kelson.podCIDR`, through the SMBIOS string systemd-stub
/// appends). `user_data` edits the shared user-data for this VM.
/// One token-joining worker's own settings.
struct TokenWorker<'a> {
    name: &'a str,
    mac: &'a str,
    address: &'a str,
    pod_cidr: &'a str,
    /// A NIC on QEMU's user network (its MAC) with a hostfwd from this
    /// loopback port to the management API.
    management: Option<(&'a str, u16)>,
}

fn token_worker(
    image: &ImagePaths,
    dir: &std::path::Path,
    node: &TokenWorker<'_>,
    user_data: &str,
    node_network: u16,
) -> Vm {
    let TokenWorker { name, mac, address, pod_cidr, management: extra_nic } = *node;
    let vm_dir = dir.join(name);
    std::fs::create_dir_all(&vm_dir).unwrap();
    let mut ethernets = serde_json::json!({
        "node": {"match": {"macaddress": mac}, "addresses": [format!("{address}/24")], "gateway4": "192.168.100.1"}
    });
    if let Some((hostfwd_mac, _)) = extra_nic {
        ethernets["hostfwd"] =
            serde_json::json!({"match": {"macaddress": hostfwd_mac}, "addresses": [format!("{HOSTFWD_ADDRESS}/24")]});
    }
    let network_config = serde_json::json!({"version": 2, "ethernets": ethernets}).to_string();
    let meta_data = format!("instance-id: {name}\nlocal-hostname: {name}\n");
    let seed = qemu_tests::seed::fat_seed(
        &vm_dir,
        &[("meta-data", &meta_data), ("user-data", user_data), ("network-config", &network_config)],
    )
    .unwrap();
    let disk = image.disk_overlay(&vm_dir, "8G").unwrap();
    let mut builder = VmBuilder::firmware()
        .name(name)
        .ovmf(&vm_dir)
        .unwrap()
        .disk_qcow2(&disk)
        .disk(&seed)
        .memory_mib(1536)
        .layer(guest_layer_with_agent("/bin/busybox"))
        .append(&format!("kelson.podCIDR={pod_cidr}"))
        .socket_nic_connect(node_network, mac);
    let netdev;
    if let Some((hostfwd_mac, api_port)) = extra_nic {
        netdev = format!("user,id=up,restrict=on,hostfwd=tcp:127.0.0.1:{api_port}-{HOSTFWD_ADDRESS}:50000");
        builder =
            builder.qemu_args(["-netdev", &netdev, "-device", &format!("virtio-net-pci,netdev=up,mac={hostfwd_mac}")]);
    }
    let mut vm = builder.boot().unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    vm
}

/// Joining by bootstrap token, one worker at a time on the node network
/// (its socket takes one VM): a worker from the shared join seed verifies
/// the cluster CA, its kubelet's TLS bootstrap is approved, and it turns
/// Ready; one whose seed has a wrong CA hash stays out, saying why on its
/// console and in its status (`kelsonctl status`, through a hostfwd of its
/// own management API, whose certificate the test adds to its user-data).
fn workers_join_by_bootstrap_token(
    kubectl: &Kubectl,
    cp: &mut Vm,
    image: &ImagePaths,
    dir: &std::path::Path,
    cluster: &std::path::Path,
    node_network: u16,
) {
    let join = std::fs::read_to_string(cluster.join("join/user-data")).unwrap();
    // PID 1 on the control-plane node published the token and cluster-info.
    let summary: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(cluster.join("cluster.yaml")).unwrap()).unwrap();
    let token_id = summary["tokenJoin"]["tokenId"].as_str().unwrap().to_owned();
    let secret_type = kubectl.until(
        &*cp,
        "the bootstrap token's Secret",
        &["-n", "kube-system", "get", "secret", &format!("bootstrap-token-{token_id}"), "-o", "jsonpath={.type}"],
        CLUSTER_UP,
        |o| !o.is_empty(),
    );
    assert_eq!(secret_type, "bootstrap.kubernetes.io/token");
    // The controller-manager's bootstrapsigner signs cluster-info with it.
    kubectl.until(
        &*cp,
        "cluster-info signed for the token",
        &["-n", "kube-public", "get", "configmap", "cluster-info", "-o", "jsonpath={.data}"],
        CLUSTER_UP,
        |o| o.contains(&format!("jws-kubeconfig-{token_id}")),
    );

    let started = Instant::now();
    let node = TokenWorker {
        name: TOKEN_WORKER,
        mac: TOKEN_WORKER_MAC,
        address: "192.168.100.12",
        pod_cidr: "10.244.2.0/24",
        management: None,
    };
    let mut joined = token_worker(image, dir, &node, &join, node_network);
    let ready = r#"{.status.conditions[?(@.type=="Ready")].status} {.status.nodeInfo.kubeletVersion}"#;
    let node = kubectl.until(
        &joined,
        "the token-joined worker Ready",
        &["get", "node", TOKEN_WORKER, "-o", &format!("jsonpath={ready}")],
        CLUSTER_UP,
        |o| o.starts_with("True "),
    );
    assert_eq!(node, "True v1.36.3");
    println!("{TOKEN_WORKER} Ready {} s after its power-on", started.elapsed().as_secs());
    // Its certificate came from the kubelet's TLS bootstrap: a CSR by the
    // token's user, approved by the controller-manager and issued.
    let csrs = kubectl
        .run(&[
            "get",
            "csr",
            "-o",
            "jsonpath={range .items[*]}{.spec.username} {.spec.signerName} {.status.conditions[0].type} {.status.certificate}{\"\\n\"}{end}",
        ])
        .unwrap();
    let bootstrap = csrs
        .lines()
        .find(|l| {
            l.starts_with(&format!("system:bootstrap:{token_id} kubernetes.io/kube-apiserver-client-kubelet Approved "))
        })
        .unwrap_or_else(|| panic!("no approved bootstrap CSR for token {token_id}:\n{csrs}"));
    assert!(bootstrap.split(' ').nth(3).is_some_and(|c| !c.is_empty()), "not issued: {bootstrap}");
    let console = joined.console_text().unwrap();
    assert!(console.contains("token join: the cluster CA (sha256:"), "no discovery line on the console");
    assert!(!console.contains(summary_secret(&join).as_str()), "the token's secret on the console");
    let kubelet_cert = sh(&mut joined, "ls /var/lib/kubelet/pki/");
    assert!(kubelet_cert.contains("kubelet-client-current.pem"), "{kubelet_cert}");
    // With that certificate its PID 1's Node watcher writes the pod CIDR
    // from its command line into its Node, so the control-plane node
    // routes to it; kube-proxy runs as the node (system:node-proxier).
    let cidr = kubectl.until(
        &joined,
        "the token-joined worker's pod CIDR in its Node",
        &["get", "node", TOKEN_WORKER, "-o", "jsonpath={.spec.podCIDR}"],
        CLUSTER_UP,
        |o| !o.is_empty(),
    );
    assert_eq!(cidr, "10.244.2.0/24");
    let to_joined = route_until(cp, "10.244.2.0/24", true).unwrap();
    assert!(to_joined.contains("via 192.168.100.12"), "{to_joined}");
    poll_until(Duration::from_secs(300), Duration::from_secs(5), || {
        let state = sh(&mut joined, "cat /run/kelson/services/kube-proxy.json");
        if state.contains("\"state\": \"healthy\"") {
            Ok(())
        } else {
            Err(state)
        }
    })
    .unwrap_or_else(|state| panic!("kube-proxy on {TOKEN_WORKER} not healthy: {state}"));
    joined.kill().unwrap();
    kubectl.run(&["delete", "node", TOKEN_WORKER]).unwrap();

    // The same seed with a wrong CA hash: the node boots, never joins,
    // and says why.
    let wrong_hash = format!("sha256:{}", "0".repeat(64));
    let real_hash = summary["tokenJoin"]["caCertHash"].as_str().unwrap().to_owned();
    assert!(join.contains(&real_hash));
    let added = kelsonctl::gen::generate_node(
        cluster,
        &kelsonctl::gen::NodeSpec { name: WRONG_HASH_WORKER.to_owned(), role: kelson_config::Role::Worker },
    )
    .unwrap();
    // Its management API's certificate and the CA its clients are signed
    // by, from gen node (the join seed has none: a management certificate
    // names one node); everything else is the join seed's.
    let generated: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(cluster.join(format!("nodes/{WRONG_HASH_WORKER}/machine-config.yaml"))).unwrap(),
    )
    .unwrap();
    let mut user_data: serde_json::Value = serde_saphyr::from_str(&join.replace(&real_hash, &wrong_hash)).unwrap();
    user_data["pki"] = serde_json::json!({
        "ca": generated["pki"]["ca"],
        "certificates": {"management-api": generated["pki"]["certificates"]["management-api"]},
    });
    let api_port = free_loopback_port().unwrap();
    let address = added.node.address.to_string();
    let pod_cidr = added.node.pod_cidr.to_string();
    let node = TokenWorker {
        name: WRONG_HASH_WORKER,
        mac: WRONG_HASH_WORKER_MAC,
        address: &address,
        pod_cidr: &pod_cidr,
        management: Some((WRONG_HASH_HOSTFWD_MAC, api_port)),
    };
    let mut refused = token_worker(image, dir, &node, &user_data.to_string(), node_network);
    refused.expect("none of cluster.caCertHashes", Duration::from_secs(300)).unwrap();
    let ctl = Kelsonctl::beside_tests(&cluster.join("kelsonconfig"), WRONG_HASH_WORKER, api_port).unwrap();
    let status = ctl
        .until(&refused, "the cluster-joined condition's reason", &["status"], Duration::from_secs(300), |s| {
            s["conditions"]["cluster-joined"]["state"] == "unreachable"
        })
        .unwrap();
    let reason = status["conditions"]["cluster-joined"]["reason"].as_str().unwrap().to_owned();
    println!("{WRONG_HASH_WORKER}: cluster-joined: {reason}");
    assert!(reason.contains(&format!("is {real_hash}, none of cluster.caCertHashes ({wrong_hash})")), "{reason}");
    let text = ctl.run(&["status"]).unwrap();
    assert!(text.contains("cluster-joined") && text.contains("none of cluster.caCertHashes"), "{text}");
    let services = ctl.json(&["services"]).unwrap();
    println!("{WRONG_HASH_WORKER}'s services: {services}");
    // Nothing half-written: no CA, no bootstrap kubeconfig, no kubelet.
    let files = sh(
        &mut refused,
        "ls /etc/kubernetes/pki/ca.crt /etc/kubernetes/bootstrap-kubelet.conf /var/lib/kelson/token-join 2>&1; true",
    );
    assert_eq!(files.matches("No such file or directory").count(), 3, "{files}");
    assert!(kubectl.run(&["get", "node", WRONG_HASH_WORKER]).is_err(), "{WRONG_HASH_WORKER} registered");
    refused.kill().unwrap();
}

/// The token's secret half as the join seed holds it, to check it never
/// reaches a console.
fn summary_secret(join: &str) -> String {
    let config: serde_json::Value = serde_saphyr::from_str(join).unwrap();
    let token = config["cluster"]["bootstrapToken"].as_str().unwrap();
    token.split('.').nth(1).unwrap().to_owned()
}

const WEB_POD: &str = r#"{
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {"name": "web", "namespace": "default"},
  "spec": {
    "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}],
    "containers": [{
      "name": "httpd",
      "image": "docker.io/kelson/busybox:test",
      "imagePullPolicy": "Never",
      "command": ["sh", "-c", "mkdir -p /www/cgi-bin && echo hello from $HOSTNAME > /www/index.html && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/peer && chmod 755 /www/cgi-bin/peer && exec httpd -f -p 8080 -h /www"]
    }]
  }
}"#;

#[test]
fn a_control_plane_node_from_its_generated_seed_runs_kubernetes_that_kubectl_reaches() {
    let image = ImagePaths::disk_from_env().expect("the disk image (run `cargo xtask image`)");
    let kubectl_binary = image.dir.join("kubectl");
    assert!(kubectl_binary.exists(), "{} (cargo xtask image links it)", kubectl_binary.display());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cluster");
    let mut spec = kelsonctl::gen::ClusterSpec::with_defaults(CLUSTER, 1, 0);
    // A default route on the node network: a node's own connection to a
    // ClusterIP is routed before kube-proxy's DNAT rewrites it, and without
    // any route the kernel refuses it (no host answers at the gateway).
    spec.gateway = Some("192.168.100.1".parse().unwrap());
    kelsonctl::gen::generate_cluster(&spec, &out, false).unwrap();
    // The worker is added afterwards, as to a running cluster: the
    // control-plane node's seed has no route to it.
    let added = kelsonctl::gen::generate_node(
        &out,
        &kelsonctl::gen::NodeSpec { name: WORKER.to_owned(), role: kelson_config::Role::Worker },
    )
    .unwrap();
    assert_eq!(added.node.address.to_string(), "192.168.100.11");
    let port = free_loopback_port().unwrap();
    let api_port = free_loopback_port().unwrap();
    let node_port_forward = free_loopback_port().unwrap();
    let node_network = free_loopback_port().unwrap();
    let kubectl = Kubectl {
        binary: kubectl_binary,
        kubeconfig: out.join("admin.kubeconfig"),
        server: format!("https://127.0.0.1:{port}"),
    };

    // The control-plane node's uplinks by MAC: the node network, and
    // QEMU's user network for the hostfwds.
    let seed = qemu_tests::seed::edited(&out.join(format!("nodes/{NODE}")), "joined", |config| {
        let network = config["network"].as_object_mut().unwrap();
        assert!(network.get("peerRoutes").is_none(), "a one-node cluster's seed has no peer routes");
        let uplinks = network["uplinks"].as_array_mut().unwrap();
        let node_uplink = uplinks[0].as_object_mut().unwrap();
        node_uplink.remove("name");
        node_uplink.insert("mac".into(), NODE_MAC.into());
        uplinks.push(serde_json::json!({"mac": HOSTFWD_MAC, "addresses": [format!("{HOSTFWD_ADDRESS}/24")]}));
    })
    .unwrap();
    let worker_seed = out.join(format!("nodes/{WORKER}/seed.img"));
    let disk = image.disk_overlay(dir.path(), "8G").unwrap();
    // restrict=on: the guest reaches nothing beyond this network; the
    // hostfwds let the host reach the API server (its certificate names
    // 127.0.0.1) and the management API.
    let netdev = format!(
        "user,id=up,restrict=on,\
         hostfwd=tcp:127.0.0.1:{port}-{HOSTFWD_ADDRESS}:6443,hostfwd=tcp:127.0.0.1:{api_port}-{HOSTFWD_ADDRESS}:50000,\
         hostfwd=tcp:127.0.0.1:{node_port_forward}-{HOSTFWD_ADDRESS}:{NODE_PORT}"
    );
    let mut vm = VmBuilder::firmware()
        .name("cluster")
        .ovmf(dir.path())
        .unwrap()
        .disk_qcow2(&disk)
        .disk(&seed)
        .memory_mib(3072)
        .smp(2)
        .layer(guest_layer_with_agent("/bin/busybox"))
        .socket_nic_listen(node_network, NODE_MAC)
        .qemu_args(["-netdev", &netdev, "-device", &format!("virtio-net-pci,netdev=up,mac={HOSTFWD_MAC}")])
        .reboot_allowed(true)
        .boot()
        .unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    // The worker boots while the control plane starts.
    let worker_dir = dir.path().join("worker");
    std::fs::create_dir_all(&worker_dir).unwrap();
    let worker_disk = image.disk_overlay(&worker_dir, "8G").unwrap();
    let mut worker = VmBuilder::firmware()
        .name("worker")
        .ovmf(&worker_dir)
        .unwrap()
        .disk_qcow2(&worker_disk)
        .disk(&worker_seed)
        .memory_mib(1536)
        .layer(guest_layer_with_agent("/bin/busybox"))
        .socket_nic_connect(node_network, WORKER_MAC)
        .boot()
        .unwrap();
    worker.expect("kelson: ready", BOOT).unwrap();

    // The node registers and turns Ready at the pinned version.
    let ready = r#"{.status.conditions[?(@.type=="Ready")].status} {.status.nodeInfo.kubeletVersion}"#;
    let node =
        kubectl.until(&vm, "node Ready", &["get", "node", NODE, "-o", &format!("jsonpath={ready}")], CLUSTER_UP, |o| {
            o.starts_with("True ")
        });
    assert_eq!(node, "True v1.36.3");
    let nodes = kubectl.run(&["get", "nodes"]).unwrap();
    println!("{nodes}");
    // Some post-start hooks may still be finishing when the node is Ready.
    kubectl.until(&vm, "/readyz ok", &["get", "--raw", "/readyz"], CLUSTER_UP, |o| o == "ok");
    for component in ["kube-controller-manager", "kube-scheduler"] {
        let holder = kubectl.until(
            &vm,
            &format!("{component}'s lease"),
            &["-n", "kube-system", "get", "lease", component, "-o", "jsonpath={.spec.holderIdentity}"],
            CLUSTER_UP,
            |o| !o.is_empty(),
        );
        assert!(holder.starts_with(NODE), "{component} lease held by {holder}");
    }

    // Kelson's condition names each static pod PID 1 runs.
    let condition = r#"{.status.conditions[?(@.type=="KelsonStaticPodsHealthy")].status}"#;
    kubectl.until(
        &vm,
        "KelsonStaticPodsHealthy True",
        &["get", "node", NODE, "-o", &format!("jsonpath={condition}")],
        CLUSTER_UP,
        |o| o == "True",
    );
    let described = kubectl.run(&["describe", "node", NODE]).unwrap();
    println!("{described}");
    let line = described.lines().find(|l| l.trim_start().starts_with("KelsonStaticPodsHealthy")).unwrap();
    assert!(line.contains("True"), "{line}");
    for pod in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        assert!(line.contains(&format!("{pod}-{NODE} running ready (restarts ")), "{pod}: {line}");
    }
    // Under emulation, on a busy machine, a component may exit (the
    // controller-manager or scheduler on a missed lease renewal, the API
    // server on a slow etcd) and PID 1 restarts it: say so, with its logs'
    // last words.
    for pod in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        if !line.contains(&format!("{pod}-{NODE} running ready (restarts 0)")) {
            let logs = format!("/var/log/kelson/pods/kube-system_{pod}-{NODE}_*/{pod}");
            let last = vm.agent_exec(&format!("ls -l {logs}; tail -n 3 {logs}/*.log"), AGENT).unwrap().output;
            println!("{pod} restarted; its logs end with:\n{last}");
        }
    }

    // The same node through its management API: the static pods, a
    // container's log, and etcd (its members, and a snapshot streamed to
    // the host) through kelson-etcd.
    let ctl = Kelsonctl::beside_tests(&out.join("kelsonconfig"), NODE, api_port).unwrap();
    let pods = ctl.json(&["pods"]).unwrap();
    let names: Vec<&str> = pods.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for pod in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        assert!(names.contains(&format!("{pod}-{NODE}").as_str()), "{pod} missing from {names:?}");
    }
    // Asked after the kubelet has run for minutes: it deletes the log
    // directories of pods it does not know from /var/log/pods, which is why
    // PID 1's static pods log under /var/log/kelson/pods.
    let container = format!("kube-system/kube-apiserver-{NODE}/kube-apiserver");
    let log = ctl.run(&["logs", "--tail", "5", &container]).unwrap();
    assert!(!log.trim().is_empty(), "kube-apiserver's log through the API is empty");
    println!("kube-apiserver's log through the API ends with:\n{log}");
    let members = ctl.json(&["etcd", "members"]).unwrap();
    assert_eq!(members.as_array().map(Vec::len), Some(1), "{members}");
    assert_eq!(members[0]["name"], NODE, "{members}");
    let snapshot = dir.path().join("etcd.db");
    ctl.run(&["etcd", "snapshot", snapshot.to_str().unwrap()]).unwrap();
    let db = std::fs::read(&snapshot).unwrap();
    // bbolt's first meta page: a 16-byte page header, then its magic.
    assert_eq!(db.get(16..20), Some(&0xED0C_DAEDu32.to_le_bytes()[..]), "not a bbolt file ({} bytes)", db.len());

    // A Pod from the node's own store, started by the real kubelet through
    // containerd and the CNI bridge.
    sh(
        &mut vm,
        "tar -C /usr/lib/kelson/images/busybox -c oci-layout index.json blobs \
         | ctr -n k8s.io images import --snapshotter overlayfs - >/dev/null",
    );
    // The controller-manager makes each namespace's default ServiceAccount
    // shortly after it starts; until then the API server refuses Pods.
    kubectl.until(
        &vm,
        "the default ServiceAccount",
        &["get", "serviceaccount", "default", "-o", "name"],
        CLUSTER_UP,
        |o| o.trim() == "serviceaccount/default",
    );
    let pod_file = dir.path().join("web.json");
    std::fs::write(&pod_file, WEB_POD).unwrap();
    kubectl.run(&["apply", "-f", pod_file.to_str().unwrap()]).unwrap();
    let running = kubectl.until(
        &vm,
        "Pod web running",
        &["get", "pod", "web", "-o", "jsonpath={.status.phase} {.status.podIP} {.spec.nodeName}"],
        CLUSTER_UP,
        |o| o.starts_with("Running "),
    );
    let fields: Vec<&str> = running.split(' ').collect();
    let pod_ip = fields[1];
    assert_eq!(fields[2], NODE);
    // The node's pod CIDR: kelsonctl gives the first node 10.244.0.0/24.
    assert!(pod_ip.starts_with("10.244.0."), "pod IP {pod_ip} outside the node's pod CIDR");
    assert_eq!(sh(&mut vm, &format!("wget -q -O - http://{pod_ip}:8080/")), "hello from web");

    the_worker_joins_and_routes_follow_its_node(&kubectl, &mut vm, &mut worker, pod_ip, dir.path(), node_port_forward);
    // The worker's CPU is freed for the next one, on the same node network.
    worker.kill().unwrap();

    workers_join_by_bootstrap_token(&kubectl, &mut vm, &image, dir.path(), &out, node_network);

    // kill -9 of the API server: PID 1 restarts it and kubectl works again.
    let message = r#"{.status.conditions[?(@.type=="KelsonStaticPodsHealthy")].message}"#;
    let before = kubectl.run(&["get", "node", NODE, "-o", &format!("jsonpath={message}")]).unwrap();
    let restarts = apiserver_restarts(&before).unwrap_or_else(|| panic!("no kube-apiserver in {before}"));
    sh(&mut vm, "kill -9 $(pidof kube-apiserver)");
    kubectl.until(&vm, "/readyz ok after the kill", &["get", "--raw", "/readyz"], CLUSTER_UP, |o| o == "ok");
    let events = kubectl.until(
        &vm,
        "a Restarted event",
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &format!("involvedObject.kind=Node,involvedObject.name={NODE}"),
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ],
        CLUSTER_UP,
        |o| o.lines().any(|l| l.starts_with("Restarted") && l.contains("kube-apiserver")),
    );
    println!("{events}");
    kubectl.until(
        &vm,
        "the restart in the condition",
        &["get", "node", NODE, "-o", &format!("jsonpath={message}")],
        CLUSTER_UP,
        |o| o.contains(&format!("kube-apiserver-{NODE} running ready")) && apiserver_restarts(o) == Some(restarts + 1),
    );

    // A reboot keeps the cluster: etcd's data is on /var.
    let uid = kubectl.run(&["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"]).unwrap();
    vm.send_ctrl_alt_delete().unwrap();
    vm.reset_agent();
    vm.expect("kelson: ready", BOOT).unwrap();
    kubectl.until(
        &vm,
        "node Ready after the reboot",
        &["get", "node", NODE, "-o", &format!("jsonpath={ready}")],
        CLUSTER_UP,
        |o| o.starts_with("True "),
    );
    let after = kubectl.run(&["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"]).unwrap();
    assert_eq!(after, uid, "the same Pod object after the reboot");
    kubectl.until(
        &vm,
        "Pod web running after the reboot",
        &["get", "pod", "web", "-o", "jsonpath={.status.phase}"],
        CLUSTER_UP,
        |o| o == "Running",
    );
}
