//! The shim end to end, as root: a real shim process (this crate's
//! `kelson-shim` binary) runs busybox containers with libcontainer and
//! reports their exits to the async client. `KELSON_SHIM_BIN=PATH` tests
//! another build of it instead.
#![allow(clippy::unwrap_used)]

use kelson_test_support as common;

use common::{busybox_rootfs, container, tar, write_layout, Cgroup2, Entry, TAR_GZIP};
use kelson_containers::config::ContainerConfig;
use kelson_containers::protocol::ExitEvent;
use kelson_containers::rootfs::{self, SystemMounter};
use kelson_containers::shim::ShimOptions;
use kelson_containers::store::ImageStore;
use kelson_containers::{bundle, ShimClient, ShimCommand};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

const CONNECT: Duration = Duration::from_secs(10);
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// A shim process for one test, killed on drop.
struct Shim {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
    cgroup: Cgroup2,
}

impl Shim {
    fn start(name: &str, no_pivot: bool) -> Shim {
        let cgroup = Cgroup2::find(name);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("shim.sock");
        let child = Self::spawn(&cgroup, dir.path(), no_pivot);
        Shim { child, socket, dir, cgroup }
    }

    fn spawn(cgroup: &Cgroup2, dir: &Path, no_pivot: bool) -> Child {
        let options = ShimOptions { socket: dir.join("shim.sock"), state_dir: dir.join("state"), no_pivot };
        // KELSON_SHIM_BIN runs these tests against another build of the shim (e.g. the static one).
        let binary = std::env::var_os("KELSON_SHIM_BIN")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kelson-shim")), PathBuf::from);
        let (program, prefix_args) = cgroup.wrap(&binary, &[]);
        let command = ShimCommand { program, prefix_args, with_subcommand: false, options };
        command.command().stdout(Stdio::null()).spawn().expect("spawning the shim")
    }

    /// SIGKILL for the shim, then a new one on the same socket and state.
    fn kill_and_replace(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(&self.cgroup, self.dir.path(), false);
    }

    fn rootfs(&self) -> PathBuf {
        let rootfs = self.dir.path().join("rootfs");
        if !rootfs.exists() {
            busybox_rootfs(&rootfs);
        }
        rootfs
    }

    fn config(&self, id: &str, script: &str) -> ContainerConfig {
        container(id, &self.rootfs(), &["sh", "-c", script], self.cgroup.path_for(id))
    }

    fn bundle(&self, config: &ContainerConfig) -> PathBuf {
        let dir = self.dir.path().join("bundles").join(&config.id);
        bundle::write(&dir, config).unwrap();
        dir
    }

    fn log(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.log"))
    }

    async fn connect(&self) -> (ShimClient, Vec<kelson_containers::ContainerState>) {
        ShimClient::connect(&self.socket, CONNECT).await.expect("connecting to the shim")
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn next_exit(client: &mut ShimClient) -> ExitEvent {
    tokio::time::timeout(EXIT_WAIT, client.next_event())
        .await
        .expect("no exit event in time")
        .expect("reading an exit event")
}

#[tokio::test(flavor = "current_thread")]
async fn a_container_that_exits_3_is_reported_with_code_3_and_its_output() {
    let shim = Shim::start("exit3", false);
    let (mut client, initial) = shim.connect().await;
    assert!(initial.is_empty());
    let config = shim.config("exit3", "echo hi; echo oops >&2; exit 3");
    let bundle = shim.bundle(&config);
    let (out, err) = (shim.log("out"), shim.log("err"));
    let state = client.create("exit3", &bundle, Some(&out), Some(&err)).await.unwrap();
    assert!(state.pid > 0 && state.exit.is_none());

    let exit = next_exit(&mut client).await;
    assert_eq!(exit, ExitEvent { id: "exit3".into(), pid: state.pid, code: Some(3), signal: None, oom_killed: false });
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hi\n");
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "oops\n");
    assert_eq!(client.state("exit3").await.unwrap().exit, Some(exit));

    let cgroup_dir = shim.cgroup.host_path(&config.cgroups_path);
    assert!(cgroup_dir.exists(), "the cgroup stays until delete");
    client.delete("exit3").await.unwrap();
    assert!(!cgroup_dir.exists(), "delete removes the container's cgroup");
    assert!(client.list().await.unwrap().is_empty());
    let err = client.state("exit3").await.unwrap_err();
    assert!(err.to_string().contains("no container \"exit3\""), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_sleeper_killed_with_sigkill_is_reported_as_signal_9() {
    let shim = Shim::start("sigkill", false);
    let (mut client, _) = shim.connect().await;
    let bundle = shim.bundle(&shim.config("sleeper", "exec sleep 1000"));
    let state = client.create("sleeper", &bundle, None, None).await.unwrap();
    let err = client.delete("sleeper").await.unwrap_err();
    assert!(err.to_string().contains("still running"), "{err}");
    let err = client.create("sleeper", &bundle, None, None).await.unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");

    client.kill("sleeper", libc::SIGKILL).await.unwrap();
    let exit = next_exit(&mut client).await;
    assert_eq!(
        exit,
        ExitEvent { id: "sleeper".into(), pid: state.pid, code: None, signal: Some(libc::SIGKILL), oom_killed: false }
    );
    let err = client.kill("sleeper", libc::SIGTERM).await.unwrap_err();
    assert!(err.to_string().contains("already exited"), "{err}");
    client.delete("sleeper").await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn containers_outlive_the_client_and_a_new_client_gets_their_state() {
    let shim = Shim::start("reconnect", false);
    let (mut client, _) = shim.connect().await;
    // A pid namespace's init gets only the signals it handles: hence the trap.
    let long_script = "trap 'exit 42' TERM; while true; do sleep 0.1; done";
    let sleeper = client.create("long", &shim.bundle(&shim.config("long", long_script)), None, None).await.unwrap();
    let quick =
        client.create("quick", &shim.bundle(&shim.config("quick", "sleep 1; exit 7")), None, None).await.unwrap();
    drop(client);

    // "quick" exits while no client is connected.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(Path::new(&format!("/proc/{}", sleeper.pid)).exists(), "the container survives its client");
    let (mut client, states) = shim.connect().await;
    let long = states.iter().find(|s| s.id == "long").unwrap();
    assert_eq!((long.pid, &long.exit), (sleeper.pid, &None));
    let missed =
        states.iter().find(|s| s.id == "quick").unwrap().exit.clone().expect("the exit while disconnected is kept");
    assert_eq!((missed.pid, missed.code), (quick.pid, Some(7)));

    client.kill("long", libc::SIGTERM).await.unwrap();
    let exit = next_exit(&mut client).await;
    assert_eq!((exit.id.as_str(), exit.code), ("long", Some(42)));
    client.delete("long").await.unwrap();
    client.delete("quick").await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_container_over_its_memory_limit_is_reported_oom_killed() {
    let shim = Shim::start("oom", common::root_is_initramfs());
    let (mut client, _) = shim.connect().await;
    if !shim.cgroup.has("memory") {
        // What can be checked here: a limit the hierarchy cannot enforce is refused, not ignored.
        let mut config = shim.config("limited", "exit 0");
        config.resources.memory_max = Some(16 << 20);
        let err = client.create("limited", &shim.bundle(&config), None, None).await.unwrap_err().to_string();
        assert!(err.contains("container \"limited\"") && err.contains("subsystem memory is not available"), "{err}");
        assert!(client.list().await.unwrap().is_empty());
        shim.cgroup.skip("the OOM-kill report");
        return;
    }
    // The container's init (sh) reads 64 MiB into a variable against a 16 MiB
    // limit, so it is the biggest process and the one the OOM killer takes.
    // Checked under a v1 memory cgroup on the development host: sh dies of
    // SIGKILL with oom_kill 1. Assumes no swap, as on the node and in QEMU.
    let mut config = shim.config("hog", "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#x}");
    config.resources.memory_max = Some(16 << 20);
    let state = client.create("hog", &shim.bundle(&config), Some(&shim.log("hog")), None).await.unwrap();
    let exit = next_exit(&mut client).await;
    assert_eq!((exit.pid, exit.signal, exit.oom_killed), (state.pid, Some(libc::SIGKILL), true), "{exit:?}");
    assert_eq!(
        std::fs::read_to_string(shim.cgroup.host_path(&config.cgroups_path).join("memory.max")).unwrap().trim(),
        (16u64 << 20).to_string()
    );
    client.delete("hog").await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn an_image_from_the_store_runs_on_an_overlay_root_without_pivot_root() {
    let shim_dir = tempfile::tempdir().unwrap();
    let layouts = shim_dir.path().join("layouts");
    let busybox = common::busybox();
    let layer = tar(&[
        Entry::Dir("bin/", 0o755),
        Entry::File("bin/busybox", &busybox, 0o755),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::Symlink("bin/cat", "busybox"),
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/motd", b"from the image\n", 0o644),
        Entry::Dir("proc/", 0o755),
        Entry::Dir("sys/", 0o755),
        Entry::Dir("dev/", 0o755),
    ]);
    write_layout(
        &layouts.join("busybox"),
        serde_json::json!({ "io.containerd.image.name": "docker.io/kelson/busybox:test" }),
        &[(TAR_GZIP, common::gzip(&layer))],
        serde_json::json!({ "Cmd": ["sh", "-c", "cat /etc/motd; echo written > /etc/motd; cat /etc/motd"], "Env": ["PATH=/bin"] }),
    );
    let store = ImageStore::new(&layouts, shim_dir.path().join("unpacked"));
    let image = store.resolve("kelson/busybox:test").unwrap();
    let lower = store.unpack(&image).unwrap();
    let container_dir = shim_dir.path().join("containers/img");
    // Mounted before the shim starts: the shim may live in a mount namespace of its own.
    let layout = rootfs::prepare(&SystemMounter, &lower, &container_dir).unwrap();

    let shim = Shim::start("image", true);
    let (mut client, _) = shim.connect().await;
    let defaults = image.defaults();
    let mut config = container("img", &layout.merged, &[], shim.cgroup.path_for("img"));
    config.args = defaults.cmd;
    config.env = defaults.env;
    let out = shim.log("img");
    client.create("img", &shim.bundle(&config), Some(&out), Some(&out)).await.unwrap();
    let exit = next_exit(&mut client).await;
    assert_eq!(exit.code, Some(0), "{}", std::fs::read_to_string(&out).unwrap_or_default());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "from the image\nwritten\n");
    client.delete("img").await.unwrap();
    drop(client);
    drop(shim);

    assert_eq!(
        std::fs::read_to_string(lower.join("etc/motd")).unwrap(),
        "from the image\n",
        "the image's tree is never written"
    );
    assert_eq!(
        std::fs::read_to_string(layout.upper.join("etc/motd")).unwrap(),
        "written\n",
        "writes land in the container's upper dir"
    );
    rootfs::remove(&SystemMounter, &container_dir).unwrap();
    assert!(!layout.merged.exists());
}

#[tokio::test(flavor = "current_thread")]
async fn a_bundle_that_cannot_run_is_refused_and_the_shim_carries_on() {
    let shim = Shim::start("bad", false);
    let (mut client, _) = shim.connect().await;
    let missing = shim.dir.path().join("no-such-bundle");
    let err = client.create("bad", &missing, None, None).await.unwrap_err();
    assert!(err.to_string().contains("no-such-bundle/config.json"), "{err}");

    let mut config = shim.config("bad", "unused");
    config.args = vec!["/bin/not-there".into()];
    let err = client.create("bad", &shim.bundle(&config), None, None).await.unwrap_err().to_string();
    assert!(err.contains("container \"bad\"") && err.contains("'/bin/not-there' not found"), "{err}");
    assert!(client.list().await.unwrap().is_empty(), "a failed create leaves nothing behind");
    assert!(!shim.dir.path().join("state/bad").exists());
    let ok = client.create("bad", &shim.bundle(&shim.config("bad", "exit 0")), None, None).await.unwrap();
    let exit = next_exit(&mut client).await;
    assert_eq!((exit.pid, exit.code), (ok.pid, Some(0)));
}

#[tokio::test(flavor = "current_thread")]
async fn a_container_joins_the_sandboxs_namespaces_with_its_own_root_and_capabilities() {
    let shim = Shim::start("join", false);
    let (mut client, _) = shim.connect().await;
    let sandbox = shim.config("sandbox", "trap 'exit 0' TERM; while true; do sleep 0.1; done");
    let sandbox_state = client.create("sandbox", &shim.bundle(&sandbox), None, None).await.unwrap();
    let ns = |kind: &str| kelson_containers::Namespace::Join(format!("/proc/{}/ns/{kind}", sandbox_state.pid).into());

    let script =
        "hostname; for n in net ipc uts mnt; do readlink /proc/self/ns/$n; done; grep CapEff /proc/self/status";
    let mut app = shim.config("app", script);
    app.hostname = None;
    app.namespaces = kelson_containers::Namespaces { network: ns("net"), ipc: ns("ipc"), uts: ns("uts") };
    app.security.capabilities_drop = vec!["ALL".into()];
    let out = shim.log("app");
    client.create("app", &shim.bundle(&app), Some(&out), Some(&out)).await.unwrap();
    let exit = next_exit(&mut client).await;
    let output = std::fs::read_to_string(&out).unwrap();
    assert_eq!((exit.id.as_str(), exit.code), ("app", Some(0)), "{output}");

    let sandbox_ns = |kind: &str| {
        std::fs::read_link(format!("/proc/{}/ns/{kind}", sandbox_state.pid)).unwrap().to_string_lossy().into_owned()
    };
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "sandbox", "the sandbox's UTS namespace, so its hostname");
    assert_eq!(&lines[1..4], [sandbox_ns("net"), sandbox_ns("ipc"), sandbox_ns("uts")]);
    assert_ne!(lines[4], sandbox_ns("mnt"), "a mount namespace of its own");
    assert_eq!(lines[5].split_whitespace().collect::<Vec<_>>(), ["CapEff:", "0000000000000000"]);

    client.kill("sandbox", libc::SIGTERM).await.unwrap();
    assert_eq!(next_exit(&mut client).await.code, Some(0));
    client.delete("app").await.unwrap();
    client.delete("sandbox").await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn every_client_gets_exits_a_second_shim_refuses_the_socket_and_garbage_gets_an_error_reply() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let shim = Shim::start("clients", false);
    let (mut first, _) = shim.connect().await;
    // A second shim on the same socket refuses to start and leaves the first serving.
    let second_shim = ShimCommand {
        program: env!("CARGO_BIN_EXE_kelson-shim").into(),
        prefix_args: Vec::new(),
        with_subcommand: false,
        options: ShimOptions {
            socket: shim.socket.clone(),
            state_dir: shim.dir.path().join("state2"),
            no_pivot: false,
        },
    };
    let output = second_shim.command().output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("another shim is serving on {}", shim.socket.display())), "{stderr}");

    let (mut second, _) = shim.connect().await;
    let state = first.create("both", &shim.bundle(&shim.config("both", "exit 5")), None, None).await.unwrap();
    for client in [&mut first, &mut second] {
        let exit = next_exit(client).await;
        assert_eq!((exit.pid, exit.code), (state.pid, Some(5)));
    }
    second.delete("both").await.unwrap();
    assert!(first.list().await.unwrap().is_empty());
    drop((first, second));

    let stream = tokio::net::UnixStream::connect(&shim.socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    assert_eq!(lines.next_line().await.unwrap().unwrap(), r#"{"type":"hello","containers":[]}"#);
    write.write_all(b"not json\n{\"seq\":9,\"op\":\"state\",\"id\":\"x\"}\n").await.unwrap();
    let reply = lines.next_line().await.unwrap().unwrap();
    assert!(reply.starts_with(r#"{"type":"reply","seq":0,"result":{"Err":"malformed request: "#), "{reply}");
    assert_eq!(
        lines.next_line().await.unwrap().unwrap(),
        r#"{"type":"reply","seq":9,"result":{"Err":"no container \"x\""}}"#
    );
}

/// Whether `pid` is gone or only a zombie waiting for its new parent.
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_new_shim_kills_and_deletes_what_a_killed_shim_left_so_the_id_can_run_again() {
    let mut shim = Shim::start("leftover", false);
    let (mut client, _) = shim.connect().await;
    let config = shim.config("left", "exec sleep 1000");
    let bundle = shim.bundle(&config);
    let old = client.create("left", &bundle, None, None).await.unwrap();
    drop(client);

    shim.kill_and_replace();
    let (mut client, initial) = shim.connect().await;
    assert!(initial.is_empty(), "a new shim knows no containers: {initial:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !dead(old.pid) {
        assert!(std::time::Instant::now() < deadline, "the dead shim's container (pid {}) still runs", old.pid);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let new = client.create("left", &bundle, None, None).await.expect("the same id runs again");
    assert_ne!(new.pid, old.pid);
    client.kill("left", libc::SIGKILL).await.unwrap();
    assert_eq!(next_exit(&mut client).await.signal, Some(libc::SIGKILL));
    client.delete("left").await.unwrap();
    assert!(!shim.cgroup.host_path(&config.cgroups_path).exists());
}

#[tokio::test(flavor = "current_thread")]
async fn containers_may_open_as_many_files_as_the_kernel_allows() {
    let shim = Shim::start("nofile", false);
    let (mut client, _) = shim.connect().await;
    let bundle = shim.bundle(&shim.config("nofile", "ulimit -n"));
    let out = shim.log("nofile");
    client.create("nofile", &bundle, Some(&out), None).await.unwrap();
    assert_eq!(next_exit(&mut client).await.code, Some(0));
    // As many as the kernel allows, or, without CAP_SYS_RESOURCE to go
    // past the hard limit, the hard limit.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let effective = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    const CAP_SYS_RESOURCE: u32 = 24;
    let sys_resource = u64::from_str_radix(effective, 16).unwrap() & (1 << CAP_SYS_RESOURCE) != 0;
    let most = if sys_resource {
        std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap().trim().parse::<u64>().unwrap()
    } else {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap().1
    };
    assert!(most > 1024);
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), most.to_string());
    client.delete("nofile").await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn the_runtime_default_filter_refuses_a_user_namespace_an_unfiltered_container_may_make() {
    let shim = Shim::start("seccomp", false);
    let (mut client, _) = shim.connect().await;
    let script = "grep '^Seccomp:' /proc/self/status; unshare -U true && echo unshare-ok || echo unshare-refused";
    let mut outputs = Vec::new();
    for (id, filtered) in [("plain", false), ("filtered", true)] {
        let mut config = shim.config(id, script);
        config.security.seccomp_runtime_default = filtered;
        let out = shim.log(id);
        client.create(id, &shim.bundle(&config), Some(&out), Some(&out)).await.unwrap();
        assert_eq!(next_exit(&mut client).await.code, Some(0));
        outputs.push(std::fs::read_to_string(&out).unwrap());
        client.delete(id).await.unwrap();
    }
    let words = |text: &str| {
        text.split_whitespace().filter(|w| !w.starts_with("unshare:")).map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(words(&outputs[0]), ["Seccomp:", "0", "unshare-ok"], "without the filter: {}", outputs[0]);
    assert_eq!(words(&outputs[1]).first().map(String::as_str), Some("Seccomp:"), "{}", outputs[1]);
    assert_eq!(words(&outputs[1])[1], "2", "a filter is installed: {}", outputs[1]);
    assert_eq!(words(&outputs[1]).last().map(String::as_str), Some("unshare-refused"), "{}", outputs[1]);
}
