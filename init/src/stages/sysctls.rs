//! `sysctls`: the kernel settings every node needs (forwarding, bridge
//! netfilter, inotify limits…). The machine config's own come later, with
//! the rest of the config.

use crate::boot::{chain, BootContext, Done, StageError};
use crate::sysctl::{apply, NODE_SYSCTLS};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
#[error("{failed} sysctls not set")]
pub struct SysctlsNotSet {
    pub failed: usize,
}

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    let errors = apply(ctx.kernel, NODE_SYSCTLS);
    if errors.is_empty() {
        return Ok(Done::Finished);
    }
    for e in &errors {
        warn!(error = chain(e).as_str(), "sysctl not set");
    }
    Err(SysctlsNotSet { failed: errors.len() }.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn stage_errors_render_their_whole_chain() {
        let err = crate::sysctl::SysctlError {
            key: "a.b".into(),
            value: "1".into(),
            path: "/proc/sys/a/b".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(chain(&err), "setting sysctl a.b=1 (/proc/sys/a/b): No such file or directory (os error 2)");
    }

    #[test]
    fn every_sysctl_is_tried_and_the_failures_counted() {
        let mut k = FakeKernel::default();
        for (key, _) in NODE_SYSCTLS {
            k = k.with_file(&crate::sysctl::proc_path(key).to_string_lossy(), "0");
        }
        let (first, _) = NODE_SYSCTLS[0];
        let k = k.failing(&crate::sysctl::proc_path(first).to_string_lossy(), libc::EACCES);
        let err = run(&mut ctx(&k, "")).err().expect("one sysctl fails");
        assert_eq!(err.to_string(), "1 sysctls not set");
        let writes = k.calls().iter().filter(|c| c.starts_with("write /proc/sys/")).count();
        assert_eq!(writes, NODE_SYSCTLS.len(), "every sysctl is attempted");
    }
}
