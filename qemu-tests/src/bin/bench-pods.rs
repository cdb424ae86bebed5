//! `cargo xtask bench pods`: static pod start and stop times measured in
//! the guest, beside Debian's runc running the same bundle in the same guest.
//!
//! One node boots from a `kelsonctl gen` seed. For each of `PODS` pods a
//! hostNetwork busybox manifest is written through the agent, which notes
//! the guest's uptime just before; PID 1's own console line "container
//! started: ..." carries the uptime at which the shim reported the process
//! running. Removing the manifest and PID 1's "pod stopped: ..." line give
//! the stop time (SIGTERM to a shell that exits on it, clean-up included).
//! With `RSS_AT` pods running, PID 1's and the shim's resident memory are
//! read from /proc.
//!
//! runc's side: a copy of the last pod's bundle (its config.json, with its
//! own cgroup path, over the same root filesystem) is run with
//! `runc run --detach --no-pivot` and stopped with `runc kill TERM` until
//! `runc state` says stopped, then `runc delete`, each timed by the guest's
//! shell from /proc/uptime (10 ms steps).

use anyhow::{bail, Context, Result};
use qemu_tests::bench::median;
use qemu_tests::{guest_layer_with_agent, ImagePaths, Vm, VmBuilder};
use std::time::Duration;

const PODS: usize = 20;
const RSS_AT: usize = 5;
const WAIT: Duration = Duration::from_secs(120);
const NODE: &str = "bench-cp-1";

fn manifest(i: usize) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: b{i}
  namespace: bench
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 10
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']
"
    )
}

/// The uptime in a console line's `[   12.345678]` prefix.
fn stamp(line: &str) -> Result<f64> {
    let inner = line.split_once('[').and_then(|(_, rest)| rest.split_once(']')).map(|(t, _)| t.trim());
    inner.and_then(|t| t.parse().ok()).with_context(|| format!("no timestamp in {line:?}"))
}

fn guest(vm: &mut Vm, cmd: &str) -> Result<String> {
    let out = vm.agent_exec(cmd, WAIT)?;
    if out.status != 0 {
        bail!("{cmd}: exit {}: {}", out.status, out.output);
    }
    Ok(out.output.trim().to_owned())
}

fn uptime_of(text: &str) -> Result<f64> {
    text.lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("no uptime in {text:?}"))
}

fn rss_kib(vm: &mut Vm, pid: &str) -> Result<u64> {
    let line = guest(vm, &format!("grep VmRSS /proc/{pid}/status"))?;
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).with_context(|| format!("reading {line:?}"))
}

/// runc in the guest: start and stop `PODS` containers from a copy of
/// `bundle`, printing "start <ms> stop <ms>" per container.
const RUNC_LOOP: &str = r##"set -e
ms() { read t r < /proc/uptime; echo "${t%.*}${t#*.}"; }
cp "$BUNDLE/config.json" /tmp/runc-bundle.json
i=0
while [ $i -lt $PODS ]; do
  i=$((i+1))
  b=/tmp/rb$i; mkdir -p $b
  sed "s#\"cgroupsPath\": *\"[^\"]*\"#\"cgroupsPath\":\"/kelson.slice/bench-runc/c$i\"#" /tmp/runc-bundle.json > $b/config.json
  t0=$(ms); runc run --detach --no-pivot --bundle $b rc$i </dev/null >/dev/null 2>&1; t1=$(ms)
  runc kill rc$i TERM
  until runc state rc$i | grep -q '"status": "stopped"'; do :; done
  runc delete rc$i; t2=$(ms)
  echo "start $(( (t1 - t0) * 10 )) stop $(( (t2 - t1) * 10 ))"
done"##;

fn main() -> Result<()> {
    let image = ImagePaths::from_env()?;
    let dir = tempfile::tempdir()?;
    let spec = kelsonctl::gen::ClusterSpec::with_defaults("bench", 1, 0);
    kelsonctl::gen::generate_cluster(&spec, &dir.path().join("cluster"), false)?;
    // The benchmark's own pods only, not a control plane.
    let seed = qemu_tests::seed::without_control_plane(&dir.path().join(format!("cluster/nodes/{NODE}")))?;
    let mut vm = VmBuilder::from_image(&image)
        .layer(guest_layer_with_agent("/bin/busybox"))
        .memory_mib(1024)
        .disk(&seed)
        .boot()?;
    // The pods stage comes before ready: the manager is watching by then.
    vm.expect("kelson: ready", Duration::from_secs(240))?;

    let (mut start_ms, mut stop_ms) = (Vec::new(), Vec::new());
    let (mut pid1_rss, mut shim_rss) = (0, 0);
    for i in 1..=PODS {
        let text = manifest(i);
        let t0 = uptime_of(&guest(&mut vm, &format!("cat > /tmp/b{i}.yaml <<'EOF'\n{text}EOF\ncat /proc/uptime; mv /tmp/b{i}.yaml /etc/kubernetes/manifests/b{i}.yaml"))?)?;
        let line = vm.expect(&format!("container started: bench/b{i}-{NODE}/main"), WAIT)?;
        start_ms.push((stamp(&line)? - t0) * 1000.0);
        if i == RSS_AT {
            pid1_rss = rss_kib(&mut vm, "1")?;
            // PID 1 names the shim's pid when it starts it.
            let console = vm.console_text()?;
            let shim = console
                .split("container shim started (pid ")
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .context("no \"container shim started (pid N)\" line on the console")?
                .to_owned();
            shim_rss = rss_kib(&mut vm, &shim)?;
        }
    }
    // A bundle for runc while the pods run (their root filesystems are
    // mounted): any of them, as they differ only in their names.
    let bundle = guest(&mut vm, "dirname $(ls /var/lib/kelson/pods/*/containers/main/config.json | tail -1)")?;
    let runc = guest(&mut vm, &format!("export BUNDLE={bundle} PODS={PODS}\n{RUNC_LOOP}"))?;
    let (mut runc_start, mut runc_stop) = (Vec::new(), Vec::new());
    for line in runc.lines().filter(|l| l.starts_with("start ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, start, _, stop] = words[..] else { bail!("runc loop printed {line:?}") };
        runc_start.push(start.parse::<f64>()?);
        runc_stop.push(stop.parse::<f64>()?);
    }
    if runc_start.len() != PODS {
        bail!("runc ran {} of {PODS} containers:\n{runc}", runc_start.len());
    }
    for i in 1..=PODS {
        let t0 = uptime_of(&guest(&mut vm, &format!("cat /proc/uptime; rm /etc/kubernetes/manifests/b{i}.yaml"))?)?;
        let line = vm.expect(&format!("pod stopped: bench/b{i}-{NODE}"), WAIT)?;
        stop_ms.push((stamp(&line)? - t0) * 1000.0);
    }
    vm.kill()?;

    println!("static pod benchmark, medians of {PODS}, measured in the guest (TCG, 1 vCPU):");
    println!("  Kelson: manifest written -> container running   {:>7.0} ms", median(&start_ms));
    println!("  runc:   run --detach of the same bundle          {:>7.0} ms", median(&runc_start));
    println!("  Kelson: manifest removed -> pod stopped          {:>7.0} ms", median(&stop_ms));
    println!("  runc:   kill TERM -> stopped -> deleted          {:>7.0} ms", median(&runc_stop));
    println!(
        "  RSS with {RSS_AT} pods running: PID 1 {:.1} MiB, shim {:.1} MiB",
        pid1_rss as f64 / 1024.0,
        shim_rss as f64 / 1024.0
    );
    Ok(())
}
