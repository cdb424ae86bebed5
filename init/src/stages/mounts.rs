//! `mounts`: /proc, /sys, /dev, /run and the cgroup2 hierarchy, then the
//! console for Kelson's own lines. Only now can the command line be read.

use crate::boot::{BootContext, Done, StageError};
use crate::cmdline::Cmdline;
use crate::mounts;
use std::path::Path;

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    mounts::mount_all(ctx.kernel, mounts::EARLY_MOUNTS)?;
    ctx.log.open_console();
    // Unreadable, it is empty: every key takes its default.
    let text = ctx.kernel.read_file(Path::new("/proc/cmdline")).unwrap_or_default();
    ctx.cmdline = Cmdline::parse(&String::from_utf8_lossy(&text));
    Ok(Done::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn the_command_line_is_read_once_proc_is_mounted() {
        let kernel = FakeKernel::default().with_file("/proc/cmdline", "console=ttyS0 kelson.state=/dev/vdb\n");
        let mut ctx = crate::boot::tests::ctx(&kernel, "");
        run(&mut ctx).unwrap();
        assert_eq!(ctx.cmdline.get("kelson.state"), Some("/dev/vdb"));
        assert!(kernel.calls().contains(&"mount proc /proc proc -".to_string()), "{:?}", kernel.calls());
    }

    #[test]
    fn a_mount_that_fails_fails_the_stage_naming_it() {
        let kernel = FakeKernel::default().failing("/proc", libc::EPERM);
        let err = run(&mut crate::boot::tests::ctx(&kernel, "")).err().expect("the stage fails");
        assert!(crate::boot::chain(err.as_ref()).contains("/proc"), "{err}");
        assert!(kernel.calls().iter().any(|c| c.starts_with("mount proc /proc proc")), "{:?}", kernel.calls());
    }
}
