//! The power-cut campaign: a node with a state disk is cut (QMP `quit`, no
//! shutdown) in the middle of its state writes, and the next boot must reach
//! ready with the old or the new state, never a torn or mixed one.
//!
//! Every state write goes through `write_atomic` (temporary file, fsync,
//! rename, fsync of the directory). The test knob
//! `kelson.test.cut=<file>:<phase>[:after-ready]` makes PID 1 hold the first
//! matching write for ever at that phase after printing a marker; the test
//! waits for the marker and quits QEMU, which loses the guest's page cache
//! like a power cut. The phases and what the next boot must find:
//!
//! - `written` (temporary file written, not synced) and `synced` (not yet
//!   renamed): the old state;
//! - `renamed` (the directory not synced): either, and the test says which
//!   (quit at once, or after 6 s, past ext4's 5 s journal commit);
//! - `done` (the directory synced): the new state.
//!
//! The four areas: config save (the saved seed refreshed with a new config
//! under the same instance-id), seed save (a seed with a new instance-id
//! replacing the saved one; both are `/var/lib/kelson/config/cloud-init.yaml`,
//! which carries the instance-id in its first line), pod allocation
//! (`/var/lib/kelson/net/pods.json`, when a pod dropped into the manifest
//! directory after ready is attached to cbr0) and service state
//! (`/run/kelson/services/containerd.json`, written after ready when the
//! test kills containerd). Service state lives on tmpfs: after a cut the
//! next boot writes it afresh, and the test checks that it does.
//!
//! Boots are chained: the boot that checks recovery from one cut is the
//! one cut at the next post-ready point. A cut during the config stage
//! comes before ready, so such a boot follows a boot that reached ready,
//! and the boot after it, run without a seed so the node boots with the
//! saved one, is the check. Two chains run at once on separate disks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use qemu_tests::{guest_layer_with_agent, ImagePaths, Vm, VmBuilder};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);
const SHORT: Duration = Duration::from_secs(90);
/// Longer than ext4's default journal commit interval (5 s).
const LINGER: Duration = Duration::from_secs(6);
const MARKER: &str = "power-cut point reached";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Area {
    Config,
    Seed,
    Pods,
    Services,
}

impl Area {
    fn file(self) -> &'static str {
        match self {
            Area::Config | Area::Seed => "cloud-init.yaml",
            Area::Pods => "pods.json",
            Area::Services => "containerd.json",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Area::Config => "config save",
            Area::Seed => "seed save",
            Area::Pods => "pod allocation",
            Area::Services => "service state",
        }
    }

    /// Written in the config stage, before ready.
    fn before_ready(self) -> bool {
        matches!(self, Area::Config | Area::Seed)
    }
}

#[derive(Clone, Copy, Debug)]
struct Cut {
    area: Area,
    phase: &'static str,
    /// Wait [`LINGER`] at the cut point before quitting.
    linger: bool,
}

impl Cut {
    fn knob(&self) -> String {
        let after = if self.area.before_ready() { "" } else { ":after-ready" };
        format!("kelson.test.cut={}:{}{after}", self.area.file(), self.phase)
    }

    fn describe(&self) -> String {
        let linger = if self.linger { " +6s" } else { "" };
        format!("{} ({}) at {}{linger}", self.area.label(), self.area.file(), self.phase)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Old,
    New,
    /// State on tmpfs: the next boot starts it afresh.
    Fresh,
}

/// Which states a cut at `phase` may leave.
fn allowed(phase: &str) -> &'static [Found] {
    match phase {
        "written" | "synced" => &[Found::Old],
        "renamed" => &[Found::Old, Found::New],
        "done" => &[Found::New],
        _ => panic!("unknown phase {phase}"),
    }
}

/// A seed as the node saves it: what the host knows it by.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seed {
    instance_id: String,
    hostname: String,
}

impl Seed {
    fn image(&self, dir: &Path) -> PathBuf {
        let dir = dir.join(format!("seed-{}", self.hostname));
        std::fs::create_dir_all(&dir).unwrap();
        let user_data = format!(
            "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: {}\nnetwork:\n  \
             podCIDR: 10.244.7.0/24\n  clusterCIDR: 10.244.0.0/16\n  mtu: 1460\n",
            self.hostname
        );
        let meta_data = format!("instance-id: {}\n", self.instance_id);
        qemu_tests::seed::fat_seed(&dir, &[("meta-data", &meta_data), ("user-data", &user_data)]).unwrap()
    }
}

/// A cut whose next boot has not been checked yet.
enum Pending {
    Seed { cut: Cut, old: Seed, new: Seed },
    Pods { cut: Cut, before: BTreeSet<String> },
    Services { cut: Cut },
}

struct Chain {
    name: &'static str,
    dir: tempfile::TempDir,
    state: PathBuf,
    boots: usize,
    generation: usize,
    saved: Seed,
    pending: Option<Pending>,
    lines: Vec<String>,
    clean: usize,
}

fn sh(vm: &mut Vm, cmd: &str) -> String {
    let out = vm.agent_exec(cmd, SHORT).unwrap_or_else(|e| panic!("agent: {cmd}: {e:#}"));
    assert_eq!(out.status, 0, "{cmd} failed: {}", out.output);
    out.output.trim().to_owned()
}

/// The pod ids in the node's address store (empty if it has none yet).
fn allocations(vm: &mut Vm) -> BTreeSet<String> {
    let text = sh(vm, "cat /var/lib/kelson/net/pods.json 2>/dev/null || echo '{\"pods\":{}}'");
    let store: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("pods.json does not parse ({e}):\n{text}"));
    store["pods"].as_object().unwrap_or_else(|| panic!("pods.json has no pods map:\n{text}")).keys().cloned().collect()
}

impl Chain {
    fn new(name: &'static str) -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.img");
        std::fs::File::create(&state).unwrap().set_len(256 << 20).unwrap();
        let saved = Seed { instance_id: format!("{name}-id0"), hostname: format!("{name}-g0") };
        Chain { name, dir, state, boots: 0, generation: 0, saved, pending: None, lines: Vec::new(), clean: 0 }
    }

    fn boot(&mut self, seed: Option<&Seed>, knob: Option<String>) -> Vm {
        let image = ImagePaths::from_env().expect("the node image (run `cargo xtask image`)");
        self.boots += 1;
        let mut vm = VmBuilder::from_image(&image)
            .name(&format!("{}-{}", self.name, self.boots))
            .layer(guest_layer_with_agent("/bin/busybox"))
            .disk(&self.state)
            .append("kelson.state=/dev/vda");
        if let Some(seed) = seed {
            vm = vm.disk(seed.image(self.dir.path()));
        }
        if let Some(knob) = knob {
            vm = vm.append(&knob);
        }
        vm.boot().unwrap()
    }

    /// Cuts `vm` at its cut point: waits for the marker, and quits.
    fn cut(&self, vm: &mut Vm, cut: &Cut) {
        // The hold can come before the test looks for it (a service's own
        // state write right after ready, read past by an earlier expect):
        // the console so far is searched first.
        let earlier = vm.console_text().ok().and_then(|t| t.lines().find(|l| l.contains(MARKER)).map(str::to_owned));
        let line = match earlier {
            Some(line) => line,
            None => vm.expect(MARKER, BOOT).unwrap_or_else(|e| panic!("{}: {}: {e:#}", self.name, cut.describe())),
        };
        assert!(line.contains(cut.area.file()), "{line}");
        if cut.linger {
            std::thread::sleep(LINGER);
        }
        vm.quit().unwrap();
    }

    fn first_boot(&mut self) {
        let seed = self.saved.clone();
        let mut vm = self.boot(Some(&seed), None);
        vm.expect("cloud-init seed saved for later boots", BOOT).unwrap();
        vm.expect("kelson: ready", BOOT).unwrap();
        assert_eq!(sh(&mut vm, "cat /proc/sys/kernel/hostname"), seed.hostname);
        vm.quit().unwrap();
    }

    /// On a node that reached ready: what the pending cut left.
    fn check(&mut self, vm: &mut Vm) {
        let Some(pending) = self.pending.take() else { return };
        let (cut, found, detail) = match pending {
            Pending::Seed { cut, old, new } => {
                let line = vm.console_text().unwrap();
                assert!(line.contains("no cloud-init seed attached; using the one saved at an earlier boot"), "{line}");
                let booted = Seed {
                    hostname: sh(vm, "cat /proc/sys/kernel/hostname"),
                    instance_id: {
                        let header = sh(vm, "head -n 1 /var/lib/kelson/config/cloud-init.yaml");
                        let id = header
                            .strip_prefix("# cloud-init instance-id: ")
                            .unwrap_or_else(|| panic!("{}: the saved seed's first line is {header:?}", self.name));
                        serde_json::from_str::<String>(id).unwrap()
                    },
                };
                let found = if booted == old {
                    Found::Old
                } else if booted == new {
                    Found::New
                } else {
                    panic!(
                        "{}: after {} the node booted with {booted:?}: neither {old:?} nor {new:?}",
                        self.name,
                        cut.describe()
                    )
                };
                self.saved = booted.clone();
                (cut, found, format!("hostname {}, instance-id {}", booted.hostname, booted.instance_id))
            }
            Pending::Pods { cut, before } => {
                let after = allocations(vm);
                let added: Vec<&String> = after.difference(&before).collect();
                let found = match (after.is_superset(&before), added.len()) {
                    (true, 0) => Found::Old,
                    (true, 1) => Found::New,
                    _ => panic!(
                        "{}: after {} pods.json holds {after:?}, before it held {before:?}",
                        self.name,
                        cut.describe()
                    ),
                };
                (cut, found, format!("{} allocation(s)", after.len()))
            }
            Pending::Services { cut } => {
                let text = sh(vm, "cat /run/kelson/services/containerd.json");
                let status: serde_json::Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("containerd.json ({e}):\n{text}"));
                assert_eq!(status["restarts"], 0, "a fresh boot's status: {text}");
                (cut, Found::Fresh, format!("containerd {}", status["state"].as_str().unwrap_or("?")))
            }
        };
        let ok = found == Found::Fresh || allowed(cut.phase).contains(&found);
        let line = format!(
            "power-cut: {}: {}: next boot ready with the {found:?} state ({detail})",
            self.name,
            cut.describe()
        )
        .replace("Old state", "old state")
        .replace("New state", "new state")
        .replace("Fresh state", "fresh state (tmpfs)");
        eprintln!("{line}");
        self.lines.push(line);
        assert!(ok, "{}: {} left the {found:?} state; allowed: {:?}", self.name, cut.describe(), allowed(cut.phase));
        self.clean += 1;
    }

    /// A boot without a seed or a cut point: reaches ready and checks.
    fn recovery_boot(&mut self) {
        let mut vm = self.boot(None, None);
        vm.expect("kelson: ready", BOOT).unwrap();
        self.check(&mut vm);
        vm.quit().unwrap();
    }

    fn run(&mut self, cut: Cut) {
        if cut.area.before_ready() {
            if self.pending.is_some() {
                self.recovery_boot();
            }
            self.generation += 1;
            let old = self.saved.clone();
            let new = Seed {
                instance_id: if cut.area == Area::Seed {
                    format!("{}-id{}", self.name, self.generation)
                } else {
                    old.instance_id.clone()
                },
                hostname: format!("{}-g{}", self.name, self.generation),
            };
            let mut vm = self.boot(Some(&new), Some(cut.knob()));
            let note = if cut.area == Area::Seed { "replaces the saved one" } else { "the saved copy is refreshed" };
            vm.expect(note, BOOT).unwrap();
            self.cut(&mut vm, &cut);
            self.pending = Some(Pending::Seed { cut, old, new });
        } else {
            let mut vm = self.boot(None, Some(cut.knob()));
            vm.expect("kelson: ready", BOOT).unwrap();
            self.check(&mut vm);
            match cut.area {
                Area::Pods => {
                    let before = allocations(&mut vm);
                    self.generation += 1;
                    let manifest = format!(
                        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cut-{g}\n  namespace: default\nspec:\n  \
                         containers:\n  - name: c\n    image: busybox\n    command: [sleep, '3600']\n",
                        g = self.generation
                    );
                    sh(
                        &mut vm,
                        &format!("cat > /etc/kubernetes/manifests/cut-{}.yaml <<'EOF'\n{manifest}EOF", self.generation),
                    );
                    self.cut(&mut vm, &cut);
                    self.pending = Some(Pending::Pods { cut, before });
                }
                Area::Services => {
                    // A post-ready write of containerd.json may come on its
                    // own; a kill makes sure of one.
                    sh(
                        &mut vm,
                        "pid=$(sed -n 's/.*\"pid\": \\([0-9]*\\).*/\\1/p' /run/kelson/services/containerd.json); \
                         [ -z \"$pid\" ] || kill -9 $pid; true",
                    );
                    self.cut(&mut vm, &cut);
                    self.pending = Some(Pending::Services { cut });
                }
                Area::Config | Area::Seed => unreachable!(),
            }
        }
    }

    fn finish(&mut self) {
        if self.pending.is_some() {
            self.recovery_boot();
        }
    }
}

fn cuts(first: Area, second: Area) -> Vec<Cut> {
    let phases = [("written", false), ("synced", false), ("renamed", false), ("renamed", true), ("done", false)];
    phases
        .iter()
        .flat_map(|&(phase, linger)| [Cut { area: first, phase, linger }, Cut { area: second, phase, linger }])
        .collect()
}

fn run_chain(name: &'static str, cuts: Vec<Cut>) -> (usize, usize, Vec<String>) {
    let mut chain = Chain::new(name);
    chain.first_boot();
    for cut in &cuts {
        chain.run(*cut);
    }
    chain.finish();
    (cuts.len(), chain.clean, std::mem::take(&mut chain.lines))
}

#[test]
fn cuts_during_config_seed_pod_and_service_state_writes_leave_the_old_or_the_new_state() {
    let a = std::thread::spawn(|| run_chain("a", cuts(Area::Config, Area::Pods)));
    let b = std::thread::spawn(|| run_chain("b", cuts(Area::Seed, Area::Services)));
    let mut total = 0;
    let mut clean = 0;
    let mut lines = Vec::new();
    for chain in [a, b] {
        let (cuts, ok, mut chain_lines) = chain.join().unwrap_or_else(|_| panic!("a chain failed (see above)"));
        total += cuts;
        clean += ok;
        lines.append(&mut chain_lines);
    }
    for line in &lines {
        println!("{line}");
    }
    println!("power-cut: {total} cuts, {clean} clean boots");
    assert_eq!(total, 20);
    assert_eq!(clean, total);
}
