//! Kernel module loading without modprobe: the image lists the modules the
//! node needs (`/etc/kelson/modules`); dependencies come from the kernel's
//! `modules.dep`, soft dependencies from `modules.softdep` (busybox-style
//! loaders ignore those, which is how nf_nat ends up loaded without crc32c),
//! and each file is handed to `finit_module`, compressed as it is.

use crate::kernel::{Kernel, ModuleLoad};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where the image lists the modules to load, one name per line.
pub const MODULE_LIST: &str = "/etc/kelson/modules";

/// Module names compare with `-` and `_` as the same character.
pub fn normalize(name: &str) -> String {
    name.trim().replace('-', "_")
}

fn name_from_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

/// What the kernel's module directory says about its modules.
#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    /// name → (path relative to the module dir, its dependencies' paths)
    modules: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
    soft_pre: HashMap<String, Vec<String>>,
    soft_post: HashMap<String, Vec<String>>,
    /// exact alias → module names (soft dependencies name aliases such as
    /// `crypto-crc32c`, not files)
    aliases: HashMap<String, Vec<String>>,
}

impl ModuleIndex {
    pub fn parse(modules_dep: &str, modules_builtin: &str, modules_softdep: &str) -> Self {
        Self::parse_with_aliases(modules_dep, modules_builtin, modules_softdep, "")
    }

    pub fn parse_with_aliases(
        modules_dep: &str,
        modules_builtin: &str,
        modules_softdep: &str,
        modules_alias: &str,
    ) -> Self {
        let mut index = ModuleIndex::default();
        for line in modules_alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(alias), Some(module)) = (words.next(), words.next(), words.next()) {
                if !alias.contains(['*', '?', '[']) {
                    index.aliases.entry(normalize(alias)).or_default().push(normalize(module));
                }
            }
        }
        for line in modules_dep.lines() {
            let Some((path, deps)) = line.split_once(':') else { continue };
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            index.modules.insert(name_from_path(path), (path.to_owned(), deps));
        }
        for line in modules_builtin.lines().filter(|l| !l.trim().is_empty()) {
            index.builtin.insert(name_from_path(line));
        }
        for line in modules_softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next().map(normalize) else { continue };
            let mut section = None;
            for w in words {
                match w {
                    "pre:" => section = Some(true),
                    "post:" => section = Some(false),
                    dep => match section {
                        Some(true) => index.soft_pre.entry(module.clone()).or_default().push(normalize(dep)),
                        Some(false) => index.soft_post.entry(module.clone()).or_default().push(normalize(dep)),
                        None => {}
                    },
                }
            }
        }
        index
    }

    /// Reads the index files from a kernel's module directory.
    pub fn load(kernel: &dyn Kernel, dir: &Path) -> Result<Self, ModuleError> {
        let read = |name: &str, required: bool| -> Result<String, ModuleError> {
            let path = dir.join(name);
            match kernel.read_file(&path) {
                Ok(data) => Ok(String::from_utf8_lossy(&data).into_owned()),
                Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(ModuleError::ReadIndex { path, source }),
            }
        };
        Ok(Self::parse_with_aliases(
            &read("modules.dep", true)?,
            &read("modules.builtin", false)?,
            &read("modules.softdep", false)?,
            &read("modules.alias", false)?,
        ))
    }

    /// The modules a soft dependency names: itself if it is a module, else
    /// every module carrying it as an alias. Empty if the kernel has none,
    /// which is what makes a soft dependency soft.
    fn resolve_soft(&self, name: &str) -> Vec<String> {
        if self.modules.contains_key(name) || self.builtin.contains(name) {
            return vec![name.to_owned()];
        }
        self.aliases
            .get(name)
            .map(|mods| {
                mods.iter().filter(|m| self.modules.contains_key(*m) || self.builtin.contains(*m)).cloned().collect()
            })
            .unwrap_or_default()
    }

    /// The files to load, in order, so that `name` and everything it needs
    /// end up loaded. Modules already in `done` are skipped and `done` is
    /// updated, so one call per listed module gives a global order.
    pub fn plan(&self, name: &str, done: &mut HashSet<String>) -> Result<Vec<String>, ModuleError> {
        let mut order = Vec::new();
        self.plan_into(&normalize(name), done, &mut order, 0)?;
        Ok(order)
    }

    fn plan_into(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), ModuleError> {
        if done.contains(name) || depth > 64 {
            return Ok(());
        }
        done.insert(name.to_owned());
        if self.builtin.contains(name) {
            return Ok(());
        }
        let Some((path, deps)) = self.modules.get(name) else {
            return Err(ModuleError::Unknown { name: name.to_owned() });
        };
        for pre in self.soft_pre.get(name).into_iter().flatten() {
            for module in self.resolve_soft(pre) {
                self.plan_into(&module, done, order, depth + 1)?;
            }
        }
        // modules.dep lists a module's dependencies so that loading them
        // from last to first satisfies each one's own needs.
        for dep in deps.iter().rev() {
            self.plan_into(&name_from_path(dep), done, order, depth + 1)?;
        }
        order.push(path.clone());
        for post in self.soft_post.get(name).into_iter().flatten() {
            for module in self.resolve_soft(post) {
                self.plan_into(&module, done, order, depth + 1)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("reading module index {path}")]
    ReadIndex {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the module list {path}")]
    ReadList {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("module {name} is neither in modules.dep nor built in")]
    Unknown { name: String },
    #[error("loading module file {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("module file {path} not loaded: its dependency {dependency} did not load")]
    DependencyNotLoaded { path: PathBuf, dependency: String },
}

/// The names in a module list: one per line, `#` comments and blank lines
/// ignored.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).map(normalize).collect()
}

/// Every file a set of listed modules needs, each with the files that must
/// be loaded before it, so that independent ones can load at the same time.
#[derive(Debug, Default)]
pub struct LoadPlan {
    /// In an order that loads everything correctly one at a time (what
    /// [`ModuleIndex::plan`] gives): each file's prerequisites come before it.
    files: Vec<PlannedFile>,
    /// Listed modules that could not be planned.
    unplanned: Vec<ModuleError>,
}

#[derive(Debug)]
struct PlannedFile {
    /// Relative to the module directory.
    path: String,
    name: String,
    /// Its modules.dep dependencies (indices into `files`): it cannot load
    /// without them, so it is not tried when one of them failed.
    needs: Vec<usize>,
    /// Its soft dependencies' files: loaded first when they load at all.
    after: Vec<usize>,
}

impl ModuleIndex {
    /// Plans `names` and everything they need. A name that cannot be planned
    /// is reported in the plan and does not stop the rest.
    pub fn plan_all(&self, names: &[String]) -> LoadPlan {
        let mut done = HashSet::new();
        let mut order = Vec::new();
        let mut unplanned = Vec::new();
        for name in names {
            match self.plan(name, &mut done) {
                Ok(files) => order.extend(files),
                Err(e) => unplanned.push(e),
            }
        }
        let position: HashMap<String, usize> = order.iter().enumerate().map(|(i, f)| (name_from_path(f), i)).collect();
        // Only edges to files earlier in the order are kept: the order is
        // already correct, so a later one could only come from a cycle of
        // soft dependencies, which would otherwise leave both waiting.
        let earlier = |i: usize, names: Vec<String>| -> Vec<usize> {
            let mut found: Vec<usize> =
                names.iter().filter_map(|n| position.get(n).copied()).filter(|&j| j < i).collect();
            found.sort_unstable();
            found.dedup();
            found
        };
        let files = order
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let name = name_from_path(path);
                let hard = self.modules.get(&name).map(|(_, deps)| deps.iter().map(|d| name_from_path(d)).collect());
                let mut soft: Vec<String> =
                    self.soft_pre.get(&name).into_iter().flatten().flat_map(|pre| self.resolve_soft(pre)).collect();
                // A module whose soft dependencies include this one "post:"
                // wants to be loaded before it.
                for (module, posts) in &self.soft_post {
                    if posts.iter().flat_map(|post| self.resolve_soft(post)).any(|m| m == name) {
                        soft.push(module.clone());
                    }
                }
                PlannedFile {
                    path: path.clone(),
                    needs: earlier(i, hard.unwrap_or_default()),
                    after: earlier(i, soft),
                    name,
                }
            })
            .collect();
        LoadPlan { files, unplanned }
    }
}

impl LoadPlan {
    /// The files, relative to the module directory, in a correct
    /// one-at-a-time order.
    pub fn files(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.path.as_str()).collect()
    }
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    pub already_loaded: Vec<String>,
    /// Modules for hardware this machine lacks (the kernel said ENODEV),
    /// such as crc32c-intel on a CPU without SSE4.2: not a failure, since
    /// a generic alternative is listed too.
    pub no_device: Vec<String>,
    pub failed: Vec<ModuleError>,
    /// How long each module file took in `finit_module`: what the modules
    /// stage's time is spent on.
    pub took: Vec<(String, Duration)>,
}

impl LoadReport {
    /// The `n` modules that took longest, slowest first, as
    /// `name:ms,name:ms`.
    pub fn slowest(&self, n: usize) -> String {
        let mut took = self.took.clone();
        took.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
        took.iter().take(n).map(|(name, d)| format!("{name}:{}", d.as_millis())).collect::<Vec<_>>().join(",")
    }
}

/// How many module files load at once: one per CPU, at most 8. Measured
/// under TCG (cargo xtask bench boot, 1 vCPU), four workers did not make
/// the stage faster: a module's load is mostly the CPU's (relocating and
/// linking it, its init), not waiting, so more workers than CPUs only
/// interleave.
fn load_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

/// Loads every listed module and what it needs, independent ones at the
/// same time. A module that fails does not stop the others; the report
/// says which did.
pub fn load_listed(kernel: &dyn Kernel, module_dir: &Path, names: &[String]) -> Result<LoadReport, ModuleError> {
    let index = ModuleIndex::load(kernel, module_dir)?;
    let plan = index.plan_all(names);
    Ok(load_planned(plan, module_dir, load_threads(), &|path| kernel.load_module(path)))
}

/// Where a planned file is.
#[derive(Debug)]
enum FileState {
    Waiting,
    Loading,
    Finished {
        result: io::Result<ModuleLoad>,
        took: Duration,
    },
    /// Not tried: this dependency (an index) did not load.
    Skipped {
        dependency: usize,
    },
}

impl FileState {
    fn finished(&self) -> bool {
        matches!(self, FileState::Finished { .. } | FileState::Skipped { .. })
    }

    /// Loaded now or before: what a module needing it can count on.
    fn available(&self) -> bool {
        matches!(self, FileState::Finished { result: Ok(_), .. })
    }
}

/// Loads `plan`'s files with up to `threads` at once through `load`, each
/// once its prerequisites have finished; one whose modules.dep dependency
/// did not load is not tried. The report lists modules in plan order.
pub fn load_planned(
    plan: LoadPlan,
    module_dir: &Path,
    threads: usize,
    load: &(dyn Fn(&Path) -> io::Result<ModuleLoad> + Sync),
) -> LoadReport {
    let states = Mutex::new(plan.files.iter().map(|_| FileState::Waiting).collect::<Vec<_>>());
    let changed = Condvar::new();
    // Takes the next file whose prerequisites have finished, in plan order
    // (which is the list's order where nothing else decides); None once
    // nothing is left to take.
    let take_next = || -> Option<usize> {
        let mut states = states.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let ready = plan.files.iter().enumerate().position(|(i, file)| {
                matches!(states[i], FileState::Waiting)
                    && file.needs.iter().chain(&file.after).all(|&j| states[j].finished())
            });
            match ready {
                Some(i) => match plan.files[i].needs.iter().copied().find(|&j| !states[j].available()) {
                    Some(dependency) => {
                        states[i] = FileState::Skipped { dependency };
                        changed.notify_all();
                    }
                    None => {
                        states[i] = FileState::Loading;
                        return Some(i);
                    }
                },
                // Prerequisites always come earlier in the plan, so with
                // nothing loading, a waiting file would have been ready.
                None if !states.iter().any(|s| matches!(s, FileState::Loading)) => return None,
                None => states = changed.wait(states).unwrap_or_else(|e| e.into_inner()),
            }
        }
    };
    let work = || {
        while let Some(i) = take_next() {
            let started = Instant::now();
            let result = load(&module_dir.join(&plan.files[i].path));
            let took = started.elapsed();
            states.lock().unwrap_or_else(|e| e.into_inner())[i] = FileState::Finished { result, took };
            changed.notify_all();
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.min(plan.files.len()) {
            // 256 KiB: a worker only opens a file and makes one syscall. One
            // that cannot be started leaves the work to the others.
            let _ = std::thread::Builder::new()
                .name("kelson-modules".into())
                .stack_size(256 * 1024)
                .spawn_scoped(scope, work);
        }
        work();
    });
    let mut report = LoadReport { failed: plan.unplanned, ..LoadReport::default() };
    for (file, state) in plan.files.iter().zip(states.into_inner().unwrap_or_else(|e| e.into_inner())) {
        let name = file.name.clone();
        match state {
            FileState::Finished { result, took } => {
                report.took.push((name.clone(), took));
                match result {
                    Ok(ModuleLoad::Loaded) => report.loaded.push(name),
                    Ok(ModuleLoad::AlreadyLoaded) => report.already_loaded.push(name),
                    Err(e) if e.raw_os_error() == Some(libc::ENODEV) => report.no_device.push(name),
                    Err(source) => report.failed.push(ModuleError::Load { path: module_dir.join(&file.path), source }),
                }
            }
            FileState::Skipped { dependency } => report.failed.push(ModuleError::DependencyNotLoaded {
                path: module_dir.join(&file.path),
                dependency: plan.files[dependency].name.clone(),
            }),
            // Every file is taken before the workers stop.
            FileState::Waiting | FileState::Loading => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    const DEP: &str = "\
kernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz
kernel/net/llc/llc.ko.xz:
kernel/net/netfilter/nf_nat.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/nf_conntrack.ko.xz: kernel/lib/libcrc32c.ko.xz
kernel/lib/libcrc32c.ko.xz:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
";
    const SOFTDEP: &str = "softdep libcrc32c pre: crc32c-intel crc32c_generic crc32c_missing\n";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(DEP, "kernel/drivers/virtio/virtio_pci.ko\n", SOFTDEP)
    }

    #[test]
    fn dependencies_load_before_the_module_deepest_first() {
        let plan = index().plan("br_netfilter", &mut HashSet::new()).unwrap();
        assert_eq!(
            plan,
            vec![
                "kernel/net/llc/llc.ko.xz",
                "kernel/net/802/stp.ko.xz",
                "kernel/net/bridge/bridge.ko.xz",
                "kernel/net/bridge/br_netfilter.ko.xz"
            ]
        );
    }

    #[test]
    fn soft_dependencies_load_first_so_crc32c_precedes_nf_nat() {
        let plan = index().plan("nf_nat", &mut HashSet::new()).unwrap();
        let crc = plan.iter().position(|p| p.contains("crc32c-intel")).unwrap();
        let generic = plan.iter().position(|p| p.contains("crc32c_generic")).unwrap();
        let lib = plan.iter().position(|p| p.contains("libcrc32c")).unwrap();
        let nat = plan.iter().position(|p| p.contains("nf_nat")).unwrap();
        assert!(crc < lib && generic < lib && lib < nat, "{plan:?}");
    }

    #[test]
    fn soft_dependencies_on_aliases_resolve_to_the_modules_providing_them() {
        // Debian 6.12's real lines: ext4 wants crypto-crc32c, an alias.
        let dep = "kernel/fs/ext4/ext4.ko.xz:\nkernel/arch/x86/crypto/crc32c-intel.ko.xz:\nkernel/crypto/crc32c_generic.ko.xz:\n";
        let alias =
            "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias cpu:type:x86* crc32c_intel\n";
        let idx = ModuleIndex::parse_with_aliases(dep, "", "softdep ext4 pre: crypto-crc32c\n", alias);
        let plan = idx.plan("ext4", &mut HashSet::new()).unwrap();
        assert_eq!(
            plan,
            vec![
                "kernel/arch/x86/crypto/crc32c-intel.ko.xz",
                "kernel/crypto/crc32c_generic.ko.xz",
                "kernel/fs/ext4/ext4.ko.xz"
            ]
        );
    }

    #[test]
    fn a_module_shared_by_two_listed_modules_is_planned_once() {
        let idx = index();
        let mut done = HashSet::new();
        let a = idx.plan("bridge", &mut done).unwrap();
        let b = idx.plan("br-netfilter", &mut done).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(b, vec!["kernel/net/bridge/br_netfilter.ko.xz"]);
    }

    #[test]
    fn builtin_modules_need_no_file_and_unknown_ones_are_named() {
        let idx = index();
        assert!(idx.plan("virtio-pci", &mut HashSet::new()).unwrap().is_empty());
        let err = idx.plan("no_such_mod", &mut HashSet::new()).unwrap_err();
        assert_eq!(err.to_string(), "module no_such_mod is neither in modules.dep nor built in");
    }

    #[test]
    fn the_list_ignores_comments_and_blank_lines() {
        assert_eq!(parse_list("# net\nbridge\n\n  br-netfilter # filtering\n"), vec!["bridge", "br_netfilter"]);
    }

    #[test]
    fn one_failing_module_does_not_stop_the_rest() {
        let k = FakeKernel::default()
            .with_file("/m/modules.dep", DEP)
            .failing("/m/kernel/net/802/stp.ko.xz", libc::ENOEXEC);
        let names = parse_list("bridge\nnf_nat\nmissing_one\n");
        let report = load_listed(&k, Path::new("/m"), &names).unwrap();
        assert!(report.loaded.contains(&"nf_nat".to_string()));
        assert!(report.loaded.contains(&"llc".to_string()));
        let failed: Vec<String> = report.failed.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            failed,
            vec![
                "module missing_one is neither in modules.dep nor built in",
                "loading module file /m/kernel/net/802/stp.ko.xz",
                "module file /m/kernel/net/bridge/bridge.ko.xz not loaded: its dependency stp did not load",
            ]
        );
    }

    #[test]
    fn a_module_whose_dependency_failed_is_not_handed_to_the_kernel() {
        let k = FakeKernel::default()
            .with_file("/m/modules.dep", DEP)
            .failing("/m/kernel/net/llc/llc.ko.xz", libc::ENOEXEC);
        let report = load_listed(&k, Path::new("/m"), &parse_list("br_netfilter\n")).unwrap();
        assert_eq!(k.calls(), vec!["load /m/kernel/net/llc/llc.ko.xz"]);
        assert_eq!(report.failed.len(), 4, "{:?}", report.failed);
        assert!(report.failed.iter().skip(1).all(|e| e.to_string().ends_with("its dependency llc did not load")));
    }

    #[test]
    fn a_soft_dependency_that_failed_does_not_hold_back_the_module() {
        let k = FakeKernel::default()
            .with_file("/m/modules.dep", DEP)
            .with_file("/m/modules.softdep", SOFTDEP)
            .failing("/m/kernel/arch/x86/crypto/crc32c-intel.ko.xz", libc::ENOEXEC);
        let report = load_listed(&k, Path::new("/m"), &parse_list("nf_nat\n")).unwrap();
        assert_eq!(report.loaded, vec!["crc32c_generic", "libcrc32c", "nf_conntrack", "nf_nat"]);
        assert_eq!(report.failed.len(), 1);
    }

    #[test]
    fn the_plan_says_what_each_file_waits_for() {
        let plan = index().plan_all(&parse_list("br_netfilter\nnf_nat\n"));
        let by_name = |name: &str| plan.files.iter().find(|f| f.name == name).unwrap();
        let names = |indices: &[usize]| indices.iter().map(|&i| plan.files[i].name.as_str()).collect::<Vec<_>>();
        assert_eq!(names(&by_name("br_netfilter").needs), vec!["llc", "stp", "bridge"]);
        assert_eq!(names(&by_name("llc").needs), Vec::<&str>::new());
        assert_eq!(names(&by_name("libcrc32c").needs), Vec::<&str>::new());
        assert_eq!(names(&by_name("libcrc32c").after), vec!["crc32c_intel", "crc32c_generic"]);
        assert_eq!(names(&by_name("nf_nat").needs), vec!["libcrc32c", "nf_conntrack"]);
    }

    /// A loader that holds llc until everything independent of it has
    /// loaded, recording when each file starts and finishes.
    #[derive(Default)]
    struct HeldLoader {
        events: Mutex<Vec<String>>,
        changed: Condvar,
    }

    impl HeldLoader {
        fn load(&self, path: &Path) -> io::Result<ModuleLoad> {
            let name = name_from_path(&path.to_string_lossy());
            let mut events = self.events.lock().unwrap();
            events.push(format!("start {name}"));
            if name == "llc" {
                let independent = ["crc32c_intel", "crc32c_generic", "libcrc32c", "nf_conntrack", "nf_nat"];
                let all_done = |events: &Vec<String>| independent.iter().all(|m| events.contains(&format!("end {m}")));
                // A bound so that a loader that runs one file at a time
                // fails the test instead of hanging it.
                events = self.changed.wait_timeout_while(events, Duration::from_secs(10), |e| !all_done(e)).unwrap().0;
            }
            events.push(format!("end {name}"));
            self.changed.notify_all();
            Ok(ModuleLoad::Loaded)
        }
    }

    #[test]
    fn independent_modules_load_meanwhile_and_dependents_wait_for_their_dependencies() {
        let idx = ModuleIndex::parse(DEP, "", SOFTDEP);
        let plan = idx.plan_all(&parse_list("br_netfilter\nnf_nat\n"));
        let loader = HeldLoader::default();
        let report = load_planned(plan, Path::new("/m"), 4, &|p| loader.load(p));
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let events = loader.events.into_inner().unwrap();
        let at =
            |event: &str| events.iter().position(|e| e == event).unwrap_or_else(|| panic!("no {event}: {events:?}"));
        // nf_nat's chain finished while llc was held...
        assert!(at("end nf_nat") < at("end llc"), "{events:?}");
        // ...and nothing needing llc started before it ended.
        for dependent in ["stp", "bridge", "br_netfilter"] {
            assert!(at(&format!("start {dependent}")) > at("end llc"), "{events:?}");
        }
        // Soft dependencies first, hard ones in order.
        assert!(at("start libcrc32c") > at("end crc32c_intel") && at("start libcrc32c") > at("end crc32c_generic"));
        assert!(at("start nf_conntrack") > at("end libcrc32c") && at("start nf_nat") > at("end nf_conntrack"));
        assert!(at("start bridge") > at("end stp") && at("start br_netfilter") > at("end bridge"));
    }

    #[test]
    fn one_thread_loads_in_the_plans_order() {
        let k = FakeKernel::default().with_file("/m/modules.dep", DEP).with_file("/m/modules.softdep", SOFTDEP);
        let names = parse_list("br_netfilter\nnf_nat\n");
        let plan = ModuleIndex::load(&k, Path::new("/m")).unwrap().plan_all(&names);
        let files: Vec<String> = plan.files().iter().map(|f| format!("load /m/{f}")).collect();
        load_planned(plan, Path::new("/m"), 1, &|p| k.load_module(p));
        assert_eq!(k.calls(), files);
    }

    #[test]
    fn a_module_for_absent_hardware_is_skipped_not_failed() {
        let k = FakeKernel::default()
            .with_file("/m/modules.dep", DEP)
            .failing("/m/kernel/arch/x86/crypto/crc32c-intel.ko.xz", libc::ENODEV);
        let report = load_listed(&k, Path::new("/m"), &parse_list("crc32c_intel\ncrc32c_generic\n")).unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.no_device, vec!["crc32c_intel"]);
        assert_eq!(report.loaded, vec!["crc32c_generic"]);
    }
}
