//! `identity`: the machine id (kept on the state disk, else the SMBIOS
//! UUID, else random) in /etc/machine-id, and the hostname (the config's,
//! else `kelson-` and the id's first eight hex digits). Later stages read
//! both from the boot context.

use crate::boot::{BootContext, Done, Identity, StageError};
use crate::identity::{choose_machine_id, read_trimmed, PERSISTED_MACHINE_ID, SMBIOS_UUID};
use std::path::Path;
use tracing::{info, warn};

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    let kernel = ctx.kernel;
    let persisted = read_trimmed(kernel, Path::new(PERSISTED_MACHINE_ID));
    let smbios = read_trimmed(kernel, Path::new(SMBIOS_UUID));
    let random = || {
        kernel.random_bytes().unwrap_or_else(|e| {
            warn!(error = %e, "no random bytes from the kernel; a random machine id would be all zeroes");
            [0; 16]
        })
    };
    let (id, source) = choose_machine_id(persisted.as_deref(), smbios.as_deref(), random);
    let line = format!("{}\n", id.as_str());
    if persisted.as_deref() != Some(id.as_str()) {
        kernel.install_file(Path::new(PERSISTED_MACHINE_ID), line.as_bytes(), 0o444)?;
    }
    kernel.install_file(Path::new("/etc/machine-id"), line.as_bytes(), 0o444)?;
    // The config was validated, hostname included (kelson.hostname on the
    // command line is one of its layers).
    let configured = ctx.config.as_ref().and_then(|c| c.config.node.hostname.clone());
    let hostname = configured.unwrap_or_else(|| id.default_hostname());
    kernel.set_hostname(&hostname)?;
    kernel.install_file(Path::new("/etc/hostname"), format!("{hostname}\n").as_bytes(), 0o644)?;
    info!(machine_id = id.as_str(), source, hostname = hostname.as_str(), "identity set");
    ctx.identity = Some(Identity { machine_id: id, hostname });
    Ok(Done::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn the_smbios_uuid_becomes_the_machine_id_kept_on_the_state_disk() {
        let k = FakeKernel::default().with_file(SMBIOS_UUID, "6B29FC40-CA47-1067-B31D-00DD010662DA\n");
        let mut ctx = ctx(&k, "");
        run(&mut ctx).unwrap();
        let id = "6b29fc40ca471067b31d00dd010662da\n";
        assert_eq!(k.file(PERSISTED_MACHINE_ID).as_deref(), Some(id));
        assert_eq!(k.file("/etc/machine-id").as_deref(), Some(id));
        assert_eq!(k.file("/etc/hostname").as_deref(), Some("kelson-6b29fc40\n"));
        assert!(k.calls().contains(&"hostname kelson-6b29fc40".to_string()));
        let identity = ctx.identity.expect("the context carries the identity");
        assert_eq!(identity.hostname, "kelson-6b29fc40");
        assert_eq!(ctx.status.current().phase, crate::status::Phase::Booting);
    }

    #[test]
    fn a_kept_id_is_not_rewritten_and_the_configured_hostname_wins() {
        let kept = "0123456789abcdef0123456789abcdef";
        let k = FakeKernel::default().with_file(PERSISTED_MACHINE_ID, &format!("{kept}\n"));
        let mut ctx = ctx(&k, "");
        ctx.config = Some(
            kelson_config::resolve(&[kelson_config::Layer::from_document(
                kelson_config::Source::CloudInit,
                "user-data",
                "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: worker-1\n",
            )
            .unwrap()])
            .unwrap(),
        );
        run(&mut ctx).unwrap();
        assert!(
            !k.calls().iter().any(|c| c.starts_with(&format!("install {PERSISTED_MACHINE_ID}"))),
            "{:?}",
            k.calls()
        );
        assert_eq!(k.file("/etc/hostname").as_deref(), Some("worker-1\n"));
        assert_eq!(ctx.node_name(), "worker-1");
    }

    #[test]
    fn without_smbios_or_a_kept_id_the_id_is_random() {
        let k = FakeKernel::default();
        run(&mut ctx(&k, "")).unwrap();
        // The fake kernel's random bytes are all 0x5a.
        assert_eq!(k.file("/etc/machine-id"), Some(format!("{}\n", "5a".repeat(16))));
    }
}
