//! The node's supervised services under QEMU: Debian's containerd and the
//! real kubelet and kube-proxy from the image (with no API server: the
//! kubelet runs standalone, kube-proxy fails at each start for want of a
//! kubeconfig, a real crash loop). One test puts the kubelet **test double**
//! (`test-doubles/`) in the kubelet's slot through the machine config, to
//! inject what the real kubelet cannot be made to do: ignore SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use qemu_tests::{guest_layer_with_agent, ImagePaths, Layer, Vm, VmBuilder};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const SHORT: Duration = Duration::from_secs(90);
const IMAGE_NAME: &str = "docker.io/kelson/busybox:test";
/// containerd's sandbox_image, which the node imports at boot.
const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.9";

/// A FAT seed whose user-data is `config`.
fn seed(dir: &Path, config: &str) -> PathBuf {
    qemu_tests::seed::fat_seed(
        dir,
        &[
            (
                "meta-data",
                "instance-id: services-1
",
            ),
            ("user-data", config),
        ],
    )
    .unwrap()
}

/// The node's config: the image's own kubelet and kube-proxy.
const CONFIG: &str = "apiVersion: kelson.dev/v1alpha1
kind: MachineConfig
node:
  hostname: svc-node
network:
  podCIDR: 10.244.3.0/24
  clusterCIDR: 10.244.0.0/16
";

/// The config with the kubelet TEST DOUBLE in the kubelet's slot, given
/// `kubelet_args` (a failure to inject).
fn config_with_kubelet_double(kubelet_args: &str) -> String {
    format!(
        "{CONFIG}kubelet:
  binary: /kelson-test/kubelet-double
  extraArgs: [--double-record-dir=/run/doubles, {kubelet_args}]
"
    )
}

fn node(dir: &Path, config: &str) -> VmBuilder {
    let image = ImagePaths::from_env().expect("the node image (run `cargo xtask image`)");
    let archive = qemu_tests::oci::busybox_archive(Path::new("/bin/busybox"), IMAGE_NAME).unwrap();
    let doubles = Layer::new()
        .file_from_host("/kelson-test/kubelet-double", env!("CARGO_BIN_EXE_guest-kubelet-double"), 0o755)
        .file("/kelson-test/busybox-oci.tar", archive, 0o644);
    VmBuilder::from_image(&image)
        .layer(guest_layer_with_agent("/bin/busybox"))
        .layer(doubles)
        .disk(seed(dir, config))
        .append("kelson.shutdown_grace=5")
}

fn sh(vm: &mut Vm, cmd: &str) -> String {
    let out = vm.agent_exec(cmd, SHORT).unwrap_or_else(|e| panic!("agent: {cmd}: {e:#}"));
    assert_eq!(out.status, 0, "{cmd} failed: {}", out.output);
    out.output.trim().to_owned()
}

/// Waits until the service's state file says `state`.
fn wait_state(vm: &mut Vm, service: &str, state: &str) -> String {
    sh(
        vm,
        &format!(
            "f=/run/kelson/services/{service}.json; for i in $(seq 120); do grep -q '\"state\": \"{state}\"' $f 2>/dev/null && break; sleep 0.5; done; \
             grep -q '\"state\": \"{state}\"' $f || {{ cat $f; exit 1; }}; cat $f"
        ),
    )
}

fn console_position(vm: &Vm, needle: &str) -> usize {
    let text = vm.console_text().unwrap();
    text.find(needle).unwrap_or_else(|| panic!("{needle:?} not on the console"))
}

#[test]
fn containerd_runs_a_cni_container_and_the_kubelet_starts_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = node(dir.path(), CONFIG).boot().unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    wait_state(&mut vm, "containerd", "healthy");
    let import = wait_state(&mut vm, "sandbox-image", "completed");
    wait_state(&mut vm, "kubelet", "healthy");
    // containerd healthy → the pause image imported → the kubelet starts;
    // kube-proxy after the kubelet.
    let containerd_healthy = console_position(&vm, "service=containerd from=running to=healthy");
    let import_starting = console_position(&vm, "service=sandbox-image from=waiting to=starting");
    let import_done = console_position(&vm, "service=sandbox-image from=healthy to=completed");
    let kubelet_starting = console_position(&vm, "service=kubelet from=waiting to=starting");
    assert!(containerd_healthy < import_starting, "the import started before containerd was healthy");
    assert!(import_done < kubelet_starting, "the kubelet started before the pause image was imported");
    let took =
        import.lines().find_map(|l| l.split(" exited with code 0 after ").nth(1)).unwrap_or_else(|| panic!("{import}"));
    eprintln!("sandbox-image: the import {}", took.split(';').next().unwrap_or(took));
    assert!(import.contains("\"restarts\": 0"), "the import needed retries: {import}");

    // The pause image is in containerd's CRI namespace under the name the
    // CRI config gives, unpacked for overlayfs, and pinned.
    let images = sh(&mut vm, "ctr -n k8s.io images ls -q");
    assert!(images.lines().any(|l| l == SANDBOX_IMAGE), "{images}");
    let check = sh(&mut vm, &format!("ctr -n k8s.io images check name=={SANDBOX_IMAGE}"));
    assert!(
        check.lines().any(|l| l.starts_with(SANDBOX_IMAGE) && l.contains("complete") && l.trim_end().ends_with("true")),
        "not unpacked: {check}"
    );
    let listed = sh(&mut vm, "ctr -n k8s.io images ls");
    assert!(
        listed.lines().any(|l| l.starts_with(SANDBOX_IMAGE) && l.contains("io.cri-containerd.pinned=pinned")),
        "not pinned: {listed}"
    );
    // A container runs from it, and pause exits 0 on SIGTERM (`task
    // kill`'s default). `ctr run` in the foreground exits with the
    // task's status (`task rm` would only warn about a non-zero one).
    let run = sh(
        &mut vm,
        &format!(
            "ctr -n k8s.io run --rm --no-pivot {SANDBOX_IMAGE} p1 </dev/null >/tmp/p1.out 2>&1 & run=$!
for i in $(seq 60); do ctr -n k8s.io task ls | grep -q '^p1 .*RUNNING' && break; sleep 0.5; done
ctr -n k8s.io task ls | grep '^p1 ' || {{ cat /tmp/p1.out; exit 1; }}
ctr -n k8s.io task kill p1
wait $run; echo \"p1 exited $?\"; cat /tmp/p1.out"
        ),
    );
    assert!(run.lines().any(|l| l.starts_with("p1 ") && l.trim_end().ends_with("RUNNING")), "p1 never ran: {run}");
    assert!(run.contains("p1 exited 0"), "{run}");
    assert!(
        console_position(&vm, "service=kubelet from=running to=healthy")
            < console_position(&vm, "service=kube-proxy from=waiting to=starting")
    );
    // Each service runs in its own cgroup under Kelson's system cgroup,
    // with the OOM score it was given (kube-proxy, crash-looping here, is
    // not looked at).
    for service in ["containerd", "kubelet"] {
        let status = sh(&mut vm, &format!("cat /run/kelson/services/{service}.json"));
        let pid =
            status.lines().find_map(|l| l.trim().strip_prefix("\"pid\": ")).unwrap().trim_end_matches(',').to_owned();
        let procs = sh(&mut vm, &format!("cat /sys/fs/cgroup/kelson.slice/system/{service}/cgroup.procs"));
        assert!(procs.lines().any(|p| p == pid), "{service} (pid {pid}) is not in its cgroup: {procs}");
        assert_eq!(sh(&mut vm, &format!("cat /proc/{pid}/oom_score_adj")), "-999", "{service}");
    }
    // The kubelet runs with the rendered config and flags.
    let argv = sh(&mut vm, "tr '\\0' '\\n' < /proc/$(pidof kubelet)/cmdline");
    assert!(argv.lines().any(|l| l == "--config=/etc/kubernetes/kubelet/config.yaml"), "{argv}");
    assert!(argv.lines().any(|l| l == "--hostname-override=svc-node"), "{argv}");
    let kubelet_config = sh(&mut vm, "cat /etc/kubernetes/kubelet/config.yaml");
    assert!(kubelet_config.contains("cgroupDriver: cgroupfs"), "{kubelet_config}");
    assert!(kubelet_config.contains("podCIDR: 10.244.3.0/24"), "{kubelet_config}");

    // The path the kubelet's pods take: an image imported into containerd
    // and a container on cbr0 with an address from the CNI config's range.
    sh(&mut vm, "ctr -n k8s.io images import /kelson-test/busybox-oci.tar");
    let addr = sh(
        &mut vm,
        &format!("ctr -n k8s.io run --rm --cni --no-pivot {IMAGE_NAME} cni-test /bin/busybox ip -4 addr show eth0"),
    );
    let ip = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no inet address in {addr}"))
        .to_owned();
    let host: u8 = ip.split('/').next().unwrap().rsplit('.').next().unwrap().parse().unwrap();
    assert!(ip.starts_with("10.244.3.") && host >= 128, "{ip} is not in the CNI half of 10.244.3.0/24");
}

#[test]
fn killed_services_come_back_with_back_off_and_a_crash_loop_starves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // kube-proxy, with no API server to read, fails at each start: a real
    // crash loop; everything else must carry on.
    let mut vm = node(dir.path(), CONFIG).boot().unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    wait_state(&mut vm, "containerd", "healthy");
    wait_state(&mut vm, "kubelet", "healthy");
    for service in ["containerd", "kubelet"] {
        let status = wait_state(&mut vm, service, "healthy");
        let pid: u32 = status
            .lines()
            .find_map(|l| l.trim().strip_prefix("\"pid\": ").map(|p| p.trim_end_matches(',').parse().unwrap()))
            .unwrap_or_else(|| panic!("no pid in {status}"));
        sh(&mut vm, &format!("kill -9 {pid}"));
        vm.expect(&format!("service={service} from=healthy to=backing-off"), SHORT).unwrap();
        let after = wait_state(&mut vm, service, "healthy");
        assert!(after.contains("\"restarts\": 1"), "{after}");
        assert!(!after.contains(&format!("\"pid\": {pid},")), "{after}");
    }
    // kube-proxy's restarts climb while the others stay healthy.
    let proxy = sh(
        &mut vm,
        "f=/run/kelson/services/kube-proxy.json; for i in $(seq 60); do grep -qE '\"restarts\": ([2-9]|[1-9][0-9])' $f && break; sleep 0.5; done; cat $f",
    );
    let restarts: u32 = proxy
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"restarts\": ").map(|p| p.trim_end_matches(',').parse().unwrap()))
        .unwrap();
    assert!(restarts >= 2, "kube-proxy should be crash-looping: {proxy}");
    for service in ["containerd", "kubelet"] {
        assert!(sh(&mut vm, &format!("cat /run/kelson/services/{service}.json")).contains("\"state\": \"healthy\""));
    }
    // The node still answers, and nothing is left as a zombie.
    assert_eq!(sh(&mut vm, "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l"), "0");
}

#[test]
fn a_service_hanging_on_sigterm_is_killed_after_its_grace_period_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    // The TEST DOUBLE: a real kubelet stops on SIGTERM.
    let mut vm = node(dir.path(), &config_with_kubelet_double("--double-ignore-sigterm")).boot().unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    wait_state(&mut vm, "kubelet", "healthy");
    vm.system_powerdown().unwrap();
    vm.expect("stopping supervised services", SHORT).unwrap();
    vm.expect("did not stop within its grace period; sending SIGKILL service=kubelet", SHORT).unwrap();
    vm.expect("supervised services stopped", SHORT).unwrap();
    assert!(vm.wait_exit(SHORT).unwrap().success());
    // containerd (which stops on SIGTERM) went down before... nothing else
    // was SIGKILLed by the supervisor.
    let console = vm.console_text().unwrap();
    assert_eq!(console.matches("sending SIGKILL service=").count(), 1, "{console}");
}

#[test]
fn a_hundred_kills_leave_no_zombies_and_every_kill_is_followed_by_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed 100 ms back-off (a test knob) instead of 1 s doubling to 60 s.
    let mut vm = node(dir.path(), CONFIG).append("kelson.test.restart_backoff_ms=100").boot().unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    wait_state(&mut vm, "kubelet", "healthy");
    let script = r#"f=/run/kelson/services/kubelet.json
pid() { sed -n 's/.*"pid": \([0-9]*\).*/\1/p' $f; }
for i in $(seq 100); do
    old=$(pid)
    while [ -z "$old" ]; do sleep 0.05; old=$(pid); done
    kill -9 $old
    n=0; while [ "$(pid)" = "$old" ] || [ -z "$(pid)" ]; do sleep 0.05; n=$((n+1)); [ $n -gt 400 ] && { echo "no restart after kill $i"; exit 1; }; done
done
echo done"#;
    let out = vm.agent_exec(script, Duration::from_secs(600)).unwrap();
    assert_eq!(out.status, 0, "{}", out.output);
    let status = wait_state(&mut vm, "kubelet", "healthy");
    let restarts: u32 = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"restarts\": ").map(|p| p.trim_end_matches(',').parse().unwrap()))
        .unwrap();
    assert!(restarts >= 100, "{status}");
    assert_eq!(sh(&mut vm, "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l"), "0", "zombies left");
}
