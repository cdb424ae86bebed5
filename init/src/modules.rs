//! Kernel module loading without modprobe: the image lists the modules the
//! node needs (`/etc/kelson/modules`); dependencies come from the kernel's
//! `modules.dep`, soft dependencies from `modules.softdep` (busybox-style
//! loaders ignore those, which is how nf_nat ends up loaded without crc32c),
//! and each file is handed to `finit_module`, compressed as it is.

use crate::kernel::{Kernel, ModuleLoad};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
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
}

/// The names in a module list: one per line, `#` comments and blank lines
/// ignored.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).map(normalize).collect()
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
    /// How long each module file took in `finit_module`, in load order: what
    /// the modules stage's time is spent on.
    pub took: Vec<(String, Duration)>,
}

impl LoadReport {
    /// The `n` modules that took longest, slowest first, as
    /// `name:ms,name:ms`.
    pub fn slowest(&self, n: usize) -> String {
        let mut took = self.took.clone();
        took.sort_by(|a, b| b.1.cmp(&a.1));
        took.iter().take(n).map(|(name, d)| format!("{name}:{}", d.as_millis())).collect::<Vec<_>>().join(",")
    }
}

/// Loads every listed module and what it needs. A module that fails does
/// not stop the others; the report says which did.
pub fn load_listed(kernel: &dyn Kernel, module_dir: &Path, names: &[String]) -> Result<LoadReport, ModuleError> {
    let index = ModuleIndex::load(kernel, module_dir)?;
    let mut done = HashSet::new();
    let mut report = LoadReport::default();
    for name in names {
        let files = match index.plan(name, &mut done) {
            Ok(files) => files,
            Err(e) => {
                report.failed.push(e);
                continue;
            }
        };
        for file in files {
            let path = module_dir.join(&file);
            let started = Instant::now();
            let result = kernel.load_module(&path);
            report.took.push((name_from_path(&file), started.elapsed()));
            match result {
                Ok(ModuleLoad::Loaded) => report.loaded.push(name_from_path(&file)),
                Ok(ModuleLoad::AlreadyLoaded) => report.already_loaded.push(name_from_path(&file)),
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => report.no_device.push(name_from_path(&file)),
                Err(source) => report.failed.push(ModuleError::Load { path, source }),
            }
        }
    }
    Ok(report)
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
        assert!(report.loaded.contains(&"bridge".to_string()));
        assert_eq!(report.failed.len(), 2, "{:?}", report.failed);
        assert!(report.failed.iter().any(|e| e.to_string().contains("stp.ko.xz")));
        assert!(report.failed.iter().any(|e| e.to_string().contains("missing_one")));
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
