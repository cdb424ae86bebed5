//! `cgroups`: the controllers the node's services and pods need, enabled
//! for the root's children.

use crate::boot::{BootContext, Done, StageError};
use crate::mounts::enable_cgroup_controllers;
use std::path::Path;

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    enable_cgroup_controllers(ctx.kernel, Path::new("/sys/fs/cgroup"))?;
    Ok(Done::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn the_available_controllers_are_enabled_for_children() {
        let k = FakeKernel::default()
            .with_file("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n")
            .with_file("/sys/fs/cgroup/cgroup.subtree_control", "");
        run(&mut ctx(&k, "")).unwrap();
        let calls = k.calls();
        for controller in ["cpu", "memory", "pids", "io"] {
            let write = format!("write /sys/fs/cgroup/cgroup.subtree_control +{controller}");
            assert!(calls.contains(&write), "{controller} not enabled: {calls:?}");
        }
    }
}
