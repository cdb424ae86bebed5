//! `kernel-log`: the kernel's log levels set for a readable console, then
//! Kelson's lines also go to the kernel log.

use crate::boot::{BootContext, Done, StageError};
use std::path::Path;

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    // Userspace kmsg writes are rate limited to a handful per burst by
    // default, which would drop most of the boot log.
    // The sysctl wants the trailing newline: it rejects "on" without one.
    ctx.kernel.write_file(Path::new("/proc/sys/kernel/printk_devkmsg"), b"on\n")?;
    // Kelson's own lines already go to the console; keep the kernel's
    // informational chatter off it (it stays in dmesg) unless the command
    // line asks for a log level.
    let c = &ctx.cmdline;
    if !(c.has("loglevel") || c.has("debug") || c.has("quiet") || c.has("ignore_loglevel")) {
        ctx.kernel.write_file(Path::new("/proc/sys/kernel/printk"), b"4")?;
    }
    // Only now, with the console level set, do Kelson's lines also go to
    // the kernel log; earlier they would have shown twice on the console.
    ctx.log.open_kmsg();
    Ok(Done::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn the_kernel_log_stage_quiets_the_console_unless_a_level_was_asked_for() {
        let k = FakeKernel::default();
        run(&mut ctx(&k, "console=ttyS0")).unwrap();
        assert_eq!(k.file("/proc/sys/kernel/printk").as_deref(), Some("4"));
        assert_eq!(k.file("/proc/sys/kernel/printk_devkmsg").as_deref(), Some("on\n"));
        let k = FakeKernel::default();
        run(&mut ctx(&k, "console=ttyS0 loglevel=7")).unwrap();
        assert_eq!(k.file("/proc/sys/kernel/printk"), None);
    }
}
