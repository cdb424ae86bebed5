//! Static pods under QEMU: manifests in /etc/kubernetes/manifests run by PID 1
//! through the container shim (libcontainer), images from the node image's
//! OCI store. etcd is Debian's etcd-server, packed as an image by the image
//! build; the other pods use the store's busybox image.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use qemu_tests::{free_loopback_port, guest_layer_with_agent, ImagePaths, Vm, VmBuilder};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);
const SHORT: Duration = Duration::from_secs(90);
const NODE: &str = "t-cp-1";
/// The pods' restart back-off, shortened for the tests (the kubelet's 10 s
/// doubling otherwise).
const BACKOFF_KNOB: &str = "kelson.test.pod_backoff_ms=500";

fn sh(vm: &mut Vm, cmd: &str) -> String {
    let out = vm.agent_exec(cmd, SHORT).unwrap_or_else(|e| panic!("agent: {cmd}: {e:#}"));
    assert_eq!(out.status, 0, "{cmd} failed: {}", out.output);
    out.output.trim().to_owned()
}

/// A FAT seed whose user-data is `config`.
fn seed(dir: &Path, config: &str) -> PathBuf {
    qemu_tests::seed::fat_seed(
        dir,
        &[
            (
                "meta-data",
                "instance-id: pods-1
",
            ),
            ("user-data", config),
        ],
    )
    .unwrap()
}

/// A one-node cluster from `kelsonctl gen`, its address moved onto QEMU's
/// user network (10.0.2.15) so the host can reach the node through a
/// `hostfwd`, with the generated control-plane manifests named in `keep`
/// (`etcd.yaml`) and `manifests` (file name, text) as its static pods.
fn cluster_config(dir: &Path, keep: &[&str], manifests: &[(&str, &str)]) -> String {
    let spec = kelsonctl::gen::ClusterSpec::with_defaults("t", 1, 0);
    kelsonctl::gen::generate_cluster(&spec, &dir.join("cluster"), false).unwrap();
    let generated = std::fs::read_to_string(dir.join(format!("cluster/nodes/{NODE}/machine-config.yaml"))).unwrap();
    assert!(generated.contains("- 192.168.100.10/24"), "{generated}");
    // The address is in the uplink, the endpoints and the manifests' flags
    // and probes; certificates are base64 and cannot hold it as text.
    let moved = generated.replace("192.168.100.10", "10.0.2.15");
    let mut config = kelson_config::parse("generated machine config", &moved).unwrap_or_else(|e| panic!("{e}"));
    config.static_pods.retain(|pod| keep.contains(&pod.name.as_str()));
    assert_eq!(config.static_pods.len(), keep.len(), "kelsonctl gen made no {keep:?}");
    for (name, manifest) in manifests {
        config
            .static_pods
            .push(kelson_config::StaticPod { name: (*name).to_owned(), manifest: (*manifest).to_owned() });
    }
    config.to_yaml_with_secrets()
}

/// The node, with QEMU's user network as eth0: `restrict=on` keeps the
/// guest off any real network, and the one `hostfwd` lets the host's
/// etcd client reach port 2379.
fn node(dir: &Path, config: &str, etcd_port: u16) -> VmBuilder {
    let image = ImagePaths::from_env().expect("the node image (run `cargo xtask image`)");
    let netdev = format!("user,id=up,restrict=on,hostfwd=tcp:127.0.0.1:{etcd_port}-10.0.2.15:2379");
    VmBuilder::from_image(&image)
        .layer(guest_layer_with_agent("/bin/busybox"))
        .memory_mib(1024)
        .disk(seed(dir, config))
        .append("kelson.shutdown_grace=5")
        .append(BACKOFF_KNOB)
        .qemu_args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=up"])
}

/// The pod's status file, as PID 1 writes it for the API.
fn status(vm: &mut Vm, file: &str) -> Value {
    let text = sh(vm, &format!("cat /run/kelson/pods/{file}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}: {text}"))
}

/// Polls the status file until `check` holds (bounded).
fn wait_status(vm: &mut Vm, file: &str, limit: Duration, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let out = vm.agent_exec(&format!("cat /run/kelson/pods/{file} 2>/dev/null"), SHORT).unwrap();
        if let Ok(value) = serde_json::from_str::<Value>(out.output.trim()) {
            if start.elapsed() >= limit {
                eprintln!("console:\n{}", vm.console_text().unwrap_or_default());
            }
            if check(&value) {
                return value;
            }
            assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}; status: {value:#}");
        } else {
            if start.elapsed() >= limit {
                eprintln!("console:\n{}", vm.console_text().unwrap_or_default());
            }
            assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}; no status file {file}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// An etcd client on the host, through the hostfwd, with the etcd CA and
/// the API server's etcd client certificate `kelsonctl gen` made.
async fn etcd_client(dir: &Path, port: u16) -> Result<etcd_client::Client, etcd_client::Error> {
    use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
    let pki = dir.join("cluster/pki");
    let read = |name: &str| std::fs::read(pki.join(name)).unwrap();
    let tls = TlsOptions::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(read("etcd/ca.crt")))
        .identity(Identity::from_pem(read("apiserver-etcd-client.crt"), read("apiserver-etcd-client.key")));
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(20));
    etcd_client::Client::connect([format!("https://127.0.0.1:{port}")], Some(options)).await
}

/// A write and a read through the client, and the member's version from
/// its status.
async fn etcd_answers(dir: &Path, port: u16, key: &str) -> Result<String, etcd_client::Error> {
    let mut client = etcd_client(dir, port).await?;
    client.put(key, "kelson", None).await?;
    let got = client.get(key, None).await?;
    let value = got.kvs().first().map(|kv| kv.value_str().unwrap().to_owned()).unwrap_or_default();
    assert_eq!(value, "kelson");
    Ok(client.status().await?.version().to_owned())
}

/// Retries `etcd_answers` until etcd is up (bounded).
fn etcd_healthy(runtime: &tokio::runtime::Runtime, dir: &Path, port: u16, key: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let attempt = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), etcd_answers(dir, port, key)).await });
        match attempt {
            Ok(Ok(version)) => return version,
            Ok(Err(e)) if start.elapsed() >= limit => panic!("etcd did not answer within {limit:?}: {e}"),
            Err(_) if start.elapsed() >= limit => panic!("etcd did not answer within {limit:?}"),
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Two containers of a host-network pod, each printing its IPC and network
/// namespaces.
const PAIR: &str = "apiVersion: v1
kind: Pod
metadata:
  name: pair
  namespace: default
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers:
  - name: a
    image: busybox
    command: [sh, -c, 'echo ipc=$(readlink /proc/self/ns/ipc) net=$(readlink /proc/self/ns/net); exec sleep 3600']
  - name: b
    image: busybox
    command: [sh, -c, 'echo ipc=$(readlink /proc/self/ns/ipc) net=$(readlink /proc/self/ns/net); exec sleep 3600']
";

/// `ipc=… net=…` as a container of `pod` printed it in run `run`'s log.
fn namespaces_logged(vm: &mut Vm, pod_dir: &str, container: &str, run: u32) -> (String, String) {
    let start = Instant::now();
    loop {
        let log = sh(vm, &format!("cat /var/log/kelson/pods/{pod_dir}/{container}/{run}.log 2>/dev/null || true"));
        if let Some(line) = log.lines().find(|l| l.contains(" stdout F ipc=")) {
            let field =
                |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)).unwrap_or_default().to_owned();
            return (field("ipc="), field("net="));
        }
        assert!(start.elapsed() < SHORT, "no namespaces in {container}'s log {run}: {log}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The container shim's pid: PID 1 re-executed as `/proc/self/exe shim …`.
const SHIM_PID: &str = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^/proc/self/exe shim ' && echo ${p#/proc/}; done; true";

#[test]
fn an_etcd_static_pod_from_a_kubeadm_manifest_answers_and_comes_back_after_kill_9_and_after_its_shim_dies() {
    let dir = tempfile::tempdir().unwrap();
    // etcd's manifest is the one `kelsonctl gen` writes, as kubeadm would.
    let config = cluster_config(dir.path(), &["etcd.yaml"], &[("pair.yaml", PAIR)]);
    let port = free_loopback_port().unwrap();
    let mut vm = node(dir.path(), &config, port).boot().unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    let file = format!("kube-system_etcd-{NODE}.json");
    let running =
        wait_status(&mut vm, &file, BOOT, "etcd running", |s| s["containers"][0]["state"]["running"].is_object());
    assert_eq!(running["phase"], "Running", "{running:#}");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let version = etcd_healthy(&runtime, dir.path(), port, "/kelson/first", BOOT);
    assert!(version.starts_with("3.5."), "etcd {version}");
    // The hostPath data dir is the node's /var/lib/etcd.
    assert!(sh(&mut vm, "ls /var/lib/etcd").contains("member"));
    // kubeadm's seccompProfile RuntimeDefault: Kelson's filter is loaded.
    let seccomp = sh(&mut vm, "grep '^Seccomp:' /proc/$(pidof etcd)/status");
    assert_eq!(seccomp.split_whitespace().collect::<Vec<_>>(), ["Seccomp:", "2"], "{seccomp}");
    // Open files: as many as the kernel allows, not the default 1024.
    let limits = sh(&mut vm, "grep 'Max open files' /proc/$(pidof etcd)/limits");
    let nr_open = sh(&mut vm, "cat /proc/sys/fs/nr_open");
    assert_eq!(limits.split_whitespace().nth(3), Some(nr_open.as_str()), "{limits}");

    // kill -9 of etcd's process: the shim sees the exit, the pod manager
    // restarts it after the back-off, and the status counts one restart.
    sh(&mut vm, "kill -9 $(pidof etcd)");
    let restarted = wait_status(&mut vm, &file, SHORT, "etcd restarted", |s| {
        s["containers"][0]["restartCount"] == 1 && s["containers"][0]["state"]["running"].is_object()
    });
    let last = &restarted["containers"][0]["lastState"]["terminated"];
    assert!(last["signal"] == 9 || last["exitCode"] == 137, "{restarted:#}");
    etcd_healthy(&runtime, dir.path(), port, "/kelson/second", SHORT);
    // The data written before the kill survived it.
    let kept = runtime.block_on(async {
        let mut client = etcd_client(dir.path(), port).await.unwrap();
        client.get("/kelson/first", None).await.unwrap().kvs().len()
    });
    assert_eq!(kept, 1);

    // A host-network pod without hostIPC: the host's network namespace,
    // and one IPC namespace of its own that both containers share.
    let pair_file = format!("default_pair-{NODE}.json");
    let all_running = |s: &Value| {
        s["containers"].as_array().is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["state"]["running"].is_object()))
    };
    let pair = wait_status(&mut vm, &pair_file, SHORT, "both pair containers running", all_running);
    let pair_uid = pair["uid"].as_str().unwrap().to_owned();
    let pair_dir = format!("default_pair-{NODE}_{pair_uid}");
    let (host_ipc, host_net) = (sh(&mut vm, "readlink /proc/1/ns/ipc"), sh(&mut vm, "readlink /proc/1/ns/net"));
    let (a_ipc, a_net) = namespaces_logged(&mut vm, &pair_dir, "a", 0);
    let (b_ipc, b_net) = namespaces_logged(&mut vm, &pair_dir, "b", 0);
    assert!(a_ipc.starts_with("ipc:["), "{a_ipc}");
    assert_eq!(a_ipc, b_ipc, "the pod's containers share one IPC namespace");
    assert_ne!(a_ipc, host_ipc, "not the host's IPC namespace");
    assert_eq!((a_net.as_str(), b_net.as_str()), (host_net.as_str(), host_net.as_str()), "host network");
    assert!(sh(&mut vm, "ls /run/kelson/pods/netns").contains(&format!("{pair_uid}-ipc")));

    // The container shim dies: PID 1 starts a new one, which kills what the
    // old one ran, and every container starts again with a restart counted.
    let old_shim = sh(&mut vm, SHIM_PID);
    assert!(!old_shim.is_empty() && !old_shim.contains('\n'), "one shim: {old_shim:?}");
    sh(&mut vm, &format!("kill -9 {old_shim}"));
    let etcd_back = wait_status(&mut vm, &file, SHORT, "etcd restarted under a new shim", |s| {
        s["containers"][0]["restartCount"] == 2 && s["containers"][0]["state"]["running"].is_object()
    });
    let lost = &etcd_back["containers"][0]["lastState"]["terminated"];
    assert!(lost["message"].as_str().unwrap_or_default().contains("shim was lost"), "{etcd_back:#}");
    let new_shim = sh(&mut vm, SHIM_PID);
    assert!(!new_shim.is_empty() && new_shim != old_shim, "a new shim: {new_shim:?} (old {old_shim})");
    etcd_healthy(&runtime, dir.path(), port, "/kelson/third", SHORT);
    assert_eq!(sh(&mut vm, "pidof etcd | wc -w"), "1", "the old etcd is gone");
    wait_status(&mut vm, &pair_file, SHORT, "pair restarted under the new shim", |s| {
        all_running(s) && s["containers"].as_array().unwrap().iter().all(|c| c["restartCount"] == 1)
    });
    assert_eq!(sh(&mut vm, "pidof sleep | wc -w"), "2", "the pair's old sleeps are gone");
    let (a_ipc_again, _) = namespaces_logged(&mut vm, &pair_dir, "a", 1);
    assert_eq!(a_ipc_again, a_ipc, "restarted containers rejoin their pod's IPC namespace");
    assert!(vm.console_text().unwrap().contains("a new container runtime is up"));

    // Removing the pod releases its IPC namespace file.
    sh(&mut vm, "rm /etc/kubernetes/manifests/pair.yaml");
    let gone = Instant::now();
    while sh(&mut vm, "ls /run/kelson/pods/").contains("default_pair-") {
        assert!(gone.elapsed() < SHORT, "pair's status file is still there");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!sh(&mut vm, "ls /run/kelson/pods/netns").contains(&pair_uid), "the IPC namespace file is left");

    vm.system_powerdown().unwrap();
    assert!(vm.wait_exit(SHORT).unwrap().success());
}

const WEB: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: httpd
    image: busybox
    command: [sh, -c, 'echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www']
    ports:
    - containerPort: 8080
    readinessProbe:
      tcpSocket:
        port: 8080
      periodSeconds: 1
    # Passes only where the container's files are: an exec probe runs in
    # its mount namespace and root.
    livenessProbe:
      exec:
        command: [test, -f, /www/index.html]
      periodSeconds: 2
      failureThreshold: 2
    volumeMounts:
    - name: www
      mountPath: /www
  volumes:
  - name: www
    emptyDir: {}
";

/// Fills a memory-backed emptyDir past its container's memory limit: the
/// kernel's OOM killer ends it, and it is restarted.
const HOG: &str = "apiVersion: v1
kind: Pod
metadata:
  name: hog
  namespace: default
spec:
  restartPolicy: Always
  containers:
  - name: fill
    image: busybox
    command: [dd, if=/dev/zero, of=/cache/fill, bs=1M, count=256]
    resources:
      limits:
        memory: 32Mi
    volumeMounts:
    - name: cache
      mountPath: /cache
  volumes:
  - name: cache
    emptyDir:
      medium: Memory
";

/// Healthy for a few seconds, then its exec liveness probe fails: it is
/// restarted.
const SICK: &str = "apiVersion: v1
kind: Pod
metadata:
  name: sick
  namespace: default
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'touch /tmp/healthy; sleep 4; rm /tmp/healthy; exec sleep 3600']
    livenessProbe:
      exec:
        command: [cat, /tmp/healthy]
      periodSeconds: 1
      failureThreshold: 2
";

const GHOST: &str = "apiVersion: v1
kind: Pod
metadata:
  name: ghost
  namespace: default
spec:
  containers:
  - name: nothing
    image: registry.example.com/not-in-the-store:1.0
";

fn client_manifest(web_ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: default
spec:
  restartPolicy: Never
  containers:
  - name: fetch
    image: busybox
    command: [wget, -q, -O, '-', 'http://{web_ip}:8080/']
"
    )
}

/// A pod that reports its seccomp mode and whether it may make a user
/// namespace (containerd's default profile refuses unshare(CLONE_NEWUSER)
/// without CAP_SYS_ADMIN), under the given seccompProfile type.
fn seccomp_probe_manifest(name: &str, profile: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
spec:
  restartPolicy: Never
  securityContext:
    seccompProfile:
      type: {profile}
  containers:
  - name: probe
    image: busybox
    command: [sh, -c, \"grep '^Seccomp:' /proc/self/status; unshare -U true && echo userns-allowed || echo userns-refused\"]
"
    )
}

#[test]
fn busybox_pods_get_pod_ips_serve_each_other_are_probed_oom_killed_and_stop_cleanly_while_bad_manifests_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(
        dir.path(),
        &[],
        &[("web.yaml", WEB), ("hog.yaml", HOG), ("sick.yaml", SICK), ("ghost.yaml", GHOST)],
    );
    let mut vm = node(dir.path(), &config, free_loopback_port().unwrap()).boot().unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();

    // A pod on cbr0 with an address from the node's pod CIDR.
    let web = wait_status(&mut vm, "default_web-t-cp-1.json", BOOT, "web ready", |s| s["ready"] == true);
    let web_ip = web["podIP"].as_str().unwrap_or_else(|| panic!("no podIP: {web:#}")).to_owned();
    assert!(web_ip.starts_with("10.244.0."), "{web_ip}");
    let uid = web["uid"].as_str().unwrap().to_owned();

    // Another pod fetches from it by pod IP; its output is in its CRI log.
    sh(&mut vm, &format!("cat > /etc/kubernetes/manifests/client.yaml <<'EOF'\n{}EOF", client_manifest(&web_ip)));
    let client =
        wait_status(&mut vm, "default_client-t-cp-1.json", SHORT, "client done", |s| s["phase"] == "Succeeded");
    assert_eq!(client["containers"][0]["state"]["terminated"]["exitCode"], 0, "{client:#}");
    let client_uid = client["uid"].as_str().unwrap();
    let log = sh(&mut vm, &format!("cat /var/log/kelson/pods/default_client-t-cp-1_{client_uid}/fetch/0.log"));
    assert!(log.lines().any(|l| l.contains(" stdout F hello-from-web")), "{log}");

    // RuntimeDefault has containerd's default-profile semantics: a pod asking
    // for it cannot make a user namespace; the same pod Unconfined can.
    for (name, profile) in [("confined", "RuntimeDefault"), ("unconfined", "Unconfined")] {
        sh(
            &mut vm,
            &format!(
                "cat > /etc/kubernetes/manifests/{name}.yaml <<'EOF'\n{}EOF",
                seccomp_probe_manifest(name, profile)
            ),
        );
    }
    let mut seen = Vec::new();
    for name in ["confined", "unconfined"] {
        let file = format!("default_{name}-t-cp-1.json");
        let pod = wait_status(&mut vm, &file, SHORT, &format!("{name} done"), |s| s["phase"] == "Succeeded");
        let pod_uid = pod["uid"].as_str().unwrap();
        let log = sh(&mut vm, &format!("cat /var/log/kelson/pods/default_{name}-t-cp-1_{pod_uid}/probe/0.log"));
        let words: Vec<&str> =
            log.lines().filter_map(|l| l.split(" stdout F ").nth(1)).flat_map(str::split_whitespace).collect();
        seen.push(words.join(" "));
    }
    assert_eq!(seen, ["Seccomp: 2 userns-refused", "Seccomp: 0 userns-allowed"], "RuntimeDefault against Unconfined");

    // Over its memory limit: OOM-killed, said so, restarted.
    let hog = wait_status(&mut vm, "default_hog-t-cp-1.json", SHORT, "hog OOM-killed and restarted", |s| {
        s["containers"][0]["restartCount"].as_u64().unwrap_or(0) >= 1
    });
    let last = &hog["containers"][0]["lastState"]["terminated"];
    assert_eq!(last["reason"], "OOMKilled", "{hog:#}");

    // A failing exec liveness probe restarts its container.
    let sick = wait_status(&mut vm, "default_sick-t-cp-1.json", SHORT, "sick restarted", |s| {
        s["containers"][0]["restartCount"].as_u64().unwrap_or(0) >= 1
    });
    assert!(sick["containers"][0]["lastState"]["terminated"].is_object(), "{sick:#}");
    assert!(vm.console_text().unwrap().contains("container default/sick-t-cp-1/main: Liveness probe failed"));

    // An unknown image is a clear status; a broken file is reported with
    // its name; neither disturbs the running pods.
    let ghost = wait_status(&mut vm, "default_ghost-t-cp-1.json", SHORT, "ghost waiting", |s| {
        s["containers"][0]["state"]["waiting"].is_object()
    });
    assert_eq!(ghost["containers"][0]["state"]["waiting"]["reason"], "ErrImageNeverPull", "{ghost:#}");
    sh(&mut vm, "printf 'apiVersion: v1\\nkind: Pod\\nmetadata: [unclosed\\n' > /etc/kubernetes/manifests/broken.yaml");
    vm.expect("/etc/kubernetes/manifests/broken.yaml", SHORT).unwrap();
    let web_again = status(&mut vm, "default_web-t-cp-1.json");
    assert_eq!(
        (web_again["ready"].clone(), web_again["containers"][0]["restartCount"].clone()),
        (Value::Bool(true), Value::from(0)),
        "{web_again:#}"
    );

    // Removing the manifest stops the pod within its grace period and
    // leaves nothing of it behind.
    let veths = || "ip -o link | grep -c 'master cbr0' || true";
    let veths_before: u32 = sh(&mut vm, veths()).parse().unwrap();
    let started = Instant::now();
    sh(&mut vm, "rm /etc/kubernetes/manifests/web.yaml");
    let gone = Instant::now();
    while sh(&mut vm, "ls /run/kelson/pods/").contains("default_web-") {
        assert!(gone.elapsed() < Duration::from_secs(40), "web's status file is still there");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(started.elapsed() < Duration::from_secs(25), "stopping took {:?}", started.elapsed());
    assert_eq!(
        sh(&mut vm, &format!("grep -c {uid} /proc/mounts || true")),
        "0",
        "mounts left: {}",
        sh(&mut vm, "cat /proc/mounts")
    );
    assert_eq!(sh(&mut vm, &format!("find /sys/fs/cgroup -name '*{uid}*' | wc -l")), "0");
    let veths_after: u32 = sh(&mut vm, veths()).parse().unwrap();
    assert_eq!(veths_after + 1, veths_before, "web's veth is left: {}", sh(&mut vm, "ip -o link"));
    assert!(!sh(&mut vm, "cat /var/lib/kelson/net/pods.json 2>/dev/null || true").contains(&web_ip));
    sh(&mut vm, "pidof httpd && exit 1 || true");

    vm.system_powerdown().unwrap();
    assert!(vm.wait_exit(SHORT).unwrap().success());
}
