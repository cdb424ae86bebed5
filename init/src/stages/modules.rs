//! `modules`: the kernel modules the image lists (`/etc/kelson/modules`),
//! with their dependencies. A module whose hardware is absent is not an
//! error; one that fails to load degrades boot.

use crate::boot::{chain, BootContext, Done, StageError};
use crate::modules::{load_listed, parse_list, ModuleError, MODULE_LIST};
use std::path::Path;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
#[error("{failed} of the listed modules (or their dependencies) did not load")]
pub struct ModulesNotLoaded {
    pub failed: usize,
}

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    let list_path = Path::new(MODULE_LIST);
    let list = ctx
        .kernel
        .read_file(list_path)
        .map_err(|source| ModuleError::ReadList { path: list_path.to_owned(), source })?;
    let names = parse_list(&String::from_utf8_lossy(&list));
    let report = load_listed(ctx.kernel, &ctx.module_dir, &names)?;
    info!(
        listed = names.len(),
        loaded = report.loaded.len(),
        already_loaded = report.already_loaded.len(),
        no_such_hardware = report.no_device.join(",").as_str(),
        failed = report.failed.len(),
        slowest = report.slowest(8).as_str(),
        "modules loaded"
    );
    if report.failed.is_empty() {
        return Ok(Done::Finished);
    }
    for e in &report.failed {
        warn!(error = chain(e).as_str(), "module not loaded");
    }
    Err(ModulesNotLoaded { failed: report.failed.len() }.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn the_modules_stage_reports_how_many_failed() {
        let k = FakeKernel::default()
            .with_file("/etc/kelson/modules", "bridge\nnot_a_module\n")
            .with_file("/m/modules.dep", "kernel/net/bridge/bridge.ko.xz:\n");
        let err = run(&mut ctx(&k, "")).err().expect("a module is missing");
        assert_eq!(err.to_string(), "1 of the listed modules (or their dependencies) did not load");
        assert!(k.calls().contains(&"load /m/kernel/net/bridge/bridge.ko.xz".to_string()));
    }
}
