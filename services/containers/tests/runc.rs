//! The cross-check: the config.json Kelson writes runs under Debian's runc
//! with the result the container asked for. Needs root and runc
//! (`apt-get install runc`).
#![allow(clippy::unwrap_used)]

mod common;

use common::{busybox_rootfs, container, Cgroup2};
use kelson_containers::bundle;
use kelson_containers::config::{Mount, User};
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

fn runc(cgroup: &Cgroup2, state: &Path, bundle: &Path, id: &str) -> std::process::Output {
    let mut args: Vec<OsString> = ["--root".into(), state.into(), "run".into()].to_vec();
    if common::root_is_initramfs() {
        args.push("--no-pivot".into());
    }
    args.extend(["--bundle".into(), bundle.into(), id.into()]);
    let (program, args) = cgroup.wrap(Path::new("runc"), &args);
    Command::new(program).args(args).output().expect("runc must be installed (apt-get install runc)")
}

#[test]
fn runc_runs_kelsons_config_with_the_same_output_exit_code_and_user() {
    let cgroup = Cgroup2::find("runc");
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let host_dir = dir.path().join("shared");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("in"), "from the host\n").unwrap();

    let id = "kelson-runc-check";
    let script = "echo hi; id -u; id -g; cat /data/in; hostname; echo x > /tmp/t && cat /tmp/t; \
                  echo y > /probe 2>/dev/null || echo rootfs-readonly; exit 3";
    let mut config = container(id, &rootfs, &["sh", "-c", script], cgroup.path_for(id));
    config.user = User { uid: 1000, gid: 1001, additional_gids: vec![] };
    config.security.readonly_rootfs = true;
    config.mounts = vec![
        Mount::Bind { source: host_dir.clone(), destination: "/data".into(), readonly: true },
        Mount::Tmpfs { destination: "/tmp".into(), size_bytes: Some(1 << 20) },
    ];
    let bundle_dir = dir.path().join("bundle");
    bundle::write(&bundle_dir, &config).unwrap();

    let output = runc(&cgroup, &dir.path().join("runc-state"), &bundle_dir, id);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(3), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout, "hi\n1000\n1001\nfrom the host\nkelson-runc-check\nx\nrootfs-readonly\n");
    assert!(!cgroup.host_path(&config.cgroups_path).exists(), "runc removes the container's cgroup after run");
}

#[test]
fn runc_applies_the_memory_and_cpu_limits() {
    let cgroup = Cgroup2::find("runc-limits");
    if !cgroup.has("memory") || !cgroup.has("cpu") {
        cgroup.skip("runc memory.max/cpu.max check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let id = "kelson-runc-limits";
    let mut config = container(
        id,
        &rootfs,
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory.min /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu.weight",
        ],
        cgroup.path_for(id),
    );
    config.resources.memory_max = Some(32 << 20);
    config.resources.memory_min = Some(4 << 20);
    config.resources.cpu_max = Some(kelson_containers::CpuMax { quota_us: Some(50_000), period_us: 100_000 });
    config.resources.cpu_weight = Some(200);
    let bundle_dir = dir.path().join("bundle");
    bundle::write(&bundle_dir, &config).unwrap();
    let output = runc(&cgroup, &dir.path().join("runc-state"), &bundle_dir, id);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{}\n{}\n50000 100000\n200\n", 32 << 20, 4 << 20));
}

#[test]
fn runc_loads_kelsons_runtime_default_filter_with_the_same_refusal() {
    let cgroup = Cgroup2::find("runc-seccomp");
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let id = "kelson-runc-seccomp";
    let script =
        "grep '^Seccomp:' /proc/self/status; unshare -U true 2>/dev/null && echo unshare-ok || echo unshare-refused";
    let mut config = container(id, &rootfs, &["sh", "-c", script], cgroup.path_for(id));
    config.security.seccomp_runtime_default = true;
    let bundle_dir = dir.path().join("bundle");
    bundle::write(&bundle_dir, &config).unwrap();

    let output = runc(&cgroup, &dir.path().join("runc-state"), &bundle_dir, id);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.split_whitespace().collect::<Vec<_>>(), ["Seccomp:", "2", "unshare-refused"]);
}
